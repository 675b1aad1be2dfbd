//! Runs the adopt example: every step of the library, composed.
//!
//! `arq-example-adopt migrate` runs the migrations as the owner role (`DATABASE_OWNER_URL`) and
//! exits. Without arguments it serves: configuration from `config/` and `ARQ__SECTION__KEY`
//! variables; PostgreSQL as the runtime role (`DATABASE_URL`); the outbox relay through
//! `RELAY_DATABASE_URL`; RabbitMQ at `AMQP_URL`. SIGTERM or Ctrl-C drains in-flight requests,
//! then stops the relay and lets the worker's in-flight handlers finish.

use std::process::ExitCode;

use anyhow::Context;
use arq_core::metrics::MetricsRegistry;
use arq_core::server::{Server, shutdown_signal};
use arq_example_adopt::{self as adopt, step2_edge, step3_auth, step4_tenancy, step5_events};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr, reason = "a binary reporting why it stopped")]
            {
                eprintln!("{}: {e:#}", adopt::NAME);
            }
            ExitCode::FAILURE
        }
    }
}

fn env(name: &str, what: &str) -> anyhow::Result<String> {
    std::env::var(name)
        .with_context(|| format!("set {name} to {what} (see examples/adopt/README.md)"))
}

async fn run() -> anyhow::Result<()> {
    // Step 2: configuration and telemetry first, so everything after logs as JSON.
    let settings = adopt::load_settings()?;
    arq_core::telemetry::init(&settings.arq.telemetry)?;

    // Step 4: migrations run as the owner, on request only.
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        let owner_url = env(
            "DATABASE_OWNER_URL",
            "the PostgreSQL URL of the owner role (arq_owner)",
        )?;
        let owner = step4_tenancy::connect(&owner_url, 1, "DATABASE_OWNER_URL").await?;
        step4_tenancy::migrator().run(&owner).await?;
        tracing::info!("migrations applied");
        return Ok(());
    }

    // Step 4: the runtime pool, audited before anything is served.
    let app_url = env(
        "DATABASE_URL",
        "the PostgreSQL URL of the runtime role (arq_app)",
    )?;
    let pool =
        step4_tenancy::connect(&app_url, settings.database.max_connections, "DATABASE_URL").await?;
    let tenants = step4_tenancy::tenant_pool(pool).await?;

    // Step 3: the token verifier.
    let verifier = step3_auth::verifier(&settings.auth, &settings.rbac, &settings.dir)?;

    // Step 5: the relay and the worker.
    let registry = MetricsRegistry::global().clone();
    let relay_url = env(
        "RELAY_DATABASE_URL",
        "the PostgreSQL URL of a role that may read and delete arq_outbox (arq_owner in development)",
    )?;
    let relay_pool = step4_tenancy::connect(&relay_url, 2, "RELAY_DATABASE_URL").await?;
    let amqp_url = env(
        "AMQP_URL",
        "the RabbitMQ URL, e.g. amqp://guest:guest@127.0.0.1:5672/%2f",
    )?;
    let events = step5_events::Events::start(
        &settings.events,
        &amqp_url,
        relay_pool,
        tenants.clone(),
        &registry,
    )
    .await?;

    // Steps 1, 3 and 4: the router and its layers; step 2: the edge stack around it.
    let health = step2_edge::health(&settings.arq, &tenants, Some(&amqp_url));
    let router = adopt::app(verifier, tenants, &settings.events);
    let service = step2_edge::service(router, &settings.arq, &registry, &health)?;
    let server = Server::bind(&settings.arq.server, health).await?;

    // The events stop after the server has drained; if they fail, the server stops too.
    let stop_events = CancellationToken::new();
    let events_failed = CancellationToken::new();
    let events = tokio::spawn({
        let stop = stop_events.clone();
        let failed = events_failed.clone();
        async move {
            let result = events.run(stop.cancelled_owned()).await;
            if result.is_err() {
                failed.cancel();
            }
            result
        }
    });
    let shutdown = async move {
        tokio::select! {
            () = shutdown_signal() => {}
            () = events_failed.cancelled() => tracing::error!("events failed; stopping the server"),
        }
    };
    // Scripts wait for this line before they send requests.
    #[allow(clippy::print_stdout, reason = "a binary announcing where it listens")]
    {
        println!(
            "{} listening on http://{}",
            adopt::NAME,
            server.local_addr()
        );
    }
    let outcome = server.serve(service, shutdown).await;
    tracing::info!(?outcome, "server stopped");
    stop_events.cancel();
    events.await.context("the events task panicked")?
}
