//! Runs the notifications worker from its configuration (`config/`, `ARQ__SECTION__KEY`
//! variables): consumes its queues and serves `/health/live`, `/health/ready` and `/metrics`
//! until SIGTERM or Ctrl-C. Then it stops taking messages, lets in-flight handlers finish
//! within `[server] shutdown_timeout` (what is still running is left unacknowledged, so the
//! broker delivers it again) and exits.

use std::process::ExitCode;

use anyhow::Context;
use arq_core::metrics::MetricsRegistry;
use arq_core::server::{Server, shutdown_signal};
use tokio::sync::watch;

use notifications as svc;

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

/// Completes once shutdown was signalled (or the signal task is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn run() -> anyhow::Result<()> {
    let settings = svc::load_settings()?;
    arq_core::telemetry::init(&settings.arq.telemetry)?;
    let registry = MetricsRegistry::global().clone();
    let queue = svc::connect(&settings.queue, &registry).await?;
    let health = svc::health(&queue, &settings.arq);
    let service = svc::service(&settings.arq, &registry, &health)?;
    let worker = svc::worker(queue, &settings)?;
    let server = Server::bind(&settings.arq.server, health).await?;
    // Scripts wait for this line before they send requests.
    #[allow(clippy::print_stdout, reason = "a binary announcing where it listens")]
    {
        println!("{} listening on http://{}", svc::NAME, server.local_addr());
    }
    // One signal stops both: the server fails readiness and drains, the worker drains its
    // in-flight handlers. If the worker fails, the process exits with its error.
    let (stop, rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let (outcome, report) = tokio::try_join!(
        async { Ok(server.serve(service, stopped(rx.clone())).await) },
        async {
            worker
                .run(stopped(rx.clone()))
                .await
                .context("the worker stopped")
        },
    )?;
    tracing::info!(
        ?outcome,
        settled = report.settled,
        abandoned = report.abandoned,
        "stopped"
    );
    Ok(())
}
