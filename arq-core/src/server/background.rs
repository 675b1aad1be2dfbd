//! Work a service runs beside its HTTP server until shutdown: an outbox relay, a queue consumer.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Completes when the task's owner asks it to stop ([`BackgroundTask::stop`]), or when the owner
/// is gone: hand it to the work as its shutdown future.
#[derive(Debug)]
pub struct StopSignal(oneshot::Receiver<()>);

impl Future for StopSignal {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // A dropped sender (the owner went away without stopping) means stop as well.
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// How a [`BackgroundTask`] ended when it was stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stopped {
    /// It finished its work and returned `Ok`.
    Finished,
    /// It returned an error (its text, with its causes).
    Failed(String),
    /// It panicked.
    Panicked,
    /// It did not finish within the deadline and was aborted.
    TimedOut,
}

/// A named task spawned beside the server with a [`StopSignal`], stopped after the server
/// drained, within a deadline; how it ended is logged and returned.
///
/// Why not a bare `tokio::spawn`: an outbox relay or a consumer must finish its round (publish,
/// then mark; handle, then acknowledge) before the process exits, but must not hold the exit
/// up forever; and its failure must be reported rather than lost with the `JoinHandle`.
///
/// ```
/// use std::time::Duration;
/// use arq_core::server::{BackgroundTask, Stopped};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let relay = BackgroundTask::spawn("outbox relay", |stop| async move {
///     stop.await; // a real task works until `stop` completes
///     Ok::<(), std::io::Error>(())
/// });
/// // ... serve until the shutdown signal ...
/// assert_eq!(relay.stop(Duration::from_secs(10)).await, Stopped::Finished);
/// # }
/// ```
#[derive(Debug)]
pub struct BackgroundTask {
    name: &'static str,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), String>>,
}

impl BackgroundTask {
    /// Spawns `work(stop_signal)` on the current tokio runtime.
    pub fn spawn<F, Fut, E>(name: &'static str, work: F) -> Self
    where
        F: FnOnce(StopSignal) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let (stop, signal) = oneshot::channel();
        let fut = work(StopSignal(signal));
        let handle = tokio::spawn(async move { fut.await.map_err(|e| format!("{e:#}")) });
        Self { name, stop, handle }
    }

    /// Asks the task to stop and waits up to `within` for it; aborts it after that. Logs how it
    /// ended (an error at `error`, a timeout at `warn`).
    pub async fn stop(self, within: Duration) -> Stopped {
        let Self { name, stop, handle } = self;
        // The task may have ended already (then nobody listens): that is fine.
        let _ = stop.send(());
        let abort = handle.abort_handle();
        let stopped = match tokio::time::timeout(within, handle).await {
            Ok(Ok(Ok(()))) => Stopped::Finished,
            Ok(Ok(Err(e))) => Stopped::Failed(e),
            Ok(Err(_)) => Stopped::Panicked,
            Err(_) => {
                abort.abort();
                Stopped::TimedOut
            }
        };
        match &stopped {
            Stopped::Finished => tracing::debug!(task = name, "background task stopped"),
            Stopped::Failed(e) => {
                tracing::error!(task = name, error = %e, "background task failed");
            }
            Stopped::Panicked => tracing::error!(task = name, "background task panicked"),
            Stopped::TimedOut => tracing::warn!(
                task = name,
                within_ms = u64::try_from(within.as_millis()).unwrap_or(u64::MAX),
                "background task did not stop in time; aborted"
            ),
        }
        stopped
    }

    /// Whether the task has ended on its own (before being stopped).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_honours_stop_finishes() {
        let t = BackgroundTask::spawn("ok", |stop| async move {
            stop.await;
            Ok::<(), String>(())
        });
        assert!(!t.is_finished());
        assert_eq!(t.stop(Duration::from_secs(1)).await, Stopped::Finished);
    }

    #[tokio::test]
    async fn a_failure_is_reported_with_its_causes() {
        let t = BackgroundTask::spawn("fails", |_stop| async move {
            Err::<(), _>(std::io::Error::other("broker gone"))
        });
        assert_eq!(
            t.stop(Duration::from_secs(1)).await,
            Stopped::Failed("broker gone".to_owned())
        );
    }

    #[tokio::test]
    async fn a_panic_is_reported() {
        let t = BackgroundTask::spawn("panics", |_stop| async move {
            #[allow(clippy::panic, reason = "the panic under test")]
            if true {
                panic!("boom");
            }
            Ok::<(), String>(())
        });
        assert_eq!(t.stop(Duration::from_secs(1)).await, Stopped::Panicked);
    }

    /// A task that ignores the stop signal is aborted at the deadline (paused clock).
    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_stop_is_aborted_at_the_deadline() {
        let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
        let t = BackgroundTask::spawn("stuck", |_stop| async move {
            // Dropped (and so signalled) when the task is aborted.
            let _guard = dropped_tx;
            std::future::pending::<()>().await;
            Ok::<(), String>(())
        });
        let started = tokio::time::Instant::now();
        assert_eq!(t.stop(Duration::from_secs(5)).await, Stopped::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(5));
        assert!(
            dropped_rx.await.is_err(),
            "the aborted task's state is dropped"
        );
    }
}
