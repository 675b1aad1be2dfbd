//! Runs the notifications worker from its configuration (`config/`, `ARQ__SECTION__KEY`
//! variables): consumes its queues and serves `/health/live`, `/health/ready` and `/metrics`
//! until SIGTERM or Ctrl-C. Then it stops taking messages, lets in-flight handlers finish
//! within `[server] shutdown_timeout` (what is still running is left unacknowledged, so the
//! broker delivers it again) and exits. It refuses to start without a webhook signing secret
//! (`ARQ__WEBHOOKS__SIGNING_SECRET`).
//!
//! Subcommands ([`notifications::ops`]): `publish ROUTING_KEY JSON [--tenant UUID]` and
//! `dead-letters QUEUE [--limit N]`, which print JSON lines.

use std::process::ExitCode;

use anyhow::Context;
use arq_core::metrics::MetricsRegistry;
use arq_core::server::{Server, shutdown_signal};
use tokio::sync::watch;

use notifications as svc;
use svc::ops::{self, Command};

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

#[allow(clippy::print_stdout, reason = "the subcommands' output")]
async fn run() -> anyhow::Result<()> {
    let command = Command::parse(std::env::args().skip(1))?;
    if command == Command::Help {
        println!("{}", ops::USAGE);
        return Ok(());
    }
    let settings = svc::load_settings()?;
    match command {
        Command::Serve | Command::Help => serve(settings).await,
        // No logging set up: stdout carries only the JSON lines.
        Command::Publish {
            routing_key,
            json,
            tenant,
        } => {
            let queue = svc::connect(&settings.queue, &MetricsRegistry::new()).await?;
            let line = ops::publish(&queue, &settings.queue, &routing_key, &json, tenant).await?;
            println!("{line}");
            Ok(())
        }
        Command::DeadLetters { queue: name, limit } => {
            let queue = svc::connect(&settings.queue, &MetricsRegistry::new()).await?;
            for line in ops::dead_letters(&queue, &settings.queue, &name, limit).await? {
                println!("{line}");
            }
            Ok(())
        }
    }
}

async fn serve(settings: svc::Settings) -> anyhow::Result<()> {
    arq_core::telemetry::init(&settings.arq.telemetry)?;
    let registry = MetricsRegistry::global().clone();
    // Before connecting: a missing signing secret or an unusable mailbox stops it at once.
    let handlers = svc::Handlers::from_settings(&settings, &registry)?;
    let queue = svc::connect(&settings.queue, &registry).await?;
    let health = svc::health(&queue, &settings.arq);
    let service = svc::service(&settings.arq, &registry, &health)?;
    let worker = svc::worker(queue, &settings, &handlers)?;
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
