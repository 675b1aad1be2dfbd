//! # arq-tenancy
//!
//! Whose data is it: the request's tenant resolved from the authenticated identity, every query
//! of tenant data run inside a transaction scoped to that tenant by PostgreSQL row-level
//! security, a start-up audit that refuses an unsafe database, propagation of the tenant to other
//! services and queues, and field-level encryption.
//!
//! | module | what it gives |
//! |---|---|
//! | [`resolve`] | [`TenantLayer`]: tenant from [`arq_core::CallerIdentity`], `X-Tenant-ID` as a checked selector, optional subdomains |
//! | [`context`] | the task's current tenant, carried into spawned tasks |
//! | [`db`] | [`DbConfig`]: pools (20 connections, PgBouncer, a read replica), statement fingerprints |
//! | [`tx`] | [`TenantPool`], [`TenantTx`] (axum extractor and worker function), [`TenantTxLayer`], the database metrics and slow-query log |
//! | [`migrate`] | the SQL support (`arq.current_tenant_id()`, `arq.enable_tenant_rls`) and role setup |
//! | [`audit`] | the start-up audit: [`audit::audit`] returns a report, [`audit::ensure_safe`] refuses to start |
//! | [`propagate`] | tenant into and out of HTTP headers and queue envelopes |
//! | [`crypto`] | envelope encryption of fields, blind indexes, an encrypted sqlx column type |
//! | `testing` | (feature `testing`) `TestDatabase`: a database of its own per test, migrated, per-role pools, dropped at the end |
//!
//! Deployment behind PgBouncer is described in `docs/tenancy.md`.
//!
//! # Example
//!
//! ```
//! use arq_tenancy::TenantId;
//!
//! // Tenant ids are parsed before they reach SQL; bad input is an error, never a panic.
//! assert!("' or 1=1 --".parse::<TenantId>().is_err());
//! ```

pub mod audit;
pub mod context;
pub mod crypto;
pub mod db;
pub mod migrate;
pub mod propagate;
pub mod resolve;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tx;

pub use arq_core::TenantId;
pub use db::DbConfig;
pub use resolve::{Tenant, TenantLayer};
pub use tx::{BeginMode, TenantPool, TenantTx, TenantTxLayer, TxError};
