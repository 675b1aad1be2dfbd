//! # arq-tenancy
//!
//! Whose data is it: the request's tenant resolved from the authenticated identity, every query
//! of tenant data run inside a transaction scoped to that tenant by PostgreSQL row-level
//! security, a start-up audit that refuses an unsafe database, and field-level encryption.
//!
//! This crate is being built issue by issue; today it offers the tenant id it is built around.
//!
//! # Example
//!
//! ```
//! use arq_tenancy::TenantId;
//!
//! // Tenant ids are parsed before they reach SQL; bad input is an error, never a panic.
//! assert!("' or 1=1 --".parse::<TenantId>().is_err());
//! ```

pub use arq_core::TenantId;
