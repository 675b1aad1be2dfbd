//! The audit event every decision emits. In its own test binary because tracing caches callsite
//! interest process-wide: other tests running without a subscriber on other threads could make
//! this one miss its event.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

mod support;
use support::policy::*;

#[derive(Default, Clone)]
struct Captured(Arc<Mutex<Vec<String>>>);

struct Visitor<'a>(&'a mut String);
impl tracing::field::Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push_str(&format!("{}={} ", field.name(), value));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == "arq::audit" {
            let mut line = String::new();
            event.record(&mut Visitor(&mut line));
            self.0.lock().unwrap().push(line);
        }
    }
}

#[test]
fn each_decision_emits_an_audit_event() {
    use tracing_subscriber::layer::SubscriberExt;
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    let set = Arc::new(set(TYPICAL).unwrap());
    let res = attrs(&[("department", s("eng")), ("costCenter", s("cc5"))]).with_id("proj-7");
    let req = attrs(&[("region", s("eu"))]);
    let d = tracing::subscriber::with_default(subscriber, || {
        set.decide(&user(), "write:project", &res, &req)
    });
    let events = captured.0.lock().unwrap();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    for want in [
        format!("decision_id={}", d.id()),
        "principal=user-1".to_owned(),
        "action=write:project".to_owned(),
        "resource_id=proj-7".to_owned(),
        "outcome=allow".to_owned(),
        "rules=project-write".to_owned(),
    ] {
        assert!(e.contains(&want), "{want} missing from {e}");
    }
}
