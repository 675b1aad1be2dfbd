//! Runs the users service from its configuration (`config/`, `ARQ__SECTION__KEY`
//! variables) until SIGTERM or Ctrl-C, then drains in-flight requests and exits.
//!
//! - `users migrate` runs the migrations, connected as the owner role (`DATABASE_OWNER_URL`);
//!   it first checks that the relay role and the administrator's `sql/preferences-search.sql`
//!   exist.
//! - `users` or `users serve` serves, connected as the runtime role (`DATABASE_URL`), and
//!   refuses to start on a database that would not isolate tenants, or without the encryption
//!   key files (`ARQ__ENCRYPTION__KEK_FILE`, `ARQ__ENCRYPTION__BLIND_INDEX_KEY_FILE`). The
//!   outbox relay runs beside the server, connected as the relay role (`DATABASE_RELAY_URL`),
//!   and publishes events to RabbitMQ (`[queue]`); it stops after the server has drained.
//! - `users rotate-data-key TENANT` gives a workspace a new data key: new writes use it, older
//!   ciphertexts stay readable (each names its key).
//! - `users rewrap-keys TENANT` rewraps a workspace's data keys under the current KEK (after a
//!   KEK change, with the old KEK still in `[[encryption.previous_keks]]`).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use arq_core::health::Health;
use arq_core::metrics::MetricsRegistry;
use arq_core::server::{BackgroundTask, Server, shutdown_signal};
use arq_tenancy::TenantId;
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
    std::env::var(name).with_context(|| match name {
        "DATABASE_RELAY_URL" => format!(
            "set {name} to the PostgreSQL URL of the outbox relay role (arq_relay; its SQL is arq_queue::outbox::RELAY_ROLE_SQL, e.g. services/tasks/sql/relay-role.sql)"
        ),
        _ => format!("set {name} to the PostgreSQL URL"),
    })
}

const USAGE: &str = "usage: users [serve | migrate | rotate-data-key TENANT | rewrap-keys TENANT]";

fn tenant_arg(args: &[String]) -> anyhow::Result<TenantId> {
    let raw = args
        .get(2)
        .with_context(|| format!("name the workspace (a UUID); {USAGE}"))?;
    raw.parse()
        .map_err(|e| anyhow::anyhow!("{raw:?} is not a workspace id: {e}"))
}

async fn run() -> anyhow::Result<()> {
    let settings = svc::load_settings()?;
    arq_core::telemetry::init(&settings.arq.telemetry)?;
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        None | Some("serve") => serve(settings).await,
        Some("migrate") => {
            let owner = PgPoolOptions::new()
                .max_connections(1)
                .connect(&env("DATABASE_OWNER_URL")?)
                .await
                .context("cannot connect as the owner role")?;
            arq_queue::outbox::require_relay_role(&owner).await?;
            svc::require_search_operator(&owner).await?;
            svc::migrator().run(&owner).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Some(command @ ("rotate-data-key" | "rewrap-keys")) => {
            let tenant = tenant_arg(&args)?;
            let tenants = svc::connect_tenants(env("DATABASE_URL")?, &settings.database).await?;
            let crypto = svc::crypto::Crypto::from_settings(&settings.encryption, tenants)?;
            #[allow(clippy::print_stdout, reason = "a command reporting what it did")]
            if command == "rotate-data-key" {
                let id = crypto.cipher().rotate(tenant).await?;
                println!(
                    "workspace {tenant}: data key {id} is current; restart (or wait for) the running replicas to encrypt with it"
                );
            } else {
                let n = crypto.cipher().rewrap_keys(tenant).await?;
                println!(
                    "workspace {tenant}: {n} data key(s) rewrapped under KEK {:?}",
                    settings.encryption.kek_id
                );
            }
            Ok(())
        }
        Some(other) => anyhow::bail!("unknown command {other:?}; {USAGE}"),
    }
}

async fn serve(settings: svc::Settings) -> anyhow::Result<()> {
    // Refuses to start if the runtime role could read another tenant's rows.
    let tenants = svc::connect_tenants(env("DATABASE_URL")?, &settings.database).await?;
    // Refuses to start without usable key files, naming the variable to set.
    let crypto = Arc::new(svc::crypto::Crypto::from_settings(
        &settings.encryption,
        tenants.clone(),
    )?);
    let router = svc::app(
        svc::verifier(&settings)?,
        tenants,
        svc::policies()?,
        crypto,
        &settings.queue.exchange,
    );
    let registry = MetricsRegistry::global().clone();
    let relay_pool = arq_queue::outbox::connect_relay_pool(&env("DATABASE_RELAY_URL")?).await?;
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
