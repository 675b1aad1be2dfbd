//! Fuzzes the CEL engine and the policy loader (PITFALL 42): expression text, policy files and
//! attribute values must never panic, overflow the stack or run unbounded.
//!
//! The first byte picks the mode:
//! - 0: the input is a CEL expression: parse, check against declared variables, evaluate.
//! - 1: the input is a policy file: load it; if it loads, decide with empty attributes.
//! - 2: the input is attribute values for a fixed policy set (lengths and bytes from the input).
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arq_auth::cel::{self, Checker, Interpreter, Key, MapValue, ParseOptions, Type, Value};
use arq_auth::policy::{MapAttributes, NoAttributes, PolicySet};
use libfuzzer_sys::fuzz_target;

const POLICY: &str = r#"
schema:
  principal:
    role: string
    department: string
    region: string
    costCenters: { type: list(string), max_size: 8 }
    level: int
    extra: dyn
  resource:
    department: string
    costCenter: string
    size: int
  request:
    region: string
rules:
  - id: typical
    effect: allow
    actions: ["write:project"]
    condition: principal.role in ["admin","manager","member"] && principal.department == resource.department && principal.region == request.region && resource.costCenter in principal.costCenters
  - id: levels
    effect: allow
    actions: ["write:*"]
    condition: principal.level * resource.size > 10 && principal.costCenters.exists(c, c.startsWith(resource.costCenter))
  - id: dynamic
    effect: deny
    actions: ["*"]
    condition: has(principal.extra) && principal.extra.size() > 3
"#;

fn policy() -> &'static Arc<PolicySet> {
    static SET: OnceLock<Arc<PolicySet>> = OnceLock::new();
    SET.get_or_init(|| Arc::new(PolicySet::from_yaml("fuzz.yaml", POLICY).expect("fixed policy loads")))
}

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn string(&mut self) -> String {
        let n = usize::from(self.byte() % 16).min(self.0.len());
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8_lossy(s).into_owned()
    }
    fn value(&mut self, depth: u8) -> Value {
        match self.byte() % 8 {
            0 => Value::Null,
            1 => Value::Bool(self.byte() % 2 == 0),
            2 => Value::Int(i64::from(self.byte() as i8) * i64::from(self.byte()) * 1_000_000_000_000),
            3 => Value::Uint(u64::from(self.byte())),
            4 => Value::Double(f64::from(self.byte()) / 3.0),
            5 if depth < 3 => {
                let n = self.byte() % 12;
                Value::list((0..n).map(|_| self.value(depth + 1)).collect())
            }
            6 if depth < 3 => {
                let mut m = MapValue::new();
                for _ in 0..self.byte() % 6 {
                    let k = self.string();
                    let v = self.value(depth + 1);
                    m.insert(Key::String(Arc::from(k.as_str())), v);
                }
                Value::Map(Arc::new(m))
            }
            _ => Value::string(self.string()),
        }
    }
    fn entity(&mut self, names: &[&str]) -> MapAttributes {
        let mut m = MapValue::new();
        for name in names {
            if self.byte() % 4 != 0 {
                let v = self.value(0);
                m.insert(Key::String(Arc::from(*name)), v);
            }
        }
        MapAttributes::new(m)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            let Ok(src) = std::str::from_utf8(rest) else { return };
            let Ok(expr) = cel::parse(src, ParseOptions::default()) else { return };
            let mut checker = Checker::new();
            checker.declare("x", Type::Int);
            checker.declare("s", Type::String);
            checker.declare("l", Type::list(Type::String));
            checker.declare("m", Type::map(Type::String, Type::Dyn));
            let _ = checker.check(&expr);
            let mut vars: HashMap<String, Value> = HashMap::new();
            vars.insert("x".into(), Value::Int(7));
            vars.insert("s".into(), Value::string("héllo"));
            vars.insert("l".into(), Value::list(vec![Value::string("a"), Value::string("b")]));
            vars.insert("m".into(), Value::Map(Arc::new(MapValue::new())));
            let _ = Interpreter::new(&vars, "", 100_000).eval(&expr);
        }
        1 => {
            let Ok(text) = std::str::from_utf8(rest) else { return };
            if let Ok(set) = PolicySet::from_yaml("fuzz.yaml", text) {
                let set = Arc::new(set);
                for action in ["a", "write:project", "read:x"] {
                    let d = set.decide(&NoAttributes, action, &NoAttributes, &NoAttributes);
                    let _ = d.decided_by().count();
                }
            }
        }
        _ => {
            let mut b = Bytes(rest);
            let p = b.entity(&["role", "department", "region", "costCenters", "level", "extra"]);
            let r = b.entity(&["department", "costCenter", "size"]);
            let q = b.entity(&["region"]);
            for action in ["write:project", "write:x", "read:y"] {
                let d = policy().decide(&p, action, &r, &q);
                let _ = (d.allowed(), d.reason().to_string());
            }
        }
    }
});
