//! Serves the hello example on `ARQ_HELLO_ADDR` (default 127.0.0.1:3000) until Ctrl-C.

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::var("ARQ_HELLO_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| {
            format!("cannot listen on {addr}; set ARQ_HELLO_ADDR to a free address")
        })?;
    let local = listener.local_addr()?;
    // The quickstart waits for this line before it sends requests.
    #[allow(clippy::print_stdout, reason = "a binary announcing where it listens")]
    {
        println!("listening on http://{local}");
    }
    axum::serve(listener, arq_example_hello::app())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("server error")
}
