//! Shared test helpers: capture arq's resilience tracing events, script inner services.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// One captured event: its message and fields.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub message: String,
    pub fields: Vec<(String, String)>,
}

impl Event {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
pub struct Events(Arc<Mutex<Vec<Event>>>);

impl Events {
    /// Every captured "circuit breaker state changed" event as (from, to).
    pub fn transitions(&self) -> Vec<(String, String)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.message == "circuit breaker state changed")
            .map(|e| {
                (
                    e.field("from").unwrap_or_default().to_owned(),
                    e.field("to").unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    pub fn all(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
}

struct Capture(Events);

struct Visitor<'a>(&'a mut Event);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        let v = format!("{value:?}");
        self.set(field, v);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, value.to_owned());
    }
}

impl Visitor<'_> {
    fn set(&mut self, field: &Field, v: String) {
        if field.name() == "message" {
            self.0.message = v;
        } else {
            self.0.fields.push((field.name().to_owned(), v));
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != "arq::resilience" {
            return;
        }
        let mut e = Event::default();
        event.record(&mut Visitor(&mut e));
        self.0.0.lock().unwrap().push(e);
    }
}

/// Captures arq's resilience events on this thread until the guard drops.
pub fn capture() -> (Events, tracing::subscriber::DefaultGuard) {
    let events = Events::default();
    let subscriber = tracing_subscriber::registry().with(Capture(events.clone()));
    let guard = tracing::subscriber::set_default(subscriber);
    (events, guard)
}
