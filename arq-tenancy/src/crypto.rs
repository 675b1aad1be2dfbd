//! Field-level encryption (in progress).
