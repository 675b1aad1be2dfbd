//! # arq-queue
//!
//! Work that happens later: one envelope and one worker API over an in-memory backend, RabbitMQ
//! and Redis Streams, with retries, dead letters, metrics and a transactional outbox on
//! PostgreSQL.
//!
//! This crate is being built issue by issue; today it offers the context every message will
//! carry.
//!
//! # Example
//!
//! ```
//! use arq_queue::{TenantId, TraceContext};
//!
//! // Every envelope carries its tenant and trace context so handlers run in the right scope.
//! let tenant = TenantId::generate();
//! let trace = TraceContext::new_root(true);
//! assert!(trace.parent.sampled());
//! # let _ = tenant;
//! ```

pub use arq_core::{TenantId, TraceContext};
