//! Runs the tasks service from its configuration (`config/`, `ARQ__SECTION__KEY`
//! variables) until SIGTERM or Ctrl-C, then drains in-flight requests and exits.
//!
//! `tasks migrate` runs the migrations instead, connected as the owner role
//! (`DATABASE_OWNER_URL`); serving connects as the runtime role (`DATABASE_URL`) and refuses to
//! start on a database that would not isolate tenants. The outbox relay runs beside the server,
//! connected as the relay role (`DATABASE_RELAY_URL`), and publishes events to RabbitMQ
//! (`[queue]`); it stops after the server has drained.

use std::process::ExitCode;

use anyhow::Context;
use arq_core::health::Health;
use arq_core::metrics::MetricsRegistry;
use arq_core::server::{BackgroundTask, Server, shutdown_signal};
use sqlx::postgres::PgPoolOptions;

use tasks as svc;

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
    std::env::var(name).with_context(|| match name {
        "DATABASE_RELAY_URL" => format!(
            "set {name} to the PostgreSQL URL of the outbox relay role (arq_relay, created by services/tasks/sql/relay-role.sql)"
        ),
        _ => format!("set {name} to the PostgreSQL URL"),
    })
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
        svc::relay::require_relay_role(&owner).await?;
        svc::migrator().run(&owner).await?;
        tracing::info!("migrations applied");
        return Ok(());
    }
    // Refuses to start if the runtime role could read another tenant's rows.
    let tenants = svc::connect_tenants(env("DATABASE_URL")?, &settings.database).await?;
    let router = svc::app(
        svc::verifier(&settings)?,
        tenants,
        svc::policies()?,
        &settings.queue.exchange,
    );
    let registry = MetricsRegistry::global().clone();
    let relay_pool = svc::relay::connect_pool(&env("DATABASE_RELAY_URL")?).await?;
    let relay = BackgroundTask::spawn("outbox relay", |stop| {
        svc::relay::run(relay_pool, settings.queue.clone(), registry.clone(), stop)
    });
    let health = Health::from_config(&settings.arq.health);
    let service = svc::service(router, &settings.arq, &registry, &health)?;
    let server = Server::bind(&settings.arq.server, health).await?;
    // Scripts wait for this line before they send requests.
    #[allow(clippy::print_stdout, reason = "a binary announcing where it listens")]
    {
        println!("{} listening on http://{}", svc::NAME, server.local_addr());
    }
    let outcome = server.serve(service, shutdown_signal()).await;
    // The relay finishes its round (publish, then delete) before it stops; a round cut short
    // would only publish its rows again on the next start.
    relay.stop(settings.arq.server.shutdown_timeout).await;
    tracing::info!(?outcome, "stopped");
    Ok(())
}
