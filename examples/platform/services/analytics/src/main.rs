//! Runs the analytics service from its configuration (`config/`, `ARQ__SECTION__KEY`
//! variables) until SIGTERM or Ctrl-C, then drains in-flight requests, stops the consumers and
//! the relay, and exits.
//!
//! `analytics migrate` runs the migrations instead, connected as the owner role
//! (`DATABASE_OWNER_URL`), after checking that the outbox relay role exists. Serving connects
//! as the runtime role (`DATABASE_URL`, and `DATABASE_REPLICA_URL` for reads when set) and
//! refuses to start on a database that would not isolate tenants. Beside the server run the
//! domain events consumer, the `report.generate` consumer and the outbox relay (connected as
//! the relay role, `DATABASE_RELAY_URL`); none of them keeps the API from serving while
//! RabbitMQ is down.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use arq_core::health::Health;
use arq_core::metrics::MetricsRegistry;
use arq_core::server::{BackgroundTask, Server, shutdown_signal};
use sqlx::postgres::PgPoolOptions;

use analytics as svc;

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
            "set {name} to the PostgreSQL URL of the outbox relay role (arq_relay; its SQL is \
             arq_queue::outbox::RELAY_ROLE_SQL)"
        ),
        _ => format!("set {name} to the PostgreSQL URL"),
    })
}

/// An optional URL: unset or empty means none.
fn optional_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

async fn run() -> anyhow::Result<()> {
    let settings = svc::load_settings()?;
    arq_core::telemetry::init(&settings.arq.telemetry)?;
    settings
        .queue
        .validate()
        .context("[queue]: an exchange or queue name is not valid")?;
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        let owner = PgPoolOptions::new()
            .max_connections(1)
            .connect(&env("DATABASE_OWNER_URL")?)
            .await
            .context("cannot connect as the owner role")?;
        arq_queue::outbox::require_relay_role(&owner).await?;
        svc::migrator().run(&owner).await?;
        tracing::info!("migrations applied");
        return Ok(());
    }
    let replica = optional_env("DATABASE_REPLICA_URL");
    if replica.is_some() {
        tracing::info!("reads use the replica (DATABASE_REPLICA_URL) while it answers");
    }
    // Refuses to start if the runtime role could read another tenant's rows.
    let tenants = svc::connect_tenants(env("DATABASE_URL")?, replica, &settings.database).await?;
    let relay_pool = arq_queue::outbox::connect_relay_pool(&env("DATABASE_RELAY_URL")?).await?;
    let router = svc::app(
        svc::verifier(&settings)?,
        tenants.clone(),
        &settings.queue.exchange,
    );
    let registry = MetricsRegistry::global().clone();
    // Registered once (metric names are unique per registry) and shared by the two consumers
    // and the relay: their deliveries, acks, retries, dead letters and publishes on /metrics.
    let queue_metrics = arq_queue::QueueMetrics::register(&registry)?;

    // Bind the events queue before announcing the service, so that the services started after
    // this one never publish an event before analytics' queue exists to receive it. Bounded:
    // a broker outage delays the start by 2 s, then the consumer keeps trying on its own.
    let declared = tokio::time::timeout(Duration::from_secs(2), async {
        let backend = arq_queue::RabbitBackend::connect(settings.queue.url.expose()).await?;
        arq_queue::Queue::new(backend, settings.queue.events_topology()).await
    })
    .await;
    match declared {
        Ok(Ok(_)) => tracing::info!("events queue declared"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot declare the events queue yet; the consumer keeps trying")
        }
        Err(_) => {
            tracing::warn!("RabbitMQ did not answer within 2 s; the events consumer keeps trying")
        }
    }
    let drain = settings.arq.server.shutdown_timeout;
    // Each runs beside the API, which keeps serving if one of them fails (logged at once by
    // the task itself, and again when it is stopped).
    let tasks = [
        BackgroundTask::spawn("events consumer", |stop| {
            svc::queue::run_events(
                settings.queue.clone(),
                tenants.clone(),
                queue_metrics.clone(),
                drain,
                stop,
            )
        }),
        BackgroundTask::spawn("report.generate consumer", |stop| {
            svc::queue::run_reports(
                settings.queue.clone(),
                tenants.clone(),
                queue_metrics.clone(),
                drain,
                stop,
            )
        }),
        BackgroundTask::spawn("outbox relay", |stop| {
            svc::queue::run_relay(relay_pool, settings.queue.clone(), queue_metrics, stop)
        }),
    ];

    let health = Health::from_config(&settings.arq.health);
    let service = svc::service(router, &settings.arq, &registry, &health)?;
    let server = Server::bind(&settings.arq.server, health).await?;
    // Scripts wait for this line before they send requests.
    #[allow(clippy::print_stdout, reason = "a binary announcing where it listens")]
    {
        println!("{} listening on http://{}", svc::NAME, server.local_addr());
    }
    let outcome = server.serve(service, shutdown_signal()).await;
    // The consumers finish the messages in hand (unfinished ones are redelivered later) and
    // the relay its round (a round cut short only publishes its rows again on the next start).
    for task in tasks {
        task.stop(drain).await;
    }
    tracing::info!(?outcome, "stopped");
    Ok(())
}
