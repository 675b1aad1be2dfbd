//! The rules, one file per domain. Each file holds its rules' registry entries (`RULES`) next to
//! the code that checks them.

use super::{Ctx, Finding};

pub(crate) mod auth;
pub(crate) mod config;
pub(crate) mod docker;
pub(crate) mod kubernetes;
pub(crate) mod manifest;
pub(crate) mod meta;
pub(crate) mod migrations;
pub(crate) mod policy;
pub(crate) mod queues;
pub(crate) mod routes;
pub(crate) mod tenancy;

/// Runs every static rule.
pub(crate) fn run_all(ctx: &Ctx, out: &mut Vec<Finding>) {
    manifest::check(ctx, out);
    config::check(ctx, out);
    auth::check(ctx, out);
    routes::check(ctx, out);
    migrations::check(ctx, out);
    kubernetes::check(ctx, out);
    docker::check(ctx, out);
    queues::check(ctx, out);
    policy::check(ctx, out);
}

/// Service config files: `<service dir>/config/*.toml`, with the service name.
pub(crate) fn service_configs(ctx: &Ctx) -> Vec<(&str, &super::SourceFile)> {
    let mut out = Vec::new();
    for (name, dir) in &ctx.services {
        let prefix = if dir == "." {
            "config/".to_owned()
        } else {
            format!("{dir}/config/")
        };
        for f in ctx.files.values().filter(|f| {
            let p = f.rel.as_str();
            p.starts_with(&prefix) && p.ends_with(".toml") && !p[prefix.len()..].contains('/')
        }) {
            out.push((name.as_str(), f));
        }
    }
    out
}
