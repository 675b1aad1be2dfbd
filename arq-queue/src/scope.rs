//! The tenant and trace context restored around each handler.

use std::future::Future;

use arq_core::{TenantId, TraceContext};

use crate::envelope::MessageId;

tokio::task_local! {
    static CURRENT: MessageScope;
}

/// What the worker restores around a handler: the message's tenant, a child of its trace, and
/// which message and attempt is running. Code called from a handler reads it with
/// [`MessageScope::current`]; an [`Envelope`](crate::Envelope) built inside a handler inherits
/// the tenant and trace.
///
/// # Example
/// ```
/// use arq_queue::{MessageId, MessageScope, TenantId};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// assert!(MessageScope::current().is_none());
/// let tenant = TenantId::generate();
/// let scope = MessageScope { tenant: Some(tenant), trace: None, message_id: MessageId::generate(), attempt: 1 };
/// scope.run(async move {
///     assert_eq!(MessageScope::current().unwrap().tenant, Some(tenant));
/// }).await;
/// # });
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageScope {
    /// The tenant of the message being handled.
    pub tenant: Option<TenantId>,
    /// The handler's trace context (a child of the publisher's).
    pub trace: Option<TraceContext>,
    /// The message being handled.
    pub message_id: MessageId,
    /// Its delivery attempt, from 1.
    pub attempt: u32,
}

impl MessageScope {
    /// The scope of the handler the current task is running, if any.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `fut` with `self` as the current scope.
    pub async fn run<F: Future>(self, fut: F) -> F::Output {
        CURRENT.scope(self, fut).await
    }

    /// Runs the synchronous `f` with `self` as the current scope (the worker's first poll).
    pub(crate) fn run_sync<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self, f)
    }
}
