//! ABAC decision benchmarks: arq's compiled CEL policies against the `cel` crate (0.15, an
//! interpreter), Cedar (cedar-policy 4.14) and a hand-written Rust closure, in one run.
//!
//! Every engine binds the attributes from the same principal / resource / request structs on each
//! decision (what a service does per request). Run:
//! `cargo bench -p arq-auth --bench policy`.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arq_auth::policy::{AttrKey, AttrValue, AttributeSource, ConditionCompiler, PolicySet};
use criterion::{Criterion, criterion_group};

struct Principal {
    id: String,
    role: String,
    department: String,
    region: String,
    cost_centers: Vec<String>,
}

struct Resource {
    id: String,
    department: String,
    cost_center: String,
}

struct RequestCtx {
    region: String,
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
        Some(&self.id)
    }
}

impl AttributeSource for Resource {
    fn attribute(&self, key: AttrKey<'_>) -> Option<AttrValue<'_>> {
        Some(match key.name() {
            "department" => AttrValue::Str(&self.department),
            "costCenter" => AttrValue::Str(&self.cost_center),
            _ => return None,
        })
    }
    fn entity_id(&self) -> Option<&str> {
        Some(&self.id)
    }
}

impl AttributeSource for RequestCtx {
    fn attribute(&self, key: AttrKey<'_>) -> Option<AttrValue<'_>> {
        (key.name() == "region").then_some(AttrValue::Str(&self.region))
    }
}

const SCHEMA: &str = r#"
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
"#;

const TYPICAL: &str = r#"principal.role in ["admin","manager","member"] && principal.department == resource.department && principal.region == request.region && resource.costCenter in principal.costCenters"#;

/// Rule `i` of the 50-rule set: the typical rule with a different region constant.
fn rule_n(i: usize) -> String {
    format!(
        r#"principal.role in ["admin","manager","member"] && principal.department == resource.department && request.region == "region{i}" && resource.costCenter in principal.costCenters"#
    )
}

/// Rule `i` of the 50-rule set that the rule index cannot narrow: the region test is not an
/// equality with a constant, so every rule is evaluated.
fn rule_n_unindexed(i: usize) -> String {
    format!(
        r#"principal.role in ["admin","manager","member"] && principal.department == resource.department && request.region.endsWith("region{i}") && resource.costCenter in principal.costCenters"#
    )
}

fn yaml(conditions: &[String]) -> String {
    let mut s = format!("{SCHEMA}rules:\n");
    for (i, c) in conditions.iter().enumerate() {
        s.push_str(&format!(
            "  - id: r{i}\n    effect: allow\n    actions: [\"write:project\"]\n    condition: '{c}'\n"
        ));
    }
    s
}

fn inputs(region: &str) -> (Principal, Resource, Resource, RequestCtx) {
    let p = Principal {
        id: "user-1".into(),
        role: "member".into(),
        department: "eng".into(),
        region: region.into(),
        cost_centers: (1..=8).map(|i| format!("cc{i}")).collect(),
    };
    let allowed = Resource {
        id: "proj-1".into(),
        department: "eng".into(),
        cost_center: "cc7".into(),
    };
    let denied = Resource {
        id: "proj-2".into(),
        department: "eng".into(),
        cost_center: "cc9".into(),
    };
    (
        p,
        allowed,
        denied,
        RequestCtx {
            region: region.into(),
        },
    )
}

// ---- the `cel` crate: bind the principal struct into a context per decision ----

fn cel_context(p: &Principal, r: &Resource, q: &RequestCtx) -> cel::Context<'static, 'static> {
    let mut ctx = cel::Context::default();
    let mut pm: HashMap<String, cel::Value> = HashMap::new();
    pm.insert("role".into(), p.role.clone().into());
    pm.insert("department".into(), p.department.clone().into());
    pm.insert("region".into(), p.region.clone().into());
    pm.insert(
        "costCenters".into(),
        cel::Value::from(
            p.cost_centers
                .iter()
                .map(|c| cel::Value::from(c.clone()))
                .collect::<Vec<_>>(),
        ),
    );
    ctx.add_variable_from_value("principal", pm);
    let mut rm: HashMap<String, cel::Value> = HashMap::new();
    rm.insert("department".into(), r.department.clone().into());
    rm.insert("costCenter".into(), r.cost_center.clone().into());
    ctx.add_variable_from_value("resource", rm);
    let mut qm: HashMap<String, cel::Value> = HashMap::new();
    qm.insert("region".into(), q.region.clone().into());
    ctx.add_variable_from_value("request", qm);
    ctx
}

fn cel_decide(programs: &[cel::Program], p: &Principal, r: &Resource, q: &RequestCtx) -> bool {
    let ctx = cel_context(p, r, q);
    programs
        .iter()
        .any(|prog| matches!(prog.execute(&ctx), Ok(cel::Value::Bool(true))))
}

// ---- Cedar: build entities and context per decision ----

fn cedar_policy_text(n: usize, typical: bool) -> String {
    let mut s = String::new();
    for i in 0..n {
        let region = if typical {
            "context.region == principal.region".to_owned()
        } else {
            format!("context.region == \"region{i}\"")
        };
        s.push_str(&format!(
            "permit(principal, action == Action::\"write:project\", resource) when {{ [\"admin\",\"manager\",\"member\"].contains(principal.role) && principal.department == resource.department && {region} && principal.costCenters.contains(resource.costCenter) }};\n"
        ));
    }
    s
}

struct Cedar {
    policies: cedar_policy::PolicySet,
    authorizer: cedar_policy::Authorizer,
    action: cedar_policy::EntityUid,
}

impl Cedar {
    fn new(text: &str) -> Self {
        Self {
            policies: cedar_policy::PolicySet::from_str(text).unwrap(),
            authorizer: cedar_policy::Authorizer::new(),
            action: cedar_policy::EntityUid::from_str(r#"Action::"write:project""#).unwrap(),
        }
    }

    fn decide(&self, p: &Principal, r: &Resource, q: &RequestCtx) -> bool {
        use cedar_policy::{
            Context, Entities, Entity, EntityUid, Request, RestrictedExpression as E,
        };
        let puid = EntityUid::from_str(&format!("User::\"{}\"", p.id)).unwrap();
        let ruid = EntityUid::from_str(&format!("Project::\"{}\"", r.id)).unwrap();
        let pattrs = HashMap::from([
            ("role".to_owned(), E::new_string(p.role.clone())),
            ("department".to_owned(), E::new_string(p.department.clone())),
            ("region".to_owned(), E::new_string(p.region.clone())),
            (
                "costCenters".to_owned(),
                E::new_set(p.cost_centers.iter().map(|c| E::new_string(c.clone()))),
            ),
        ]);
        let rattrs = HashMap::from([
            ("department".to_owned(), E::new_string(r.department.clone())),
            (
                "costCenter".to_owned(),
                E::new_string(r.cost_center.clone()),
            ),
        ]);
        let entities = Entities::from_entities(
            [
                Entity::new(puid.clone(), pattrs, HashSet::new()).unwrap(),
                Entity::new(ruid.clone(), rattrs, HashSet::new()).unwrap(),
            ],
            None,
        )
        .unwrap();
        let ctx =
            Context::from_pairs([("region".to_owned(), E::new_string(q.region.clone()))]).unwrap();
        let req = Request::new(puid, self.action.clone(), ruid, ctx, None).unwrap();
        self.authorizer
            .is_authorized(&req, &self.policies, &entities)
            .decision()
            == cedar_policy::Decision::Allow
    }
}

// ---- a hand-written closure ----

type Rule = Box<dyn Fn(&Principal, &Resource, &RequestCtx) -> bool + Send + Sync>;

fn closure_rule(region: Option<String>) -> Rule {
    Box::new(move |p, r, q| {
        matches!(p.role.as_str(), "admin" | "manager" | "member")
            && p.department == r.department
            && match &region {
                None => p.region == q.region,
                Some(c) => q.region == *c,
            }
            && p.cost_centers.contains(&r.cost_center)
    })
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("abac");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);

    // Typical policy, one rule.
    let ours =
        Arc::new(PolicySet::from_yaml("typical.yaml", &yaml(&[TYPICAL.to_owned()])).unwrap());
    let cel_typ = vec![cel::Program::compile(TYPICAL).unwrap()];
    let cedar_typ = Cedar::new(&cedar_policy_text(1, true));
    let closure_typ = [closure_rule(None)];
    let (p, allowed, denied, q) = inputs("eu");
    assert!(ours.decide(&p, "write:project", &allowed, &q).allowed());
    assert!(!ours.decide(&p, "write:project", &denied, &q).allowed());
    assert!(cel_decide(&cel_typ, &p, &allowed, &q) && !cel_decide(&cel_typ, &p, &denied, &q));
    assert!(cedar_typ.decide(&p, &allowed, &q) && !cedar_typ.decide(&p, &denied, &q));

    for (label, res) in [("allowed", &allowed), ("denied", &denied)] {
        g.bench_function(format!("typical_{label}/arq"), |b| {
            b.iter(|| {
                black_box(
                    ours.decide(black_box(&p), "write:project", black_box(res), &q)
                        .allowed(),
                )
            });
        });
        g.bench_function(format!("typical_{label}/cel-0.15"), |b| {
            b.iter(|| black_box(cel_decide(&cel_typ, black_box(&p), black_box(res), &q)));
        });
        g.bench_function(format!("typical_{label}/cedar-4.14"), |b| {
            b.iter(|| black_box(cedar_typ.decide(black_box(&p), black_box(res), &q)));
        });
        g.bench_function(format!("typical_{label}/closure"), |b| {
            b.iter(|| {
                black_box(
                    closure_typ
                        .iter()
                        .any(|f| f(black_box(&p), black_box(res), &q)),
                )
            });
        });
    }

    // 50 rules differing in constants; the matching rule is the last one.
    let conds: Vec<String> = (0..50).map(rule_n).collect();
    let ours50 = Arc::new(PolicySet::from_yaml("fifty.yaml", &yaml(&conds)).unwrap());
    let cel50: Vec<cel::Program> = conds
        .iter()
        .map(|c| cel::Program::compile(c).unwrap())
        .collect();
    let cedar50 = Cedar::new(&cedar_policy_text(50, false));
    let closures50: Vec<Rule> = (0..50)
        .map(|i| closure_rule(Some(format!("region{i}"))))
        .collect();
    let (p49, allowed49, _, q49) = inputs("region49");
    assert!(
        ours50
            .decide(&p49, "write:project", &allowed49, &q49)
            .allowed()
    );
    assert!(cel_decide(&cel50, &p49, &allowed49, &q49));
    assert!(cedar50.decide(&p49, &allowed49, &q49));
    g.bench_function("fifty_rules/arq", |b| {
        b.iter(|| {
            black_box(
                ours50
                    .decide(
                        black_box(&p49),
                        "write:project",
                        black_box(&allowed49),
                        &q49,
                    )
                    .allowed(),
            )
        });
    });
    let scan: Vec<String> = (0..50).map(rule_n_unindexed).collect();
    let ours50_scan = Arc::new(PolicySet::from_yaml("fifty-scan.yaml", &yaml(&scan)).unwrap());
    assert!(
        ours50_scan
            .decide(&p49, "write:project", &allowed49, &q49)
            .allowed()
    );
    g.bench_function("fifty_rules_unindexed/arq", |b| {
        b.iter(|| {
            black_box(
                ours50_scan
                    .decide(
                        black_box(&p49),
                        "write:project",
                        black_box(&allowed49),
                        &q49,
                    )
                    .allowed(),
            )
        });
    });
    g.bench_function("fifty_rules/cel-0.15", |b| {
        b.iter(|| {
            black_box(cel_decide(
                &cel50,
                black_box(&p49),
                black_box(&allowed49),
                &q49,
            ))
        });
    });
    g.bench_function("fifty_rules/cedar-4.14", |b| {
        b.iter(|| black_box(cedar50.decide(black_box(&p49), black_box(&allowed49), &q49)));
    });
    g.bench_function("fifty_rules/closure", |b| {
        b.iter(|| {
            black_box(
                closures50
                    .iter()
                    .any(|f| f(black_box(&p49), black_box(&allowed49), &q49)),
            )
        });
    });

    // Compiling one rule: parse, type-check, estimate cost and compile to closures one
    // condition against a schema prepared once.
    let mut compiler = ConditionCompiler::new(ours.schema().clone());
    g.bench_function("compile_one_rule/arq", |b| {
        b.iter(|| black_box(compiler.compile(black_box(TYPICAL)).unwrap()));
    });
    g.bench_function("compile_one_rule/cel-0.15", |b| {
        b.iter(|| black_box(cel::Program::compile(black_box(TYPICAL)).unwrap()));
    });
    // The whole one-rule policy file: YAML, schema, slots and checker declarations, the rule,
    // the action index.
    let one = yaml(&[TYPICAL.to_owned()]);
    g.bench_function("compile_policy_file/arq", |b| {
        b.iter(|| black_box(PolicySet::from_yaml("typical.yaml", black_box(&one)).unwrap()));
    });
    g.finish();
}

criterion_group!(benches, bench);

/// `ARQ_POLICY_PROFILE=<case> [ARQ_POLICY_ITERS=n]` runs one case in a plain loop instead of
/// criterion, for `valgrind --tool=callgrind` (instruction counts are repeatable on a loaded
/// machine; divide by the iteration count). Cases: `typical_allowed`, `typical_denied`,
/// `fifty_rules`, `fifty_rules_unindexed`, `compile_one_rule`, `compile_policy_file`.
fn profile(case: &str) {
    let iters: usize = std::env::var("ARQ_POLICY_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let one = Arc::new(PolicySet::from_yaml("typical.yaml", &yaml(&[TYPICAL.to_owned()])).unwrap());
    let conds: Vec<String> = (0..50).map(rule_n).collect();
    let fifty = Arc::new(PolicySet::from_yaml("fifty.yaml", &yaml(&conds)).unwrap());
    let scan: Vec<String> = (0..50).map(rule_n_unindexed).collect();
    let fifty_scan = Arc::new(PolicySet::from_yaml("fifty-scan.yaml", &yaml(&scan)).unwrap());
    let (p, allowed, denied, q) = inputs("eu");
    let (p49, allowed49, _, q49) = inputs("region49");
    let mut compiler = ConditionCompiler::new(one.schema().clone());
    let file = yaml(&[TYPICAL.to_owned()]);
    let mut n = 0usize;
    for _ in 0..iters {
        n += usize::from(match case {
            "typical_allowed" => one
                .decide(black_box(&p), "write:project", black_box(&allowed), &q)
                .allowed(),
            "typical_denied" => one
                .decide(black_box(&p), "write:project", black_box(&denied), &q)
                .allowed(),
            "fifty_rules" => fifty
                .decide(
                    black_box(&p49),
                    "write:project",
                    black_box(&allowed49),
                    &q49,
                )
                .allowed(),
            "fifty_rules_unindexed" => fifty_scan
                .decide(
                    black_box(&p49),
                    "write:project",
                    black_box(&allowed49),
                    &q49,
                )
                .allowed(),
            "compile_one_rule" => compiler.compile(black_box(TYPICAL)).is_ok(),
            "compile_policy_file" => PolicySet::from_yaml("typical.yaml", black_box(&file)).is_ok(),
            other => panic!("unknown profile case {other}"),
        });
    }
    println!("{case}: {n} of {iters}");
}

fn main() {
    if let Ok(case) = std::env::var("ARQ_POLICY_PROFILE") {
        profile(&case);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
