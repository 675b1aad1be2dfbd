//! CEL engine behaviour beyond the conformance suite: positions, limits, the cost budget, and
//! agreement between the compiled fast path and the interpreter.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;

use arq_auth::cel::{
    self, Checker, EmptyActivation, Interpreter, Key, MapValue, ParseOptions, Type, Value,
};
use arq_auth::policy::{MapAttributes, NoAttributes, PolicySet, Reason};
use proptest::prelude::*;

fn parse(src: &str) -> Result<cel::Expr, cel::ParseError> {
    cel::parse(src, ParseOptions::default())
}

#[test]
fn parse_errors_carry_line_and_column() {
    let e = parse("a &&\n  b +* c").unwrap_err();
    assert_eq!((e.location.line, e.location.column), (2, 6), "{e}");
    let e = parse("'unterminated").unwrap_err();
    assert_eq!(e.location.column, 1);
}

#[test]
fn check_errors_carry_positions() {
    let src = "x + 1 == 2 &&\n  y.startsWith(1)";
    let e = parse(src).unwrap();
    let mut c = Checker::new();
    c.declare("x", Type::Int);
    c.declare("y", Type::String);
    let err = c.check_source(src, &e).unwrap_err();
    assert_eq!(err.location.line, 2, "{err}");
    assert!(err.message.contains("startsWith"), "{err}");
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    for src in [
        format!("{}1{}", "(".repeat(100_000).as_str(), ")".repeat(100_000)),
        format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)),
        "!".repeat(50_000) + "true",
        "-".repeat(50_000) + "1",
        "1".to_owned() + &" + 1".repeat(20_000),
        "a".to_owned() + &".b".repeat(20_000),
        "f(".repeat(10_000) + &")".repeat(10_000),
        "{1: ".repeat(5_000) + "1" + &"}".repeat(5_000),
        "[1].map(x, ".repeat(3_000) + "x" + &")".repeat(3_000),
    ] {
        let e = parse(&src).unwrap_err();
        assert!(
            e.message.contains("deeper") || e.message.contains("limit"),
            "{}",
            e.message
        );
    }
    // Nesting within the limit still works.
    let ok = format!("{}1{}", "(".repeat(50), ")".repeat(50));
    assert!(matches!(cel::eval_str(&ok), Ok(Value::Int(1))));
}

#[test]
fn huge_literals_are_refused_clearly() {
    let e = parse("99999999999999999999").unwrap_err();
    assert!(e.message.contains("out of range"), "{e}");
    let e = parse("18446744073709551616u").unwrap_err();
    assert!(e.message.contains("out of range"), "{e}");
    let big = format!("'{}'", "x".repeat(200_000));
    let e = parse(&big).unwrap_err();
    assert!(e.message.contains("limit"), "{e}");
    assert!(matches!(
        cel::eval_str("-9223372036854775808"),
        Ok(Value::Int(i64::MIN))
    ));
}

#[test]
fn nested_comprehension_bomb_stops_within_its_budget() {
    // The kind of expression that ran for seconds in an interpreter without cost limits.
    let l = "[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19]";
    let src = format!("{l}.all(a, {l}.all(b, {l}.all(c, {l}.all(d, {l}.all(e, a+b+c+d+e >= 0)))))");
    assert!(src.len() < 400);
    let e = parse(&src).unwrap();
    let it = Interpreter::new(&EmptyActivation, "", 100_000);
    let start = std::time::Instant::now();
    let r = it.eval(&e);
    let took = start.elapsed();
    assert!(
        matches!(&r, Err(err) if err.message().contains("cost budget")),
        "{r:?}"
    );
    eprintln!("bomb stopped after {took:?} (debug build; budget 100000 steps)");
    // String doubling is charged by length, so memory stays bounded too.
    let src = "cel.bind(a, 'xxxxxxxxxxxxxxxx', ".to_owned()
        + &(0..40)
            .map(|i| {
                format!(
                    "cel.bind(a{i}, {}, ",
                    if i == 0 {
                        "a + a".to_owned()
                    } else {
                        format!("a{} + a{}", i - 1, i - 1)
                    }
                )
            })
            .collect::<String>()
        + "a39.size() > 0"
        + &")".repeat(41);
    let e = parse(&src).unwrap();
    let r = Interpreter::new(&EmptyActivation, "", 100_000).eval(&e);
    assert!(
        matches!(&r, Err(err) if err.message().contains("cost budget")),
        "{r:?}"
    );
}

#[test]
fn error_semantics_absorb_in_logic() {
    assert!(matches!(
        cel::eval_str("1/0 == 1 || true"),
        Ok(Value::Bool(true))
    ));
    assert!(matches!(
        cel::eval_str("false && 1/0 == 1"),
        Ok(Value::Bool(false))
    ));
    assert!(cel::eval_str("1/0 == 1 || false").is_err());
    assert!(matches!(
        cel::eval_str("[1, 0].exists(x, 1/x == 1)"),
        Ok(Value::Bool(true))
    ));
    assert!(cel::eval_str("9223372036854775807 + 1").is_err());
    assert!(matches!(
        cel::eval_str("1 < 1.5 && 2u > 1 && 1.0 == dyn(1)"),
        Ok(Value::Bool(true))
    ));
}

fn attrs(pairs: Vec<(&str, Value)>) -> MapAttributes {
    let mut m = MapValue::new();
    for (k, v) in pairs {
        m.insert(Key::String(Arc::from(k)), v);
    }
    MapAttributes::new(m)
}

const POLICY: &str = r#"
schema:
  principal:
    role: string
    department: string
    costCenters: { type: list(string), max_size: 8 }
    level: int
  resource:
    department: string
    costCenter: string
    level: int
rules:
  - id: r
    effect: allow
    actions: [a]
    condition: COND
"#;

/// Conditions exercising both the compiled fast path and the dynamic path.
const CONDS: &[&str] = &[
    r#"principal.role in ["admin","member"] && principal.department == resource.department && resource.costCenter in principal.costCenters"#,
    r#"principal.level >= resource.level || principal.role != "guest""#,
    r#"!(principal.department < resource.department) && size(principal.costCenters) <= principal.level"#,
    r#"principal.costCenters.exists(c, c.startsWith(resource.costCenter)) || has(resource.level)"#,
    r#"principal.level * 2 > resource.level ? principal.role == "admin" : resource.costCenter == "x""#,
    r#"principal.role.startsWith("a") || resource.department.endsWith(principal.department) && principal.department.contains("n")"#,
];

fn interp(cond: &str, p: &HashMap<String, Value>, r: &HashMap<String, Value>) -> Option<bool> {
    let mut vars = HashMap::new();
    let to_map = |m: &HashMap<String, Value>| {
        let mut mv = MapValue::new();
        for (k, v) in m {
            mv.insert(Key::String(Arc::from(k.as_str())), v.clone());
        }
        Value::Map(Arc::new(mv))
    };
    vars.insert("principal".to_owned(), to_map(p));
    vars.insert("resource".to_owned(), to_map(r));
    match Interpreter::new(&vars, "", 1_000_000).eval(&parse(cond).unwrap()) {
        Ok(Value::Bool(b)) => Some(b),
        _ => None,
    }
}

fn word() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just("admin"),
        Just("member"),
        Just("guest"),
        Just("eng"),
        Just("x"),
        Just("cc1"),
        Just("c")
    ]
    .prop_map(Value::string)
}

fn entity(names: &'static [(&'static str, u8)]) -> impl Strategy<Value = HashMap<String, Value>> {
    let per: Vec<_> = names
        .iter()
        .map(|(n, kind)| {
            let v: BoxedStrategy<Option<Value>> = match kind {
                0 => proptest::option::weighted(0.9, word()).boxed(),
                1 => proptest::option::weighted(0.9, (-3i64..5).prop_map(Value::Int)).boxed(),
                _ => proptest::option::weighted(
                    0.9,
                    proptest::collection::vec(word(), 0..10).prop_map(Value::list),
                )
                .boxed(),
            };
            v.prop_map(move |v| (n.to_string(), v))
        })
        .collect();
    per.prop_map(|kvs| {
        kvs.into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The compiled closures decide exactly as the reference interpreter evaluates, and an
    /// evaluation error (or a list over its max_size) is always a deny.
    #[test]
    fn compiled_policies_agree_with_the_interpreter(
        cond in 0..CONDS.len(),
        p in entity(&[("role", 0), ("department", 0), ("costCenters", 2), ("level", 1)]),
        r in entity(&[("department", 0), ("costCenter", 0), ("level", 1)]),
    ) {
        let src = CONDS[cond];
        let set = Arc::new(PolicySet::from_yaml("p.yaml", &POLICY.replace("COND", &format!("'{src}'"))).unwrap());
        let pa = attrs(p.iter().map(|(k, v)| (k.as_str(), v.clone())).collect());
        let ra = attrs(r.iter().map(|(k, v)| (k.as_str(), v.clone())).collect());
        let d = set.decide(&pa, "a", &ra, &NoAttributes);
        // A list over its max_size reads as an error, like a missing attribute.
        let mut bounded = p.clone();
        if matches!(p.get("costCenters"), Some(Value::List(l)) if l.len() > 8) {
            bounded.remove("costCenters");
        }
        let want = interp(src, &bounded, &r);
        match want {
            Some(b) => prop_assert_eq!(d.allowed(), b, "{:?}", d.reason()),
            None => {
                prop_assert!(!d.allowed());
                let is_error = matches!(d.reason(), Reason::EvaluationError(_));
                prop_assert!(is_error, "{:?}", d.reason());
            }
        }
    }

    /// Arbitrary text never panics the parser, checker or evaluator.
    #[test]
    fn arbitrary_text_never_panics(src in "[ -~\n\u{e9}\u{1F600}]{0,80}") {
        if let Ok(e) = parse(&src) {
            let mut c = Checker::new();
            c.declare("x", Type::Int);
            let _ = c.check(&e);
            let _ = Interpreter::new(&EmptyActivation, "", 10_000).eval(&e);
        }
    }
}
