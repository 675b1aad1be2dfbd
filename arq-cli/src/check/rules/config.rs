//! config: each environment's configuration parses, agrees with arq.toml and holds no secrets.

use std::sync::LazyLock;

use regex::Regex;

use super::service_configs;
use crate::check::registry::{Rule, Severity};
use crate::check::{Ctx, Finding, line_of_offset, line_where};

pub(crate) const RULES: &[Rule] = &[
    Rule::new(
        "config-parses",
        Severity::Error,
        "Every service's config/<environment>.toml is valid TOML with tables where the service expects them.",
        "Fix the syntax error at the reported line.",
    )
    .input(),
    Rule::new(
        "config-server-port",
        Severity::Error,
        "[server] port in a service's config equals its port in arq.toml.",
        "Change the port in one place; arq.toml is the source the gateway and compose file are wired from.",
    ),
    Rule::new(
        "config-inline-secret",
        Severity::Error,
        "No private key, password, symmetric JWT secret or credential-bearing URL is written into a config file.",
        "Reference the secret instead (`${ENV_VAR}`, `file:/run/secrets/...`) and inject it at deploy time.",
    )
    .security("9.0"),
];

/// Top-level keys that must be tables when present.
const TABLES: &[&str] = &["server", "auth", "database", "redis", "queue", "telemetry"];

static URL_PASSWORD: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"://[^/:@\s]+:([^@/\s]+)@").ok());

fn is_reference(v: &str) -> bool {
    let v = v.trim();
    v.is_empty()
        || v.starts_with("${")
        || v.starts_with("env:")
        || v.starts_with("file:")
        || v.starts_with("vault:")
}

/// Why `key = value` is an inline secret, if it is.
pub(crate) fn secret_kind(key: &str, value: &str) -> Option<&'static str> {
    if value.contains("-----BEGIN") && value.contains("PRIVATE KEY") {
        return Some("a private key");
    }
    if let Some(c) = URL_PASSWORD.as_ref().and_then(|re| re.captures(value))
        && !is_reference(&c[1])
    {
        return Some("a URL with a password in it");
    }
    if is_reference(value) {
        return None;
    }
    let k = key.to_ascii_lowercase();
    if k.contains("jwt") && (k.contains("secret") || k.contains("key")) || k == "hmac_secret" {
        return Some("a symmetric JWT secret");
    }
    if k.contains("password") || k.contains("passwd") {
        return Some("a password");
    }
    if k.contains("secret") || k.ends_with("private_key") || k.ends_with("api_key") {
        return Some("a secret");
    }
    None
}

fn walk(path: &str, prefix: &str, v: &toml::Value, text: &str, out: &mut Vec<Finding>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                walk(path, &format!("{prefix}{k}."), v, text, out);
            }
        }
        toml::Value::Array(a) => {
            for v in a {
                walk(path, prefix, v, text, out);
            }
        }
        toml::Value::String(s) => {
            let key = prefix.trim_end_matches('.');
            let last = key.rsplit('.').next().unwrap_or(key);
            if let Some(kind) = secret_kind(last, s) {
                let line = line_where(text, |l| {
                    let t = l.trim_start();
                    t.starts_with(last) && t[last.len()..].trim_start().starts_with('=')
                });
                out.push(Finding::new(
                    "config-inline-secret",
                    path,
                    line,
                    format!("{key} holds {kind} inline"),
                ));
            }
        }
        _ => {}
    }
}

pub(crate) fn check(ctx: &Ctx, out: &mut Vec<Finding>) {
    for (service, file) in service_configs(ctx) {
        let table: toml::Table = match file.text.parse() {
            Ok(t) => t,
            Err(e) => {
                let e: toml::de::Error = e;
                out.push(Finding::new(
                    "config-parses",
                    &file.rel,
                    e.span().map_or(1, |s| line_of_offset(&file.text, s.start)),
                    format!("not valid TOML: {}", e.message()),
                ));
                continue;
            }
        };
        for key in TABLES {
            if table.get(*key).is_some_and(|v| !v.is_table()) {
                out.push(Finding::new(
                    "config-parses",
                    &file.rel,
                    line_where(&file.text, |l| l.trim_start().starts_with(key)),
                    format!("`{key}` must be a table ([{key}])"),
                ));
            }
        }
        walk(
            &file.rel,
            "",
            &toml::Value::Table(table.clone()),
            &file.text,
            out,
        );
        let port = table
            .get("server")
            .and_then(|s| s.get("port"))
            .and_then(toml::Value::as_integer);
        let expected = ctx
            .manifest
            .as_ref()
            .and_then(|m| m.services.get(service))
            .map(|s| i64::from(s.port));
        if let (Some(port), Some(expected)) = (port, expected)
            && port != expected
        {
            out.push(Finding::new(
                "config-server-port",
                &file.rel,
                line_where(&file.text, |l| l.trim_start().starts_with("port")),
                format!(
                    "server.port is {port} but arq.toml gives service {service} port {expected}"
                ),
            ));
        }
    }
}
