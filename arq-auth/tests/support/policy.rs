//! Fixtures shared by the policy test binaries.
#![allow(dead_code, unreachable_pub, clippy::result_large_err)]

use std::sync::Arc;

use arq_auth::cel::{Key, MapValue, Value};
use arq_auth::policy::{
    AttrKey, AttrValue, AttributeSource, MapAttributes, PolicyError, PolicySet,
};

pub const SCHEMA: &str = r#"
schema:
  principal:
    role: string
    department: string
    region: string
    costCenters: { type: list(string), max_size: 8 }
    clearance: int
    tags: { type: list(string), max_size: 100 }
  resource:
    department: string
    costCenter: string
    archived: bool
    owner: string
  request:
    region: string
"#;

pub fn set(rules: &str) -> Result<PolicySet, PolicyError> {
    PolicySet::from_yaml("test.yaml", &format!("{SCHEMA}rules:\n{rules}"))
}

pub fn attrs(pairs: &[(&str, Value)]) -> MapAttributes {
    let mut m = MapValue::new();
    for (k, v) in pairs {
        m.insert(Key::String(Arc::from(*k)), v.clone());
    }
    MapAttributes::new(m)
}

pub fn s(v: &str) -> Value {
    Value::string(v)
}

pub fn list(v: &[&str]) -> Value {
    Value::list(v.iter().map(|x| s(x)).collect())
}

#[derive(Clone)]
pub struct User {
    role: String,
    department: String,
    region: String,
    cost_centers: Vec<String>,
}

impl AttributeSource for User {
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

pub const TYPICAL: &str = r#"  - id: project-write
    effect: allow
    actions: ["write:project"]
    condition: principal.role in ["admin","manager","member"] && principal.department == resource.department && principal.region == request.region && resource.costCenter in principal.costCenters
"#;

pub fn user() -> User {
    User {
        role: "member".into(),
        department: "eng".into(),
        region: "eu".into(),
        cost_centers: (1..=8).map(|i| format!("cc{i}")).collect(),
    }
}
