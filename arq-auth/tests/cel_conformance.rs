//! Runs the vendored CEL conformance suite (tests/cel-spec, see its README) against arq's engine.
//!
//! Every test that needs no protobuf messages runs. The test fails if a case fails that is not in
//! `tests/cel_conformance_expected_failures.txt`, or if a listed case passes (so the list only
//! shrinks). Run with `CEL_CONFORMANCE_BLESS=1` to rewrite the list after fixing cases.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use arq_auth::cel::{self, Checker, Interpreter, Key, MapValue, ParseOptions, Type, Value};
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    file: String,
    sections: Vec<Section>,
}

#[derive(Deserialize)]
struct Section {
    name: String,
    tests: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    expr: String,
    disable_macros: bool,
    disable_check: bool,
    check_only: bool,
    container: String,
    type_env: Vec<serde_json::Value>,
    bindings: HashMap<String, JValue>,
    expect: Expect,
    needs_proto: bool,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(rename_all = "snake_case")]
enum JValue {
    Null(()),
    Bool(bool),
    Int(String),
    Uint(String),
    Double(JDouble),
    String(String),
    Bytes(String),
    List(Vec<JValue>),
    Map(Vec<(JValue, JValue)>),
    Type(String),
    Object {
        #[allow(dead_code)]
        type_url: String,
        #[allow(dead_code)]
        json: serde_json::Value,
    },
    Enum {
        #[serde(rename = "type")]
        #[allow(dead_code)]
        ty: String,
        #[allow(dead_code)]
        value: i32,
    },
}

#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
enum JDouble {
    Num(f64),
    Special(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Expect {
    Value(JValue),
    EvalError(#[allow(dead_code)] String),
    TypedResult {
        #[serde(rename = "type")]
        ty: Option<serde_json::Value>,
        value: Option<JValue>,
    },
}

fn to_value(j: &JValue) -> Option<Value> {
    Some(match j {
        JValue::Null(()) => Value::Null,
        JValue::Bool(b) => Value::Bool(*b),
        JValue::Int(s) => Value::Int(s.parse().ok()?),
        JValue::Uint(s) => Value::Uint(s.parse().ok()?),
        JValue::Double(JDouble::Num(d)) => Value::Double(*d),
        JValue::Double(JDouble::Special(s)) => Value::Double(match s.as_str() {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            _ => return None,
        }),
        JValue::String(s) => Value::string(s.as_str()),
        JValue::Bytes(b) => Value::Bytes(Arc::from(decode_b64(b)?)),
        JValue::List(l) => Value::list(l.iter().map(to_value).collect::<Option<Vec<_>>>()?),
        JValue::Map(m) => {
            let mut mv = MapValue::new();
            for (k, v) in m {
                mv.insert(Key::from_value(&to_value(k)?)?, to_value(v)?);
            }
            Value::Map(Arc::new(mv))
        }
        JValue::Type(t) => Value::Type(Arc::from(t.as_str())),
        JValue::Object { .. } | JValue::Enum { .. } => return None,
    })
}

fn decode_b64(s: &str) -> Option<Vec<u8>> {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0);
    for c in s.trim_end_matches('=').bytes() {
        buf = (buf << 6) | T.iter().position(|x| *x == c)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((buf >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// Strict equality for test expectations: types must match exactly, NaN equals NaN.
fn strict_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Double(x), Value::Double(y)) => (x.is_nan() && y.is_nan()) || x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Uint(x), Value::Uint(y)) => x == y,
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| strict_eq(p, q))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.iter().any(|(k2, v2)| k == k2 && strict_eq(v, v2)))
        }
        (Value::Int(_) | Value::Uint(_) | Value::Double(_), _)
        | (_, Value::Int(_) | Value::Uint(_) | Value::Double(_)) => false,
        _ => a.cel_eq(b),
    }
}

/// Converts a `cel.expr.Type` in proto3 JSON to our type.
fn json_type(t: &serde_json::Value) -> Option<Type> {
    let obj = t.as_object()?;
    let (k, v) = obj.iter().next()?;
    Some(match k.as_str() {
        "dyn" => Type::Dyn,
        "null" => Type::Null,
        "primitive" => match v.as_str()? {
            "BOOL" => Type::Bool,
            "INT64" => Type::Int,
            "UINT64" => Type::Uint,
            "DOUBLE" => Type::Double,
            "STRING" => Type::String,
            "BYTES" => Type::Bytes,
            _ => return None,
        },
        "well_known" => match v.as_str()? {
            "TIMESTAMP" => Type::Timestamp,
            "DURATION" => Type::Duration,
            "ANY" => Type::Dyn,
            _ => return None,
        },
        "list_type" => Type::list(json_type(v.get("elem_type")?)?),
        "map_type" => Type::map(
            json_type(v.get("key_type")?)?,
            json_type(v.get("value_type")?)?,
        ),
        "type" => Type::Type(Box::new(if v.as_object().is_some_and(|o| o.is_empty()) {
            Type::Dyn
        } else {
            json_type(v)?
        })),
        "type_param" => Type::Param(Arc::from(v.as_str()?)),
        "abstract_type" => {
            let name = v.get("name")?.as_str()?;
            let params: Vec<Type> = v
                .get("parameter_types")
                .and_then(|p| p.as_array())
                .map(|a| a.iter().filter_map(json_type).collect())
                .unwrap_or_default();
            if name == "optional_type" && params.len() == 1 {
                Type::Optional(Box::new(params[0].clone()))
            } else {
                Type::Abstract(Arc::from(name), params)
            }
        }
        // wrapper, message_type, error, function: not supported without protobuf messages.
        _ => return None,
    })
}

fn run_case(c: &Case) -> Result<(), String> {
    let expr = cel::parse(
        &c.expr,
        ParseOptions {
            macros: !c.disable_macros,
        },
    )
    .map_err(|e| format!("parse: {e}"))?;
    let mut bindings: HashMap<String, Value> = HashMap::new();
    for (k, v) in &c.bindings {
        bindings.insert(k.clone(), to_value(v).ok_or("unsupported binding")?);
    }
    // Type check unless disabled.
    let mut checked_type = None;
    if !c.disable_check {
        let mut checker = Checker::new();
        checker.set_container(&c.container);
        for d in &c.type_env {
            let name = d
                .get("name")
                .and_then(|n| n.as_str())
                .ok_or("decl without name")?;
            if let Some(func) = d.get("function") {
                for o in func
                    .get("overloads")
                    .and_then(|o| o.as_array())
                    .cloned()
                    .unwrap_or_default()
                {
                    let params: Option<Vec<Type>> = o
                        .get("params")
                        .and_then(|p| p.as_array())
                        .map(|a| a.iter().map(json_type).collect())
                        .unwrap_or(Some(vec![]));
                    let result = o.get("result_type").and_then(json_type);
                    let member = o
                        .get("is_instance_function")
                        .and_then(|m| m.as_bool())
                        .unwrap_or(false);
                    let (Some(params), Some(result)) = (params, result) else {
                        return Err(format!("unsupported function decl {name}"));
                    };
                    checker.declare_function(name, member, params, result);
                }
            }
            if let Some(ident) = d.get("ident") {
                let t = ident
                    .get("type")
                    .and_then(json_type)
                    .ok_or_else(|| format!("unsupported decl type for {name}"))?;
                checker.declare(name, t);
            }
        }
        let t = checker.check(&expr).map_err(|e| format!("check: {e}"))?;
        checked_type = Some(t);
    }
    if let Expect::TypedResult { ty: Some(ty), .. } = &c.expect {
        let want = json_type(ty).ok_or("unsupported expected type")?;
        let got = checked_type.ok_or("check disabled")?;
        if got != want {
            return Err(format!("deduced type {got}, want {want}"));
        }
    }
    if c.check_only {
        return Ok(());
    }
    let it = Interpreter::new(&bindings, &c.container, cel::DEFAULT_BUDGET);
    let got = it.eval(&expr);
    match (&c.expect, got) {
        (Expect::Value(want), Ok(v))
        | (
            Expect::TypedResult {
                value: Some(want), ..
            },
            Ok(v),
        ) => {
            let want = to_value(want).ok_or("unsupported expected value")?;
            if strict_eq(&v, &want) {
                Ok(())
            } else {
                Err(format!("got {v}, want {want}"))
            }
        }
        (Expect::TypedResult { value: None, .. }, _) | (Expect::EvalError(_), Err(_)) => Ok(()),
        (Expect::EvalError(m), Ok(v)) => Err(format!("got {v}, want error {m}")),
        (_, Err(e)) => Err(format!("eval error: {e}")),
    }
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests")
}

#[test]
fn conformance() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir().join("cel-spec/tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut total = 0usize;
    let mut failures: Vec<(String, String)> = Vec::new();
    for path in files {
        let f: File = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for s in &f.sections {
            for (i, c) in s.tests.iter().enumerate() {
                if c.needs_proto {
                    continue;
                }
                total += 1;
                let key = format!("{}/{}/{}#{i}", f.file, s.name, c.name);
                let r = std::thread::Builder::new()
                    .stack_size(8 << 20)
                    .spawn({
                        let c = Case {
                            name: c.name.clone(),
                            expr: c.expr.clone(),
                            disable_macros: c.disable_macros,
                            disable_check: c.disable_check,
                            check_only: c.check_only,
                            container: c.container.clone(),
                            type_env: c.type_env.clone(),
                            bindings: c.bindings.clone(),
                            expect: match &c.expect {
                                Expect::Value(v) => Expect::Value(v.clone()),
                                Expect::EvalError(m) => Expect::EvalError(m.clone()),
                                Expect::TypedResult { ty, value } => Expect::TypedResult {
                                    ty: ty.clone(),
                                    value: value.clone(),
                                },
                            },
                            needs_proto: false,
                        };
                        move || run_case(&c)
                    })
                    .unwrap()
                    .join();
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failures.push((key, format!("{} | {}", c.expr, e))),
                    Err(_) => failures.push((key, format!("{} | PANIC", c.expr))),
                }
            }
        }
    }
    assert_eq!(
        total, 1740,
        "the suite's README counts 1,740 cases without protobuf messages"
    );
    let passed = total - failures.len();
    let rate = passed as f64 * 100.0 / total as f64;
    println!("conformance: {passed}/{total} passed ({rate:.2} %)");
    let list_path = dir().join("cel_conformance_expected_failures.txt");
    if std::env::var_os("CEL_CONFORMANCE_BLESS").is_some() {
        let mut out = String::from(
            "# CEL conformance cases expected to fail (file/section/test#index-in-section).\n\
             # The conformance test fails if a listed case passes: delete its line.\n",
        );
        for (k, why) in &failures {
            let why = why.replace('\n', " ");
            writeln!(out, "{k}\t{}", why.chars().take(160).collect::<String>()).unwrap();
        }
        std::fs::write(&list_path, out).unwrap();
        return;
    }
    let expected: std::collections::HashSet<String> = std::fs::read_to_string(&list_path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split('\t').next().unwrap_or("").to_owned())
        .collect();
    let failed: std::collections::HashSet<String> =
        failures.iter().map(|(k, _)| k.clone()).collect();
    let unexpected: Vec<&(String, String)> = failures
        .iter()
        .filter(|(k, _)| !expected.contains(k))
        .collect();
    let fixed: Vec<&String> = expected.iter().filter(|k| !failed.contains(*k)).collect();
    for (k, e) in &unexpected {
        println!("UNEXPECTED FAILURE {k}: {e}");
    }
    for k in &fixed {
        println!("NOW PASSES (remove from list) {k}");
    }
    assert!(
        unexpected.is_empty() && fixed.is_empty(),
        "{} unexpected failures, {} listed cases now pass",
        unexpected.len(),
        fixed.len()
    );
    assert!(rate >= 97.0, "pass rate {rate:.2} % is below 97 %");
}
