//! Runs the users service from its configuration (`config/`, `ARQ__SECTION__KEY`
//! variables) until SIGTERM or Ctrl-C, then drains in-flight requests and exits.
//!
//! `users migrate` runs the migrations instead, connected as the owner role
//! (`DATABASE_OWNER_URL`); serving connects as the runtime role (`DATABASE_URL`) and refuses to
//! start on a database that would not isolate tenants.

use std::process::ExitCode;

use anyhow::Context;
use arq_core::health::Health;
use arq_core::metrics::MetricsRegistry;
use arq_core::server::{Server, shutdown_signal};
use arq_tenancy::TenantPool;
use sqlx::postgres::PgPoolOptions;

use users as svc;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr, reason = "a binary reporting why it stopped")]
            {
                eprintln!("{}: {e:#}", svc::NAME);
            }
            ExitCode::FAILURE
        }
    }
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("set {name} to the PostgreSQL URL"))
}

async fn run() -> anyhow::Result<()> {
    let settings = svc::load_settings()?;
    arq_core::telemetry::init(&settings.arq.telemetry)?;
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        let owner = PgPoolOptions::new()
            .max_connections(1)
            .connect(&env("DATABASE_OWNER_URL")?)
            .await
            .context("cannot connect as the owner role")?;
        svc::migrator().run(&owner).await?;
        tracing::info!("migrations applied");
        return Ok(());
    }
    let pool = PgPoolOptions::new()
        .max_connections(settings.database.max_connections)
        .connect(&env("DATABASE_URL")?)
        .await
        .context("cannot connect to PostgreSQL")?;
    // Refuses to start if the runtime role could read another tenant's rows.
    let tenants = TenantPool::checked(pool).await?;
    let router = svc::app(svc::verifier(&settings)?, tenants, svc::policies()?);
    let registry = MetricsRegistry::global().clone();
    let health = Health::from_config(&settings.arq.health);
    let service = svc::service(router, &settings.arq, &registry, &health)?;
    let server = Server::bind(&settings.arq.server, health).await?;
    // Scripts wait for this line before they send requests.
    #[allow(clippy::print_stdout, reason = "a binary announcing where it listens")]
    {
        println!("{} listening on http://{}", svc::NAME, server.local_addr());
    }
    let outcome = server.serve(service, shutdown_signal()).await;
    tracing::info!(?outcome, "stopped");
    Ok(())
}
