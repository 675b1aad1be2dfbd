//! The typical decision path allocates nothing: attributes are borrowed from the principal,
//! resource and request structs, constants live in the compiled closures, and the decision keeps
//! its rule ids inline. Counted with a counting global allocator (this test binary only).
//!
//! The allocator counts every thread, so this binary runs without libtest's harness
//! (`harness = false`): `main` is the only thread while the region is measured.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::alloc::System;
use std::sync::Arc;

use arq_auth::policy::{AttrKey, AttrValue, AttributeSource, PolicySet};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

struct Principal {
    role: String,
    department: String,
    region: String,
    cost_centers: Vec<String>,
}

impl AttributeSource for Principal {
    fn attribute(&self, key: AttrKey<'_>) -> Option<AttrValue<'_>> {
        Some(match key.name() {
            "role" => AttrValue::Str(&self.role),
            "department" => AttrValue::Str(&self.department),
            "region" => AttrValue::Str(&self.region),
            "costCenters" => AttrValue::StrList(&self.cost_centers),
            _ => return None,
        })
    }
    fn entity_id(&self) -> Option<&str> {
        Some("user-1")
    }
}

struct Resource {
    department: String,
    cost_center: String,
}

impl AttributeSource for Resource {
    fn attribute(&self, key: AttrKey<'_>) -> Option<AttrValue<'_>> {
        Some(match key.name() {
            "department" => AttrValue::Str(&self.department),
            "costCenter" => AttrValue::Str(&self.cost_center),
            _ => return None,
        })
    }
}

struct Request {
    region: String,
}

impl AttributeSource for Request {
    fn attribute(&self, key: AttrKey<'_>) -> Option<AttrValue<'_>> {
        (key.name() == "region").then_some(AttrValue::Str(&self.region))
    }
}

const POLICY: &str = r#"
schema:
  principal:
    role: string
    department: string
    region: string
    costCenters: { type: list(string), max_size: 8 }
  resource:
    department: string
    costCenter: string
  request:
    region: string
rules:
  - id: project-write
    effect: allow
    actions: ["write:project"]
    condition: principal.role in ["admin","manager","member"] && principal.department == resource.department && principal.region == request.region && resource.costCenter in principal.costCenters
  - id: frozen
    effect: deny
    actions: ["write:*"]
    condition: resource.department == "archive"
"#;

fn main() {
    typical_decisions_do_not_allocate();
    println!("test typical_decisions_do_not_allocate ... ok");
}

fn typical_decisions_do_not_allocate() {
    let set = Arc::new(PolicySet::from_yaml("p.yaml", POLICY).unwrap());
    let p = Principal {
        role: "member".into(),
        department: "eng".into(),
        region: "eu".into(),
        cost_centers: (1..=8).map(|i| format!("cc{i}")).collect(),
    };
    let allowed = Resource {
        department: "eng".into(),
        cost_center: "cc8".into(),
    };
    let denied = Resource {
        department: "eng".into(),
        cost_center: "cc9".into(),
    };
    let q = Request {
        region: "eu".into(),
    };
    // Warm up lazily initialised statics (tracing call sites, the UUID clock).
    for _ in 0..3 {
        let _ = set.decide(&p, "write:project", &allowed, &q);
    }
    let region = Region::new(GLOBAL);
    let mut allowed_count = 0;
    for i in 0..1000 {
        let res = if i % 2 == 0 { &allowed } else { &denied };
        let d = set.decide(&p, "write:project", res, &q);
        allowed_count += usize::from(d.allowed());
        drop(d);
    }
    let stats = region.change();
    assert_eq!(allowed_count, 500);
    assert_eq!(stats.allocations, 0, "{stats:?}");
    assert_eq!(stats.reallocations, 0, "{stats:?}");
}
