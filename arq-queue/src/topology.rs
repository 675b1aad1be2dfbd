//! Exchanges, queues, bindings, wait queues and dead letters, declared from configuration.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::error::QueueError;

/// The whole topology: topic exchanges and the queues bound to them.
///
/// Every backend declares it idempotently: declaring the same topology twice changes nothing.
/// Each work queue `q` gets a wait queue `q.wait` (retries wait there for
/// [`QueueConfig::retry_delay`]) and a dead-letter queue `q.dead` (messages live there for
/// [`QueueConfig::dead_letter_ttl`]).
///
/// # Example
/// ```
/// use arq_queue::Topology;
///
/// let topology: Topology = serde_json::from_str(r#"{
///     "exchanges": ["app.events"],
///     "queues": [
///         {"name": "email.send", "prefetch": 10,
///          "bindings": [{"exchange": "app.events", "routing_key": "email.*"}]},
///         {"name": "report.generate", "prefetch": 5, "retry_delay": "10m",
///          "bindings": [{"exchange": "app.events", "routing_key": "report.#"}]}
///     ]
/// }"#)?;
/// topology.validate()?;
/// let email = topology.queue("email.send")?;
/// assert_eq!(email.max_attempts, 3);
/// assert_eq!(email.retry_delay, std::time::Duration::from_secs(3600));
/// assert_eq!(email.wait_queue(), "email.send.wait");
/// assert_eq!(topology.route("app.events", "email.welcome")?, vec!["email.send"]);
/// assert!(topology.route("app.events", "nothing.here").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Topology {
    /// Topic exchanges. The first is the default for [`Queue::publish`](crate::Queue::publish).
    pub exchanges: Vec<String>,
    /// Work queues and their settings.
    pub queues: Vec<QueueConfig>,
}

/// One work queue and how it is consumed.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct QueueConfig {
    /// The queue name (letters, digits, `.`, `-`, `_`, `:`; at most 200 bytes).
    pub name: String,
    /// Which exchange and topic patterns (`*` one word, `#` zero or more) feed it.
    #[serde(default)]
    pub bindings: Vec<Binding>,
    /// Deliveries a consumer may hold unacknowledged (AMQP `basic.qos`; Redis read batch).
    #[serde(default = "defaults::prefetch")]
    pub prefetch: u16,
    /// Handlers running at once per consumer; defaults to `prefetch`.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Independent consumers per worker (each with its own channel or connection).
    #[serde(default = "defaults::consumers")]
    pub consumers: usize,
    /// Deliveries before a failing message is dead-lettered (counting the first).
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// How long a failed message waits before its next attempt (RabbitMQ: the wait queue's TTL).
    #[serde(
        default = "defaults::retry_delay",
        deserialize_with = "deserialize_duration"
    )]
    pub retry_delay: Duration,
    /// How long a handler may run before the attempt counts as failed.
    #[serde(
        default = "defaults::handler_timeout",
        deserialize_with = "deserialize_duration"
    )]
    pub handler_timeout: Duration,
    /// How long dead letters are kept.
    #[serde(
        default = "defaults::dead_letter_ttl",
        deserialize_with = "deserialize_duration"
    )]
    pub dead_letter_ttl: Duration,
    /// How long a delivery may stay unacknowledged before another consumer reclaims it
    /// (Redis Streams' reaper; RabbitMQ redelivers when the channel closes instead).
    #[serde(
        default = "defaults::visibility_timeout",
        deserialize_with = "deserialize_duration"
    )]
    pub visibility_timeout: Duration,
    /// Skip messages whose id was already handled successfully (needs an idempotency store).
    #[serde(default)]
    pub idempotent: bool,
}

/// A binding of a queue to an exchange with a topic pattern.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// The exchange.
    pub exchange: String,
    /// The topic pattern, e.g. `email.*` or `report.#`.
    pub routing_key: String,
}

mod defaults {
    use std::time::Duration;
    pub(super) const fn prefetch() -> u16 {
        10
    }
    pub(super) const fn consumers() -> usize {
        1
    }
    pub(super) const fn max_attempts() -> u32 {
        3
    }
    pub(super) const fn retry_delay() -> Duration {
        Duration::from_secs(3600)
    }
    pub(super) const fn handler_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) const fn dead_letter_ttl() -> Duration {
        Duration::from_secs(7 * 24 * 3600)
    }
    pub(super) const fn visibility_timeout() -> Duration {
        Duration::from_secs(300)
    }
}

impl QueueConfig {
    /// A queue with the defaults: prefetch 10, 3 attempts, 1 h retry delay, 30 s handler
    /// timeout, dead letters kept 7 days, bound to nothing.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            bindings: Vec::new(),
            prefetch: defaults::prefetch(),
            concurrency: None,
            consumers: defaults::consumers(),
            max_attempts: defaults::max_attempts(),
            retry_delay: defaults::retry_delay(),
            handler_timeout: defaults::handler_timeout(),
            dead_letter_ttl: defaults::dead_letter_ttl(),
            visibility_timeout: defaults::visibility_timeout(),
            idempotent: false,
        }
    }

    /// Adds a binding.
    #[must_use]
    pub fn bind(mut self, exchange: impl Into<String>, routing_key: impl Into<String>) -> Self {
        self.bindings.push(Binding {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
        });
        self
    }

    /// Sets the prefetch.
    #[must_use]
    pub const fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Sets the concurrency.
    #[must_use]
    pub const fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = Some(concurrency);
        self
    }

    /// Sets the number of consumers per worker.
    #[must_use]
    pub const fn consumers(mut self, consumers: usize) -> Self {
        self.consumers = consumers;
        self
    }

    /// Sets the maximum attempts.
    #[must_use]
    pub const fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Sets the retry delay.
    #[must_use]
    pub const fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// Sets the handler timeout.
    #[must_use]
    pub const fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = timeout;
        self
    }

    /// Sets the visibility timeout.
    #[must_use]
    pub const fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = timeout;
        self
    }

    /// Turns idempotency by message id on.
    #[must_use]
    pub const fn idempotent(mut self, on: bool) -> Self {
        self.idempotent = on;
        self
    }

    /// The effective concurrency.
    pub fn effective_concurrency(&self) -> usize {
        self.concurrency
            .unwrap_or(usize::from(self.prefetch))
            .max(1)
    }

    /// The wait queue's name.
    pub fn wait_queue(&self) -> String {
        format!("{}.wait", self.name)
    }

    /// The dead-letter queue's name.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.name)
    }
}

impl Topology {
    /// A topology with these exchanges and no queues.
    pub fn new<S: Into<String>>(exchanges: impl IntoIterator<Item = S>) -> Self {
        Self {
            exchanges: exchanges.into_iter().map(Into::into).collect(),
            queues: Vec::new(),
        }
    }

    /// Adds a queue.
    #[must_use]
    pub fn queue_config(mut self, queue: QueueConfig) -> Self {
        self.queues.push(queue);
        self
    }

    /// The seed's topology: one topic exchange and the queues `email.send` (prefetch 10),
    /// `notification.push` (20), `report.generate` (5) and `data.sync` (15), each bound to its
    /// own name and sub-topics, 3 attempts, 1 h retry delay, dead letters kept 7 days.
    pub fn seed(exchange: &str) -> Self {
        let mut t = Self::new([exchange]);
        for (name, prefetch) in [
            ("email.send", 10),
            ("notification.push", 20),
            ("report.generate", 5),
            ("data.sync", 15),
        ] {
            t = t.queue_config(
                QueueConfig::new(name)
                    .prefetch(prefetch)
                    .bind(exchange, name)
                    .bind(exchange, format!("{name}.#")),
            );
        }
        t
    }

    /// The queue named `name`.
    pub fn queue(&self, name: &str) -> Result<&QueueConfig, QueueError> {
        self.queues
            .iter()
            .find(|q| q.name == name)
            .ok_or_else(|| QueueError::Unknown {
                kind: "queue",
                name: name.to_owned(),
            })
    }

    /// The default exchange (the first).
    pub fn default_exchange(&self) -> Result<&str, QueueError> {
        self.exchanges
            .first()
            .map(String::as_str)
            .ok_or_else(|| QueueError::Topology {
                reason: "no exchange is declared; add one to `exchanges`".to_owned(),
            })
    }

    /// The queues a message published to `exchange` with `routing_key` lands in; an error when
    /// none (an unroutable message is never dropped silently).
    pub fn route(&self, exchange: &str, routing_key: &str) -> Result<Vec<&str>, QueueError> {
        if !self.exchanges.iter().any(|e| e == exchange) {
            return Err(QueueError::Unknown {
                kind: "exchange",
                name: exchange.to_owned(),
            });
        }
        let queues: Vec<&str> = self
            .queues
            .iter()
            .filter(|q| {
                q.bindings
                    .iter()
                    .any(|b| b.exchange == exchange && topic_matches(&b.routing_key, routing_key))
            })
            .map(|q| q.name.as_str())
            .collect();
        if queues.is_empty() {
            return Err(QueueError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            });
        }
        Ok(queues)
    }

    /// Checks names, references and limits; every backend calls this before declaring.
    pub fn validate(&self) -> Result<(), QueueError> {
        let bad = |reason: String| Err(QueueError::Topology { reason });
        for e in &self.exchanges {
            check_name("exchange", e)?;
        }
        let mut seen = std::collections::HashSet::new();
        for q in &self.queues {
            check_name("queue", &q.name)?;
            if q.name.ends_with(".wait") || q.name.ends_with(".dead") {
                return bad(format!(
                    "queue {:?} ends in .wait or .dead, which are reserved for the wait and dead-letter queues",
                    q.name
                ));
            }
            if !seen.insert(q.name.as_str()) {
                return bad(format!("queue {:?} is declared twice", q.name));
            }
            if q.prefetch == 0 {
                return bad(format!("queue {:?}: prefetch must be at least 1", q.name));
            }
            if q.max_attempts == 0 {
                return bad(format!(
                    "queue {:?}: max_attempts must be at least 1",
                    q.name
                ));
            }
            if q.consumers == 0 {
                return bad(format!("queue {:?}: consumers must be at least 1", q.name));
            }
            if q.retry_delay.is_zero() || q.retry_delay > Duration::from_secs(u32::MAX.into()) {
                return bad(format!(
                    "queue {:?}: retry_delay must be between 1 ms and 136 years",
                    q.name
                ));
            }
            for b in &q.bindings {
                if !self.exchanges.contains(&b.exchange) {
                    return bad(format!(
                        "queue {:?} binds to exchange {:?}, which is not in `exchanges`",
                        q.name, b.exchange
                    ));
                }
                if b.routing_key.len() > 255 {
                    return bad(format!(
                        "queue {:?}: a routing key is at most 255 bytes",
                        q.name
                    ));
                }
            }
        }
        Ok(())
    }
}

fn check_name(kind: &str, name: &str) -> Result<(), QueueError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with("amq.")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    if ok {
        Ok(())
    } else {
        Err(QueueError::Topology {
            reason: format!(
                "{kind} name {name:?} is invalid: use 1 to 200 letters, digits, '.', '-', '_' or ':', not starting with 'amq.'"
            ),
        })
    }
}

/// AMQP topic matching: words separated by `.`, `*` matches exactly one word, `#` zero or more.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|i| go(rest, &k[i..])),
            Some((&"*", rest)) => !k.is_empty() && go(rest, &k[1..]),
            Some((w, rest)) => k.first() == Some(w) && go(rest, &k[1..]),
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&p, &k)
}

/// Accepts `"500ms"`, `"30s"`, `"10m"`, `"1h"`, `"7d"` or a number of seconds.
fn deserialize_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse_duration(&t).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{t:?} is not a duration; write e.g. \"500ms\", \"30s\", \"10m\", \"1h\" or \"7d\""
            ))
        }),
    }
}

fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_matching_follows_amqp() {
        assert!(topic_matches("email.*", "email.send"));
        assert!(!topic_matches("email.*", "email.send.now"));
        assert!(!topic_matches("email.*", "email"));
        assert!(topic_matches("email.#", "email"));
        assert!(topic_matches("email.#", "email.a.b"));
        assert!(topic_matches("#", "anything.at.all"));
        assert!(topic_matches("*.send", "email.send"));
        assert!(topic_matches("a.#.z", "a.z"));
        assert!(topic_matches("a.#.z", "a.b.c.z"));
        assert!(!topic_matches("a.#.z", "a.b.c"));
        assert!(topic_matches("exact", "exact"));
        assert!(!topic_matches("exact", "exactly"));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        for bad in ["", "h", "1y", "-1s", "99999999999999999999d"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn validation_rejects_bad_topologies() {
        let ok = Topology::seed("app");
        ok.validate().unwrap();
        assert_eq!(ok.queue("report.generate").unwrap().prefetch, 5);
        let bad_name = Topology::new(["app"]).queue_config(QueueConfig::new("../x"));
        assert!(bad_name.validate().is_err());
        let dangling = Topology::new(["app"]).queue_config(QueueConfig::new("q").bind("nope", "#"));
        assert!(
            dangling
                .validate()
                .unwrap_err()
                .to_string()
                .contains("nope")
        );
        let dup = Topology::new(["app"])
            .queue_config(QueueConfig::new("q"))
            .queue_config(QueueConfig::new("q"));
        assert!(dup.validate().is_err());
        let zero = Topology::new(["app"]).queue_config(QueueConfig::new("q").max_attempts(0));
        assert!(zero.validate().is_err());
        let reserved = Topology::new(["app"]).queue_config(QueueConfig::new("q.dead"));
        assert!(reserved.validate().is_err());
    }

    proptest::proptest! {
        #[test]
        fn hash_matches_everything(key in "[a-z]{1,5}(\\.[a-z]{1,5}){0,4}") {
            proptest::prop_assert!(topic_matches("#", &key));
            proptest::prop_assert!(topic_matches(&key, &key));
        }
    }
}
