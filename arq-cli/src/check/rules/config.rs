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
        "config-schema",
        Severity::Error,
        "Every environment's configuration (default.toml overlaid by <env>.toml) passes the validation the service runs at start-up (arq-core's typed sections) and, where the service ships config/schema.json, that JSON Schema.",
        "Fix or remove the reported key; `arq check --explain config-schema` and the arq-core config docs list the valid settings.",
    ),
    Rule::new(
        "config-server-port",
        Severity::Error,
        "The port of [server] addr in a service's config equals its port in arq.toml.",
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
    check_schema(ctx, out);
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
        // The port is the one of `server.addr` (what arq-core listens on); a bare `port` key,
        // which arq-core refuses, is still compared so the finding says which number is wrong.
        let server = table.get("server");
        let port = server
            .and_then(|s| s.get("addr"))
            .and_then(toml::Value::as_str)
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .map(|a| i64::from(a.port()))
            .or_else(|| {
                server
                    .and_then(|s| s.get("port"))
                    .and_then(toml::Value::as_integer)
            });
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
                line_where(&file.text, |l| {
                    let l = l.trim_start();
                    l.starts_with("addr") || l.starts_with("port")
                }),
                format!(
                    "the server listens on port {port} but arq.toml gives service {service} port {expected}"
                ),
            ));
        }
    }
}

/// The 1-based line where the dotted `key` is set in a TOML `text`: the line starting with its
/// last segment inside the table named by the rest, or the table's header, or 1.
fn key_line(text: &str, key: &str) -> u32 {
    let (table, last) = key.rsplit_once('.').unwrap_or(("", key));
    let mut current = String::new();
    let mut header = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if let Some(h) = t.strip_prefix('[') {
            current = h.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
            if current == table {
                header = Some(n);
            }
            continue;
        }
        if current == table
            && t.strip_prefix(last)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return n;
        }
    }
    header.unwrap_or(1)
}

/// `base` overlaid with `over`, tables merged key by key (what the config loader does).
fn overlay(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => overlay(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// A service's `config/schema.json`, compiled; a finding when it is not a usable schema.
fn service_schema(
    ctx: &Ctx,
    rel_dir: &str,
    out: &mut Vec<Finding>,
) -> Option<jsonschema::Validator> {
    let path = ctx.root.join(rel_dir).join("schema.json");
    let text = std::fs::read_to_string(&path).ok()?;
    let rel = format!("{rel_dir}/schema.json");
    let compiled = serde_json::from_str::<serde_json::Value>(&text)
        .map_err(|e| (u32::try_from(e.line()).unwrap_or(1), e.to_string()))
        .and_then(|v| jsonschema::validator_for(&v).map_err(|e| (1, e.to_string())));
    match compiled {
        Ok(v) => Some(v),
        Err((line, e)) => {
            out.push(Finding::new(
                "config-schema",
                &rel,
                line,
                format!("not a usable JSON Schema: {e}"),
            ));
            None
        }
    }
}

/// `config-schema`: every environment through arq-core's start-up validation and the service's
/// own JSON Schema.
fn check_schema(ctx: &Ctx, out: &mut Vec<Finding>) {
    let configs = service_configs(ctx);
    for (service, dir) in &ctx.services {
        let rel_dir = if dir == "." {
            "config".to_owned()
        } else {
            format!("{dir}/config")
        };
        let prefix = format!("{rel_dir}/");
        // A file that does not parse is already a `config-parses` finding: skip the service.
        let Some(tables) = configs
            .iter()
            .filter(|(s, _)| s == service)
            .map(|(_, f)| {
                let env = f.rel[prefix.len()..].trim_end_matches(".toml").to_owned();
                f.text.parse::<toml::Table>().ok().map(|t| (env, (*f, t)))
            })
            .collect::<Option<std::collections::BTreeMap<_, _>>>()
        else {
            continue;
        };
        if tables.is_empty() {
            continue;
        }
        let mut envs: Vec<String> = tables.keys().filter(|e| *e != "default").cloned().collect();
        if envs.is_empty() {
            envs.push("development".to_owned());
        }
        let schema = service_schema(ctx, &rel_dir, out);
        for env in &envs {
            let loader = arq_core::config::ConfigLoader::new(ctx.root.join(&rel_dir))
                .environment(env.as_str())
                .vars(Vec::<(String, String)>::new());
            let problems = match loader
                .load()
                .and_then(|layers| arq_core::config::ArqConfig::from_layers(&layers))
            {
                Ok(_) => Vec::new(),
                Err(e) => e.problems().to_vec(),
            };
            for p in problems {
                let (rel, key) = match &p.origin {
                    arq_core::config::Origin::File { path, key } => (
                        path.strip_prefix(&ctx.root)
                            .unwrap_or(path)
                            .to_string_lossy()
                            .replace('\\', "/"),
                        key.clone(),
                    ),
                    _ => (
                        tables
                            .get(env.as_str())
                            .or_else(|| tables.get("default"))
                            .map_or_else(|| prefix.clone(), |(f, _)| f.rel.clone()),
                        p.key.clone(),
                    ),
                };
                let line = ctx.files.get(&rel).map_or(1, |f| key_line(&f.text, &key));
                out.push(Finding::new(
                    "config-schema",
                    &rel,
                    line,
                    format!("{}: {}", p.key, p.message),
                ));
            }
            let Some(validator) = &schema else { continue };
            let mut merged = tables
                .get("default")
                .map(|(_, t)| t.clone())
                .unwrap_or_default();
            let own = tables.get(env.as_str());
            if let Some((_, t)) = own {
                overlay(&mut merged, t);
            }
            let Ok(doc) = serde_json::to_value(&merged) else {
                continue;
            };
            for e in validator.iter_errors(&doc) {
                let key = e
                    .instance_path()
                    .to_string()
                    .trim_start_matches('/')
                    .replace('/', ".");
                // Report it where the value is set: the environment's file, else default.toml.
                let in_env = own.is_some_and(|(_, t)| lookup(t, &key));
                let file = if in_env {
                    own
                } else {
                    tables.get("default").or(own)
                };
                let Some((f, _)) = file else { continue };
                let shown = if key.is_empty() {
                    "(top level)"
                } else {
                    key.as_str()
                };
                out.push(Finding::new(
                    "config-schema",
                    &f.rel,
                    key_line(&f.text, &key),
                    format!("{shown}: {e} ({rel_dir}/schema.json, environment {env})"),
                ));
            }
        }
    }
}

/// Whether the dotted `key` is set in `t`.
fn lookup(t: &toml::Table, key: &str) -> bool {
    let mut cur = t;
    let mut parts = key.split('.').peekable();
    while let Some(p) = parts.next() {
        match (cur.get(p), parts.peek()) {
            (Some(_), None) => return true,
            (Some(toml::Value::Table(next)), Some(_)) => cur = next,
            _ => return false,
        }
    }
    false
}
