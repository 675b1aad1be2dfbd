//! auth: the `[auth]` section of each service's configuration (default.toml overlaid by each
//! environment's file) uses asymmetric signatures, names issuer and audience, and keeps token
//! lifetimes within the platform's policy (`[check]` in arq.toml, defaults 1 h / 30 days / 60 s).
//!
//! ```toml
//! [auth]
//! algorithms = ["RS256"]
//! issuer = "https://id.example.com/"
//! audience = "tasks"
//! access_token_ttl_secs = 3600
//! refresh_token_ttl_secs = 2592000
//! leeway_secs = 30
//! ```

use super::service_configs;
use crate::check::registry::{Rule, Severity};
use crate::check::{Ctx, Finding, line_where};

pub(crate) const RULES: &[Rule] = &[
    Rule::new(
        "auth-asymmetric-algorithm",
        Severity::Error,
        "Access tokens are verified with asymmetric algorithms only (RS*, PS*, ES*, EdDSA), never HS* or none.",
        "Set algorithms = [\"RS256\"] and verify with the issuer's public keys (JWKS).",
    )
    .security("8.1"),
    Rule::new(
        "auth-issuer-audience",
        Severity::Error,
        "Token verification names both the issuer and the audience.",
        "Set issuer and audience in [auth]; a token for another service must not be accepted.",
    )
    .security("7.5"),
    Rule::new(
        "auth-token-lifetime",
        Severity::Error,
        "Access-token and refresh-token lifetimes and the clock-skew leeway stay within the platform's policy.",
        "Lower the lifetime, or raise the policy in [check] of arq.toml with a reason in review.",
    )
    .security("5.3"),
];

const ASYMMETRIC: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

fn line_of(text: &str, key: &str) -> u32 {
    let l = line_where(text, |l| {
        let t = l.trim_start();
        t.starts_with(key) && t[key.len()..].trim_start().starts_with('=')
    });
    if l == 1 {
        line_where(text, |l| l.trim() == "[auth]")
    } else {
        l
    }
}

pub(crate) fn check(ctx: &Ctx, out: &mut Vec<Finding>) {
    let configs = service_configs(ctx);
    for (service, file) in &configs {
        let Ok(table) = file.text.parse::<toml::Table>() else {
            continue; // config-parses reports it
        };
        let Some(auth) = table.get("auth").and_then(toml::Value::as_table) else {
            continue;
        };
        // Overlay this file's [auth] on default.toml's.
        let mut merged = configs
            .iter()
            .find(|(s, f)| s == service && f.rel.ends_with("config/default.toml"))
            .and_then(|(_, f)| f.text.parse::<toml::Table>().ok())
            .and_then(|t| t.get("auth").and_then(toml::Value::as_table).cloned())
            .unwrap_or_default();
        for (k, v) in auth {
            merged.insert(k.clone(), v.clone());
        }
        if let Some(algs) = auth.get("algorithms") {
            let list: Vec<String> = match algs {
                toml::Value::Array(a) => a
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    .collect(),
                other => vec![
                    other
                        .as_str()
                        .map_or_else(|| other.to_string(), str::to_owned),
                ],
            };
            for alg in list {
                if !ASYMMETRIC.contains(&alg.as_str()) {
                    out.push(Finding::new(
                        "auth-asymmetric-algorithm",
                        &file.rel,
                        line_of(&file.text, "algorithms"),
                        format!("[auth] algorithms allows {alg:?}, which is not an asymmetric signature algorithm"),
                    ));
                }
            }
        }
        for key in ["issuer", "audience"] {
            let set = merged.get(key).is_some_and(|v| {
                v.as_str().is_some_and(|s| !s.trim().is_empty())
                    || v.as_array().is_some_and(|a| !a.is_empty())
            });
            if !set {
                out.push(Finding::new(
                    "auth-issuer-audience",
                    &file.rel,
                    line_of(&file.text, key),
                    format!("[auth] of service {service} does not set `{key}`"),
                ));
            }
        }
        let limits = [
            (
                "access_token_ttl_secs",
                ctx.settings.max_access_token_ttl_secs,
            ),
            (
                "refresh_token_ttl_secs",
                ctx.settings.max_refresh_token_ttl_secs,
            ),
            ("leeway_secs", ctx.settings.max_leeway_secs),
        ];
        for (key, max) in limits {
            if let Some(v) = auth.get(key).and_then(toml::Value::as_integer)
                && (v < 0 || u64::try_from(v).is_ok_and(|v| v > max))
            {
                out.push(Finding::new(
                    "auth-token-lifetime",
                    &file.rel,
                    line_of(&file.text, key),
                    format!("[auth] {key} = {v} is outside the policy (0..={max})"),
                ));
            }
        }
    }
}
