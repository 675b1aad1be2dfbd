//! Serves the hello example from its configuration (`config/`, `ARQ__SECTION__KEY` variables)
//! until SIGTERM or Ctrl-C, then drains in-flight requests and exits.

use std::process::ExitCode;

use anyhow::Context;
use arq_core::health::Health;
use arq_core::metrics::MetricsRegistry;
use arq_core::server::{Server, shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr, reason = "a binary reporting why it stopped")]
            {
                eprintln!("hello: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let mut config = arq_example_hello::load_config()?;
    // Kept from the first version of the example.
    if let Ok(addr) = std::env::var("ARQ_HELLO_ADDR") {
        config.server.addr = addr
            .parse()
            .with_context(|| format!("ARQ_HELLO_ADDR={addr:?} is not an address"))?;
    }
    arq_core::telemetry::init(&config.telemetry)?;
    let registry = MetricsRegistry::global().clone();
    let health = Health::from_config(&config.health);
    let service = arq_example_hello::service(&config, &registry, &health)?;
    let server = Server::bind(&config.server, health).await?;
    // The quickstart and the tests wait for this line before they send requests.
    #[allow(clippy::print_stdout, reason = "a binary announcing where it listens")]
    {
        println!("listening on http://{}", server.local_addr());
    }
    let outcome = server.serve(service, shutdown_signal()).await;
    tracing::info!(?outcome, "stopped");
    Ok(())
}
