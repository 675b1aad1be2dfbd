//! The binary's operations subcommands, over arq-queue's operations API. Their names and output
//! are stable (scripts use them):
//!
//! - `notifications publish ROUTING_KEY JSON [--tenant UUID]` publishes one message with the
//!   payload `JSON` to the platform's exchange (`[queue] exchange`) with routing key and message
//!   type `ROUTING_KEY` (`email.send`, `notification.push`), and prints one JSON line:
//!   `{"id", "exchange", "routing_key", "tenant"}`. Unroutable keys are an error, never a drop.
//! - `notifications dead-letters QUEUE [--limit N]` prints the dead letters of `QUEUE` (one of
//!   the worker's queues, without the prefix), oldest first, one JSON object per line:
//!   `{"id", "type", "tenant", "attempts", "reason", "failures": [{"attempt", "at_ms", "error"}],
//!   "created_at_ms", "payload"}`; `reason` is the last failure's error. They stay in place.

use anyhow::Context;
use arq_queue::{Backend, Envelope, Payload, Queue, TenantId};
use serde_json::{Value, json};

use crate::{QUEUES, QueueSettings};

/// What the binary was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the worker (no arguments).
    Serve,
    /// Print [`USAGE`].
    Help,
    /// Publish one message.
    Publish {
        /// The routing key and message type.
        routing_key: String,
        /// The payload.
        json: String,
        /// The tenant, if given.
        tenant: Option<TenantId>,
    },
    /// List a queue's dead letters.
    DeadLetters {
        /// One of [`QUEUES`].
        queue: String,
        /// At most this many.
        limit: usize,
    },
}

/// The binary's usage.
pub const USAGE: &str = "\
usage: notifications                      run the worker (config/, ARQ__SECTION__KEY variables)
       notifications publish ROUTING_KEY JSON [--tenant UUID]
                                          publish one message (e.g. email.send '{\"to\": …}')
       notifications dead-letters QUEUE [--limit N]
                                          list QUEUE's dead letters as JSON lines (default 100)
       notifications help";

impl Command {
    /// Parses the arguments after the program name; an error says what was wrong and shows
    /// [`USAGE`].
    pub fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Self> {
        let mut args = args.into_iter();
        let Some(first) = args.next() else {
            return Ok(Self::Serve);
        };
        let rest: Vec<String> = args.collect();
        let usage = |why: String| anyhow::anyhow!("{why}\n{USAGE}");
        let (positional, options) = split_options(&rest).map_err(usage)?;
        let option = |name: &str| options.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        let unknown = |allowed: &[&str]| {
            options
                .iter()
                .find(|(k, _)| !allowed.contains(&k.as_str()))
                .map(|(k, _)| usage(format!("unknown option --{k}")))
        };
        match first.as_str() {
            "help" | "--help" | "-h" => Ok(Self::Help),
            "publish" => {
                if let Some(e) = unknown(&["tenant"]) {
                    return Err(e);
                }
                let [routing_key, json] = positional.as_slice() else {
                    return Err(usage(
                        "publish takes a routing key and a JSON payload".to_owned(),
                    ));
                };
                let tenant = option("tenant")
                    .map(|t| {
                        t.parse::<TenantId>()
                            .map_err(|e| usage(format!("--tenant {t:?} is not a tenant id: {e}")))
                    })
                    .transpose()?;
                Ok(Self::Publish {
                    routing_key: routing_key.clone(),
                    json: json.clone(),
                    tenant,
                })
            }
            "dead-letters" => {
                if let Some(e) = unknown(&["limit"]) {
                    return Err(e);
                }
                let [queue] = positional.as_slice() else {
                    return Err(usage("dead-letters takes one queue name".to_owned()));
                };
                let limit = option("limit")
                    .map(|l| {
                        l.parse::<usize>()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| usage(format!("--limit {l:?} is not a positive number")))
                    })
                    .transpose()?
                    .unwrap_or(100);
                Ok(Self::DeadLetters {
                    queue: queue.clone(),
                    limit,
                })
            }
            other => Err(usage(format!("unknown command {other:?}"))),
        }
    }
}

type Options = Vec<(String, String)>;

/// Splits `--name value` / `--name=value` options from positional arguments.
fn split_options(args: &[String]) -> Result<(Vec<String>, Options), String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.strip_prefix("--") {
            Some(opt) => match opt.split_once('=') {
                Some((k, v)) => options.push((k.to_owned(), v.to_owned())),
                None => {
                    let v = it.next().ok_or_else(|| format!("--{opt} needs a value"))?;
                    options.push((opt.to_owned(), v.clone()));
                }
            },
            None => positional.push(a.clone()),
        }
    }
    Ok((positional, options))
}

/// Publishes `json` as one message of type `routing_key` to `[queue] exchange`, returning the
/// line `publish` prints.
pub async fn publish<B: Backend>(
    queue: &Queue<B>,
    settings: &QueueSettings,
    routing_key: &str,
    json: &str,
    tenant: Option<TenantId>,
) -> anyhow::Result<Value> {
    let payload = json_payload(json)?;
    let mut envelope = Envelope::with_payload(routing_key, payload);
    if let Some(t) = tenant {
        envelope = envelope.with_tenant(t);
    }
    let id = queue
        .publish_envelope(&settings.exchange, routing_key, envelope)
        .await
        .with_context(|| {
            format!(
                "cannot publish to exchange {:?} with routing key {routing_key:?}",
                settings.exchange
            )
        })?;
    Ok(json!({
        "id": id.to_string(),
        "exchange": settings.exchange,
        "routing_key": routing_key,
        "tenant": tenant.map(|t| t.to_string()),
    }))
}

/// Up to `limit` dead letters of `queue` (one of [`QUEUES`]) as the lines `dead-letters`
/// prints, oldest first.
pub async fn dead_letters<B: Backend>(
    queue: &Queue<B>,
    settings: &QueueSettings,
    name: &str,
    limit: usize,
) -> anyhow::Result<Vec<Value>> {
    if !QUEUES.contains(&name) {
        anyhow::bail!("{name:?} is not one of this worker's queues: {QUEUES:?}");
    }
    let dead = queue
        .peek_dead(&settings.queue_name(name), limit)
        .await
        .with_context(|| format!("cannot read the dead letters of {name}"))?;
    Ok(dead.iter().map(dead_letter_line).collect())
}

fn dead_letter_line(e: &Envelope) -> Value {
    let payload = e
        .payload
        .to_json()
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .unwrap_or(Value::Null);
    json!({
        "id": e.id.to_string(),
        "type": &*e.message_type,
        "tenant": e.tenant.map(|t| t.to_string()),
        "attempts": e.failures.iter().map(|f| f.attempt).max().unwrap_or(0),
        "reason": e.last_error(),
        "failures": e.failures.iter().map(|f| json!({
            "attempt": f.attempt,
            "at_ms": f.at_ms,
            "error": f.error,
        })).collect::<Vec<_>>(),
        "created_at_ms": e.created_at_ms,
        "payload": payload,
    })
}

/// `json` as a payload, after checking it is JSON.
fn json_payload(json: &str) -> anyhow::Result<Payload> {
    let value: Value = serde_json::from_str(json)
        .map_err(|e| anyhow::anyhow!("the payload is not JSON ({e}): {json:?}"))?;
    Ok(Payload::native(value))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Command> {
        Command::parse(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_the_subcommands() {
        assert_eq!(parse(&[]).unwrap(), Command::Serve);
        assert_eq!(parse(&["help"]).unwrap(), Command::Help);
        let t = TenantId::generate();
        assert_eq!(
            parse(&["publish", "email.send", "{}", "--tenant", &t.to_string()]).unwrap(),
            Command::Publish {
                routing_key: "email.send".into(),
                json: "{}".into(),
                tenant: Some(t),
            }
        );
        assert_eq!(
            parse(&["dead-letters", "--limit=5", "email.send"]).unwrap(),
            Command::DeadLetters {
                queue: "email.send".into(),
                limit: 5
            }
        );
        for (args, says) in [
            (&["serve-me"][..], "unknown command"),
            (
                &["publish", "email.send"][..],
                "a routing key and a JSON payload",
            ),
            (
                &["publish", "a", "{}", "--tenant", "x"][..],
                "is not a tenant id",
            ),
            (&["publish", "a", "{}", "--tenant"][..], "needs a value"),
            (
                &["dead-letters", "q", "--limit", "0"][..],
                "not a positive number",
            ),
            (
                &["dead-letters", "q", "--force", "1"][..],
                "unknown option --force",
            ),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(
                err.contains(says) && err.contains("usage:"),
                "{args:?}: {err}"
            );
        }
    }
}
