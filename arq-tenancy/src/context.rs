//! The current tenant of a task: set by the resolution layer and by tenant transactions, read by
//! propagation helpers, and carried into spawned tasks on purpose.
//!
//! Tokio's task-locals are not inherited by `tokio::spawn`; a task spawned while serving tenant A
//! would otherwise run with no tenant at all. [`spawn`] and [`InTenant`] capture the tenant by
//! value ([`TenantId`] is `Copy`), so nothing is borrowed from the request and nothing is lost.

use std::future::Future;

use arq_core::TenantId;

tokio::task_local! {
    static CURRENT: TenantId;
}

/// Runs `fut` with `tenant` as the current tenant of the task.
///
/// # Example
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use arq_tenancy::{TenantId, context};
///
/// let t = TenantId::generate();
/// assert_eq!(context::scope(t, async { context::current() }).await, Some(t));
/// assert_eq!(context::current(), None);
/// # }
/// ```
pub async fn scope<F: Future>(tenant: TenantId, fut: F) -> F::Output {
    CURRENT.scope(tenant, fut).await
}

/// The tenant the current task works for, if any.
pub fn current() -> Option<TenantId> {
    CURRENT.try_with(|t| *t).ok()
}

/// Spawns `fut` on the tokio runtime with the current tenant (if any) carried into it.
///
/// # Example
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use arq_tenancy::{TenantId, context};
///
/// let t = TenantId::generate();
/// let seen = context::scope(t, async { context::spawn(async { context::current() }) })
///     .await
///     .await
///     .unwrap();
/// assert_eq!(seen, Some(t));
/// # }
/// ```
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match current() {
        Some(tenant) => tokio::spawn(CURRENT.scope(tenant, fut)),
        None => tokio::spawn(fut),
    }
}

/// Extension for futures: run in a given tenant, or in the tenant current right now.
pub trait InTenant: Future + Sized {
    /// Wraps the future so that it runs with `tenant` as the current tenant.
    fn in_tenant(self, tenant: TenantId) -> impl Future<Output = Self::Output> {
        CURRENT.scope(tenant, self)
    }
}

impl<F: Future> InTenant for F {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spawned_tasks_keep_the_tenant_and_nested_scopes_restore() {
        let (a, b) = (TenantId::generate(), TenantId::generate());
        let handle = scope(a, async move {
            let inner = scope(b, async { current() }).await;
            assert_eq!(inner, Some(b));
            assert_eq!(current(), Some(a));
            spawn(async { current() }).await.unwrap()
        })
        .await;
        assert_eq!(handle, Some(a));
        assert_eq!(spawn(async { current() }).await.unwrap(), None);
        assert_eq!(async { current() }.in_tenant(b).await, Some(b));
    }
}
