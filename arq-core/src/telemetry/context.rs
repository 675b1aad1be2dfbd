//! The context of the request a task serves — its trace context and, once known, its tenant —
//! scoped by the edge stack so the outbound client and logs find it without being passed it.

use std::future::Future;
use std::sync::OnceLock;

use axum::extract::MatchedPath;

use crate::{TenantId, TraceContext};

tokio::task_local! {
    static CURRENT: RequestContext;
}

/// What the edge stack knows about the request being served.
#[derive(Debug)]
pub struct RequestContext {
    trace: TraceContext,
    tenant: OnceLock<TenantId>,
    route: OnceLock<MatchedPath>,
}

impl RequestContext {
    pub(crate) fn new(trace: TraceContext) -> Self {
        Self {
            trace,
            tenant: OnceLock::new(),
            route: OnceLock::new(),
        }
    }

    /// Runs `fut` with `self` as the current request context.
    pub(crate) fn scope<F: Future>(self, fut: F) -> tokio::task::futures::TaskLocalFuture<Self, F> {
        CURRENT.scope(self, fut)
    }
}

/// The trace context of the server span of the current request (what outbound calls continue).
pub fn current_trace() -> Option<TraceContext> {
    CURRENT.try_with(|c| c.trace.clone()).ok()
}

/// The tenant of the current request, once a tenant-resolution layer recorded it with
/// [`record_tenant`](super::record_tenant).
pub fn current_tenant() -> Option<TenantId> {
    CURRENT.try_with(|c| c.tenant.get().copied()).ok().flatten()
}

pub(crate) fn set_tenant(tenant: TenantId) {
    let _ = CURRENT.try_with(|c| c.tenant.set(tenant));
}

/// Records the matched route template of the current request (set after routing).
pub(crate) fn set_route(route: &MatchedPath) {
    let _ = CURRENT.try_with(|c| c.route.set(route.clone()));
}

/// The matched route template of the current request, if routing matched one.
pub(crate) fn current_route() -> Option<MatchedPath> {
    CURRENT.try_with(|c| c.route.get().cloned()).ok().flatten()
}
