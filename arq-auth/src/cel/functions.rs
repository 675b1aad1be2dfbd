//! CEL's standard functions and operators, plus the string, math, encoder and optional
//! extensions, over dynamic [`Value`]s.
//!
//! `call` is a dispatch table with one match arm per overload; several overloads share a body
//! on purpose, so `match_same_arms` is allowed here.
#![allow(clippy::match_same_arms)]

use std::cmp::Ordering;
use std::sync::Arc;

use chrono::{DateTime, Datelike, FixedOffset, TimeZone, Timelike, Utc};

use super::interp::Interpreter;
use super::value::{
    EvalError, EvalResult, Key, MAX_DUR_SECS, MAX_TS_SECS, MIN_TS_SECS, MapValue, NANOS, TWO_63,
    TWO_64, Value,
};

const NAMESPACED: &[&str] = &[
    "math.greatest",
    "math.least",
    "math.ceil",
    "math.floor",
    "math.round",
    "math.trunc",
    "math.abs",
    "math.sign",
    "math.isInf",
    "math.isNaN",
    "math.isFinite",
    "math.bitAnd",
    "math.bitOr",
    "math.bitXor",
    "math.bitNot",
    "math.bitShiftLeft",
    "math.bitShiftRight",
    "math.sqrt",
    "strings.quote",
    "base64.encode",
    "base64.decode",
    "optional.of",
    "optional.none",
    "optional.ofNonZeroValue",
    "ip.isCanonical",
];

/// True for the dotted global functions (`math.greatest`, `optional.of`, …).
pub(crate) fn is_global(name: &str) -> bool {
    NAMESPACED.contains(&name)
}

fn err(msg: impl Into<std::borrow::Cow<'static, str>>) -> EvalError {
    EvalError::new(msg)
}

fn b(v: bool) -> EvalResult {
    Ok(Value::Bool(v))
}

/// Calls function `name` with evaluated arguments (`member`: the first value is the receiver).
#[allow(clippy::too_many_lines)]
pub(crate) fn call(it: &Interpreter<'_>, name: &str, member: bool, a: &[Value]) -> EvalResult {
    use Value as V;
    match (name, a) {
        // Equality and ordering.
        ("_==_", [x, y]) => b(x.cel_eq(y)),
        ("_!=_", [x, y]) => b(!x.cel_eq(y)),
        ("_<_" | "_<=_" | "_>_" | "_>=_", [x, y]) => {
            let o = compare(x, y)?;
            b(match (name, o) {
                (_, None) => false,
                ("_<_", Some(o)) => o == Ordering::Less,
                ("_<=_", Some(o)) => o != Ordering::Greater,
                ("_>_", Some(o)) => o == Ordering::Greater,
                (_, Some(o)) => o != Ordering::Less,
            })
        }
        ("!_", [V::Bool(x)]) => b(!x),
        ("-_", [V::Int(x)]) => x.checked_neg().map(V::Int).ok_or_else(EvalError::overflow),
        ("-_", [V::Double(x)]) => Ok(V::Double(-x)),
        ("-_", [V::Duration(x)]) => dur(-x),
        ("_+_", [x, y]) => add(it, x, y),
        ("_-_", [x, y]) => sub(x, y),
        ("_*_", [V::Int(x), V::Int(y)]) => x
            .checked_mul(*y)
            .map(V::Int)
            .ok_or_else(EvalError::overflow),
        ("_*_", [V::Uint(x), V::Uint(y)]) => x
            .checked_mul(*y)
            .map(V::Uint)
            .ok_or_else(EvalError::overflow),
        ("_*_", [V::Double(x), V::Double(y)]) => Ok(V::Double(x * y)),
        ("_/_", [V::Int(_), V::Int(0)]) | ("_/_", [V::Uint(_), V::Uint(0)]) => {
            Err(err("division by zero"))
        }
        ("_/_", [V::Int(x), V::Int(y)]) => x
            .checked_div(*y)
            .map(V::Int)
            .ok_or_else(EvalError::overflow),
        ("_/_", [V::Uint(x), V::Uint(y)]) => Ok(V::Uint(x / y)),
        ("_/_", [V::Double(x), V::Double(y)]) => Ok(V::Double(x / y)),
        ("_%_", [V::Int(_), V::Int(0)]) | ("_%_", [V::Uint(_), V::Uint(0)]) => {
            Err(err("modulus by zero"))
        }
        ("_%_", [V::Int(x), V::Int(y)]) => x
            .checked_rem(*y)
            .map(V::Int)
            .ok_or_else(EvalError::overflow),
        ("_%_", [V::Uint(x), V::Uint(y)]) => Ok(V::Uint(x % y)),
        ("@in", [x, V::List(l)]) => {
            it.charge(l.len() as u64 / 8)?;
            b(l.iter().any(|e| e.cel_eq(x)))
        }
        ("@in", [x, V::Map(m)]) => b(m.get(x).is_some()),
        ("_[_]", [V::List(l), i]) => {
            let idx = index_of(i)?;
            usize::try_from(idx)
                .ok()
                .and_then(|i| l.get(i))
                .cloned()
                .ok_or_else(|| err(format!("index out of bounds: {idx}")))
        }
        ("_[_]", [V::Map(m), k]) => {
            if Key::from_value(k).is_none() && !matches!(k, V::Double(_)) {
                return Err(err(format!("unsupported key type: {}", k.type_name())));
            }
            m.get(k)
                .cloned()
                .ok_or_else(|| err(format!("no such key: {k}")))
        }
        ("_[_]", [V::Optional(o), k]) => match o {
            None => Ok(V::Optional(None)),
            Some(inner) => opt_index(inner, k),
        },
        ("_[?_]", [V::Optional(None), _]) => Ok(V::Optional(None)),
        ("_[?_]", [V::Optional(Some(inner)), k]) => opt_index(inner, k),
        ("_[?_]", [x, k]) => opt_index(x, k),
        // Internal helpers of the two-variable map macros.
        ("@map_insert", [V::Map(m), k, v]) => {
            let mut m = (**m).clone();
            let key = Key::from_value(k).ok_or_else(|| err("unsupported key type"))?;
            if !m.insert(key, v.clone()) {
                return Err(err("insert failed: key already exists"));
            }
            Ok(V::Map(Arc::new(m)))
        }
        ("@map_insert_entry", [V::Map(m), V::Map(e)]) => {
            let mut m = (**m).clone();
            for (k, v) in e.iter() {
                if !m.insert(k.clone(), v.clone()) {
                    return Err(err(format!(
                        "insert failed: key {} already exists",
                        k.to_value()
                    )));
                }
            }
            Ok(V::Map(Arc::new(m)))
        }
        // Size.
        ("size", [x]) => size(x),
        // String functions.
        ("contains", [V::String(s), V::String(t)]) if member => b(s.contains(&**t)),
        ("startsWith", [V::String(s), V::String(t)]) if member => b(s.starts_with(&**t)),
        ("endsWith", [V::String(s), V::String(t)]) if member => b(s.ends_with(&**t)),
        ("matches", [V::String(s), V::String(re)]) => {
            it.charge((s.len() + re.len()) as u64 / 4)?;
            let re = regex::RegexBuilder::new(re)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| err(format!("invalid regular expression: {e}")))?;
            b(re.is_match(s))
        }
        // Conversions.
        ("int", [x]) => to_int(x),
        ("uint", [x]) => to_uint(x),
        ("double", [x]) => to_double(x),
        ("string", [x]) => to_string(x),
        ("bytes", [V::Bytes(x)]) => Ok(V::Bytes(x.clone())),
        ("bytes", [V::String(s)]) => Ok(V::Bytes(Arc::from(s.as_bytes()))),
        ("bool", [V::Bool(x)]) => b(*x),
        ("bool", [V::String(s)]) => match &**s {
            "1" | "t" | "true" | "TRUE" | "True" => b(true),
            "0" | "f" | "false" | "FALSE" | "False" => b(false),
            _ => Err(err(format!(
                "type conversion error: cannot convert {s:?} to bool"
            ))),
        },
        ("dyn", [x]) => Ok(x.clone()),
        ("type", [x]) => Ok(V::Type(Arc::from(x.type_name()))),
        ("timestamp", [V::Timestamp(t)]) => Ok(V::Timestamp(*t)),
        ("timestamp", [V::Int(s)]) => ts(i128::from(*s) * NANOS),
        ("timestamp", [V::String(s)]) => parse_timestamp(s),
        ("duration", [V::Duration(d)]) => Ok(V::Duration(*d)),
        ("duration", [V::String(s)]) => parse_duration(s),
        // Timestamp and duration accessors.
        (
            "getFullYear" | "getMonth" | "getDayOfYear" | "getDayOfMonth" | "getDate"
            | "getDayOfWeek" | "getHours" | "getMinutes" | "getSeconds" | "getMilliseconds",
            [V::Timestamp(t), rest @ ..],
        ) if member && rest.len() <= 1 => {
            let tz = match rest {
                [V::String(z)] => Some(&**z),
                [] => None,
                _ => return Err(EvalError::no_overload()),
            };
            ts_part(name, *t, tz)
        }
        ("getHours" | "getMinutes" | "getSeconds" | "getMilliseconds", [V::Duration(d)])
            if member =>
        {
            let v = match name {
                "getHours" => d / (3600 * NANOS),
                "getMinutes" => d / (60 * NANOS),
                "getSeconds" => d / NANOS,
                _ => (d % NANOS) / 1_000_000,
            };
            Ok(V::Int(i64::try_from(v).map_err(|_| EvalError::overflow())?))
        }
        // Strings extension.
        ("charAt", [V::String(s), V::Int(i)]) if member => {
            let n = s.chars().count();
            let i = usize::try_from(*i).map_err(|_| err("index out of range"))?;
            if i > n {
                return Err(err(format!("index out of range: {i}")));
            }
            Ok(V::string(
                s.chars().nth(i).map(String::from).unwrap_or_default(),
            ))
        }
        ("indexOf" | "lastIndexOf", [V::String(s), V::String(t), rest @ ..])
            if member && rest.len() <= 1 =>
        {
            index_fn(name == "lastIndexOf", s, t, rest)
        }
        ("lowerAscii", [V::String(s)]) if member => Ok(V::string(s.to_ascii_lowercase())),
        ("upperAscii", [V::String(s)]) if member => Ok(V::string(s.to_ascii_uppercase())),
        ("replace", [V::String(s), V::String(from), V::String(to), rest @ ..])
            if member && rest.len() <= 1 =>
        {
            let n = match rest {
                [V::Int(n)] => *n,
                [] => -1,
                _ => return Err(EvalError::no_overload()),
            };
            it.charge((s.len() as u64).saturating_mul(to.len() as u64 + 1) / 16)?;
            let out = if n < 0 {
                s.replace(&**from, to)
            } else {
                s.replacen(&**from, to, usize::try_from(n).unwrap_or(usize::MAX))
            };
            Ok(V::string(out))
        }
        ("split", [V::String(s), V::String(sep), rest @ ..]) if member && rest.len() <= 1 => {
            let n = match rest {
                [V::Int(n)] => *n,
                [] => -1,
                _ => return Err(EvalError::no_overload()),
            };
            it.charge(s.len() as u64 / 4)?;
            let parts: Vec<Value> = if n == 0 {
                vec![]
            } else if sep.is_empty() {
                let chars: Vec<String> = s.chars().map(String::from).collect();
                if n > 0 && chars.len() > usize::try_from(n).unwrap_or(usize::MAX) {
                    let k = usize::try_from(n - 1).unwrap_or(0);
                    let mut v: Vec<Value> =
                        chars[..k].iter().map(|c| V::string(c.as_str())).collect();
                    v.push(V::string(chars[k..].concat()));
                    v
                } else {
                    chars.into_iter().map(V::string).collect()
                }
            } else if n < 0 {
                s.split(&**sep).map(V::string).collect()
            } else {
                s.splitn(usize::try_from(n).unwrap_or(usize::MAX), &**sep)
                    .map(V::string)
                    .collect()
            };
            Ok(V::list(parts))
        }
        ("substring", [V::String(s), V::Int(start), rest @ ..]) if member && rest.len() <= 1 => {
            let chars: Vec<char> = s.chars().collect();
            let end = match rest {
                [V::Int(e)] => *e,
                [] => i64::try_from(chars.len()).unwrap_or(i64::MAX),
                _ => return Err(EvalError::no_overload()),
            };
            let (Ok(st), Ok(en)) = (usize::try_from(*start), usize::try_from(end)) else {
                return Err(err("index out of range"));
            };
            if st > chars.len() || en > chars.len() || st > en {
                return Err(err(format!("substring index out of range: {start}, {end}")));
            }
            Ok(V::string(chars[st..en].iter().collect::<String>()))
        }
        ("trim", [V::String(s)]) if member => Ok(V::string(s.trim())),
        ("reverse", [V::String(s)]) if member => Ok(V::string(s.chars().rev().collect::<String>())),
        ("join", [V::List(l), rest @ ..]) if member && rest.len() <= 1 => {
            let sep = match rest {
                [V::String(s)] => &**s,
                [] => "",
                _ => return Err(EvalError::no_overload()),
            };
            let mut out = String::new();
            for (i, v) in l.iter().enumerate() {
                let V::String(s) = v else {
                    return Err(EvalError::no_overload());
                };
                if i > 0 {
                    out.push_str(sep);
                }
                out.push_str(s);
            }
            Ok(V::string(out))
        }
        ("strings.quote", [V::String(s)]) => Ok(V::string(quote(s))),
        ("format", [V::String(f), V::List(args)]) if member => format_string(f, args),
        // Lists extension (a few).
        // Encoders.
        ("base64.encode", [V::Bytes(x)]) => Ok(V::string(base64_encode(x))),
        ("base64.decode", [V::String(s)]) => base64_decode(s)
            .map(|v| V::Bytes(Arc::from(v)))
            .ok_or_else(|| err("invalid base64")),
        // Math extension.
        ("math.greatest" | "math.least", args) if !args.is_empty() => {
            let items: Vec<Value> = match args {
                [V::List(l)] => l.to_vec(),
                _ => args.to_vec(),
            };
            let mut best: Option<Value> = None;
            for v in items {
                if !matches!(v, V::Int(_) | V::Uint(_) | V::Double(_)) {
                    return Err(EvalError::no_overload());
                }
                best = Some(match best {
                    None => v,
                    Some(cur) => {
                        let o = super::value::num_cmp(&v, &cur);
                        let better = if name == "math.greatest" {
                            o == Some(Ordering::Greater)
                        } else {
                            o == Some(Ordering::Less)
                        };
                        if better { v } else { cur }
                    }
                });
            }
            best.ok_or_else(|| err("math.greatest/least needs at least one argument"))
        }
        ("math.ceil", [V::Double(x)]) => Ok(V::Double(x.ceil())),
        ("math.floor", [V::Double(x)]) => Ok(V::Double(x.floor())),
        ("math.round", [V::Double(x)]) => Ok(V::Double(x.round())),
        ("math.trunc", [V::Double(x)]) => Ok(V::Double(x.trunc())),
        ("math.sqrt", [x]) => Ok(V::Double(as_f64(x)?.sqrt())),
        ("math.abs", [V::Int(x)]) => x.checked_abs().map(V::Int).ok_or_else(EvalError::overflow),
        ("math.abs", [V::Uint(x)]) => Ok(V::Uint(*x)),
        ("math.abs", [V::Double(x)]) => Ok(V::Double(x.abs())),
        ("math.sign", [V::Int(x)]) => Ok(V::Int(x.signum())),
        ("math.sign", [V::Uint(x)]) => Ok(V::Uint(u64::from(*x > 0))),
        ("math.sign", [V::Double(x)]) => Ok(V::Double(if x.is_nan() || *x == 0.0 {
            *x
        } else {
            x.signum()
        })),
        ("math.isInf", [V::Double(x)]) => b(x.is_infinite()),
        ("math.isNaN", [V::Double(x)]) => b(x.is_nan()),
        ("math.isFinite", [V::Double(x)]) => b(x.is_finite()),
        ("math.bitAnd", [V::Int(x), V::Int(y)]) => Ok(V::Int(x & y)),
        ("math.bitAnd", [V::Uint(x), V::Uint(y)]) => Ok(V::Uint(x & y)),
        ("math.bitOr", [V::Int(x), V::Int(y)]) => Ok(V::Int(x | y)),
        ("math.bitOr", [V::Uint(x), V::Uint(y)]) => Ok(V::Uint(x | y)),
        ("math.bitXor", [V::Int(x), V::Int(y)]) => Ok(V::Int(x ^ y)),
        ("math.bitXor", [V::Uint(x), V::Uint(y)]) => Ok(V::Uint(x ^ y)),
        ("math.bitNot", [V::Int(x)]) => Ok(V::Int(!x)),
        ("math.bitNot", [V::Uint(x)]) => Ok(V::Uint(!x)),
        ("math.bitShiftLeft" | "math.bitShiftRight", [x, V::Int(n)]) => {
            if *n < 0 {
                return Err(err("math.bitShift: negative shift"));
            }
            let left = name == "math.bitShiftLeft";
            let n = u32::try_from(*n).unwrap_or(u32::MAX);
            match x {
                V::Int(v) => {
                    let u = *v as u64;
                    let r = if n >= 64 {
                        0
                    } else if left {
                        u << n
                    } else {
                        u >> n
                    };
                    Ok(V::Int(r as i64))
                }
                V::Uint(v) => Ok(V::Uint(if n >= 64 {
                    0
                } else if left {
                    v << n
                } else {
                    v >> n
                })),
                _ => Err(EvalError::no_overload()),
            }
        }
        // Optionals.
        ("optional.of", [x]) => Ok(V::Optional(Some(Arc::new(x.clone())))),
        ("optional.none", []) => Ok(V::Optional(None)),
        ("optional.ofNonZeroValue", [x]) => Ok(V::Optional(if is_zero(x) {
            None
        } else {
            Some(Arc::new(x.clone()))
        })),
        // Network extension.
        ("ip", [V::String(s)]) if !member => parse_ip(s).map(V::Ip),
        ("isIP", [V::String(s)]) => b(parse_ip(s).is_ok()),
        ("ip.isCanonical", [V::String(s)]) => {
            let ip = parse_ip(s)?;
            b(ip.to_string() == **s)
        }
        ("family", [V::Ip(a)]) if member => Ok(V::Int(if a.is_ipv4() { 4 } else { 6 })),
        ("isUnspecified", [V::Ip(a)]) if member => b(a.is_unspecified()),
        ("isLoopback", [V::Ip(a)]) if member => b(a.is_loopback()),
        ("isGlobalUnicast", [V::Ip(a)]) if member => b(is_global_unicast(a)),
        ("isLinkLocalMulticast", [V::Ip(a)]) if member => b(match a {
            std::net::IpAddr::V4(v) => v.octets()[..3] == [224, 0, 0],
            std::net::IpAddr::V6(v) => v.octets()[0] == 0xff && v.octets()[1] & 0x0f == 0x02,
        }),
        ("isLinkLocalUnicast", [V::Ip(a)]) if member => b(is_link_local_unicast(a)),
        ("cidr", [V::String(s)]) => parse_cidr(s),
        ("containsIP", [V::Cidr(net, n), other]) if member => {
            let ip = match other {
                V::Ip(a) => *a,
                V::String(s) => parse_ip(s)?,
                _ => return Err(EvalError::no_overload()),
            };
            b(prefix_contains(net, *n, &ip, None))
        }
        ("containsCIDR", [V::Cidr(net, n), other]) if member => {
            let (ip, m) = match other {
                V::Cidr(a, m) => (*a, *m),
                V::String(s) => match parse_cidr(s)? {
                    V::Cidr(a, m) => (a, m),
                    _ => return Err(EvalError::no_overload()),
                },
                _ => return Err(EvalError::no_overload()),
            };
            b(prefix_contains(net, *n, &ip, Some(m)))
        }
        ("ip", [V::Cidr(a, _)]) if member => Ok(V::Ip(*a)),
        ("masked", [V::Cidr(a, n)]) if member => Ok(V::Cidr(mask(a, *n), *n)),
        ("prefixLength", [V::Cidr(_, n)]) if member => Ok(V::Int(i64::from(*n))),
        ("hasValue", [V::Optional(o)]) if member => b(o.is_some()),
        ("value", [V::Optional(o)]) if member => o
            .as_ref()
            .map(|v| (**v).clone())
            .ok_or_else(|| err("optional.none() dereference")),
        _ => Err(EvalError::new(format!(
            "no matching overload for '{name}' applied to ({})",
            a.iter()
                .map(Value::type_name)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn compare(x: &Value, y: &Value) -> Result<Option<Ordering>, EvalError> {
    use Value as V;
    let comparable = matches!(
        (x, y),
        (V::Bool(_), V::Bool(_))
            | (V::String(_), V::String(_))
            | (V::Bytes(_), V::Bytes(_))
            | (V::Timestamp(_), V::Timestamp(_))
            | (V::Duration(_), V::Duration(_))
            | (
                V::Int(_) | V::Uint(_) | V::Double(_),
                V::Int(_) | V::Uint(_) | V::Double(_)
            )
    );
    if !comparable {
        return Err(EvalError::no_overload());
    }
    Ok(x.cel_cmp(y))
}

fn add(it: &Interpreter<'_>, x: &Value, y: &Value) -> EvalResult {
    use Value as V;
    match (x, y) {
        (V::Int(a), V::Int(b)) => a
            .checked_add(*b)
            .map(V::Int)
            .ok_or_else(EvalError::overflow),
        (V::Uint(a), V::Uint(b)) => a
            .checked_add(*b)
            .map(V::Uint)
            .ok_or_else(EvalError::overflow),
        (V::Double(a), V::Double(b)) => Ok(V::Double(a + b)),
        (V::String(a), V::String(b)) => {
            it.charge((a.len() + b.len()) as u64 / 16)?;
            let mut s = String::with_capacity(a.len() + b.len());
            s.push_str(a);
            s.push_str(b);
            Ok(V::string(s))
        }
        (V::Bytes(a), V::Bytes(b)) => {
            it.charge((a.len() + b.len()) as u64 / 16)?;
            Ok(V::Bytes(a.iter().chain(b.iter()).copied().collect()))
        }
        (V::List(a), V::List(b)) => {
            it.charge((a.len() + b.len()) as u64 / 8)?;
            if a.is_empty() {
                return Ok(V::List(b.clone()));
            }
            let mut v = Vec::with_capacity(a.len() + b.len());
            v.extend(a.iter().cloned());
            v.extend(b.iter().cloned());
            Ok(V::list(v))
        }
        (V::Duration(a), V::Duration(b)) => dur(a + b),
        (V::Timestamp(a), V::Duration(b)) | (V::Duration(b), V::Timestamp(a)) => ts(a + b),
        _ => Err(EvalError::no_overload()),
    }
}

fn sub(x: &Value, y: &Value) -> EvalResult {
    use Value as V;
    match (x, y) {
        (V::Int(a), V::Int(b)) => a
            .checked_sub(*b)
            .map(V::Int)
            .ok_or_else(EvalError::overflow),
        (V::Uint(a), V::Uint(b)) => a
            .checked_sub(*b)
            .map(V::Uint)
            .ok_or_else(EvalError::overflow),
        (V::Double(a), V::Double(b)) => Ok(V::Double(a - b)),
        (V::Duration(a), V::Duration(b)) => dur(a - b),
        (V::Timestamp(a), V::Duration(b)) => ts(a - b),
        (V::Timestamp(a), V::Timestamp(b)) => dur(a - b),
        _ => Err(EvalError::no_overload()),
    }
}

fn ts(n: i128) -> EvalResult {
    let secs = n.div_euclid(NANOS);
    if secs < i128::from(MIN_TS_SECS) || secs > i128::from(MAX_TS_SECS) {
        return Err(err("timestamp out of range"));
    }
    Ok(Value::Timestamp(n))
}

fn dur(n: i128) -> EvalResult {
    // Durations are bounded by a signed 64-bit count of nanoseconds (about ±292 years), as in
    // cel-go, and by CEL's ±10,000 years.
    if n.abs() > i128::from(MAX_DUR_SECS) * NANOS || i64::try_from(n).is_err() {
        return Err(err("duration out of range"));
    }
    Ok(Value::Duration(n))
}

fn index_of(i: &Value) -> Result<i64, EvalError> {
    match i {
        Value::Int(i) => Ok(*i),
        Value::Uint(u) => i64::try_from(*u).map_err(|_| err("index out of range")),
        Value::Double(d) if d.fract() == 0.0 && d.is_finite() && d.abs() < 9.0e18 =>
        {
            #[allow(clippy::cast_possible_truncation)]
            Ok(*d as i64)
        }
        Value::Double(_) => Err(err("unsupported index value: not an integer")),
        _ => Err(EvalError::no_overload()),
    }
}

fn opt_index(x: &Value, k: &Value) -> EvalResult {
    match x {
        Value::List(l) => {
            let idx = index_of(k)?;
            Ok(Value::Optional(
                usize::try_from(idx)
                    .ok()
                    .and_then(|i| l.get(i))
                    .cloned()
                    .map(Arc::new),
            ))
        }
        Value::Map(m) => Ok(Value::Optional(m.get(k).cloned().map(Arc::new))),
        _ => Err(EvalError::no_overload()),
    }
}

fn size(x: &Value) -> EvalResult {
    let n = match x {
        Value::String(s) => s.chars().count(),
        Value::Bytes(b) => b.len(),
        Value::List(l) => l.len(),
        Value::Map(m) => m.len(),
        _ => return Err(EvalError::no_overload()),
    };
    Ok(Value::Int(i64::try_from(n).unwrap_or(i64::MAX)))
}

fn as_f64(x: &Value) -> Result<f64, EvalError> {
    #[allow(clippy::cast_precision_loss)]
    match x {
        Value::Int(i) => Ok(*i as f64),
        Value::Uint(u) => Ok(*u as f64),
        Value::Double(d) => Ok(*d),
        _ => Err(EvalError::no_overload()),
    }
}

fn is_zero(x: &Value) -> bool {
    match x {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Int(i) => *i == 0,
        Value::Uint(u) => *u == 0,
        Value::Double(d) => *d == 0.0,
        Value::String(s) => s.is_empty(),
        Value::Bytes(b) => b.is_empty(),
        Value::List(l) => l.is_empty(),
        Value::Map(m) => m.is_empty(),
        Value::Timestamp(t) | Value::Duration(t) => *t == 0,
        Value::Type(_) | Value::Ip(_) | Value::Cidr(..) => false,
        Value::Optional(o) => o.is_none(),
    }
}

#[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
fn to_int(x: &Value) -> EvalResult {
    use Value as V;
    match x {
        V::Int(i) => Ok(V::Int(*i)),
        V::Uint(u) => i64::try_from(*u)
            .map(V::Int)
            .map_err(|_| err("range error converting uint to int")),
        V::Double(d) => {
            if !d.is_finite() || *d <= -TWO_63 || *d >= TWO_63 {
                return Err(err("range error converting double to int"));
            }
            Ok(V::Int(*d as i64))
        }
        V::String(s) => s
            .parse::<i64>()
            .map(V::Int)
            .map_err(|_| err(format!("cannot convert {s:?} to int"))),
        V::Timestamp(t) => Ok(V::Int(
            i64::try_from(t.div_euclid(NANOS)).map_err(|_| EvalError::overflow())?,
        )),
        V::Duration(d) => Ok(V::Int(
            i64::try_from(d / NANOS).map_err(|_| EvalError::overflow())?,
        )),
        _ => Err(EvalError::no_overload()),
    }
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn to_uint(x: &Value) -> EvalResult {
    use Value as V;
    match x {
        V::Uint(u) => Ok(V::Uint(*u)),
        V::Int(i) => u64::try_from(*i)
            .map(V::Uint)
            .map_err(|_| err("range error converting int to uint")),
        V::Double(d) => {
            if !d.is_finite() || *d < 0.0 || *d >= TWO_64 {
                return Err(err("range error converting double to uint"));
            }
            Ok(V::Uint(*d as u64))
        }
        V::String(s) => s
            .parse::<u64>()
            .map(V::Uint)
            .map_err(|_| err(format!("cannot convert {s:?} to uint"))),
        _ => Err(EvalError::no_overload()),
    }
}

fn to_double(x: &Value) -> EvalResult {
    use Value as V;
    match x {
        V::Int(_) | V::Uint(_) | V::Double(_) => as_f64(x).map(V::Double),
        V::String(s) => {
            let t = s.trim();
            let v = match t {
                "NaN" => f64::NAN,
                "Infinity" | "+Infinity" | "inf" | "+inf" => f64::INFINITY,
                "-Infinity" | "-inf" => f64::NEG_INFINITY,
                _ => t
                    .parse::<f64>()
                    .map_err(|_| err(format!("cannot convert {s:?} to double")))?,
            };
            Ok(V::Double(v))
        }
        _ => Err(EvalError::no_overload()),
    }
}

pub(crate) fn format_double(d: f64) -> String {
    if d.is_nan() {
        return "NaN".to_owned();
    }
    if d.is_infinite() {
        return if d > 0.0 {
            "+Inf".to_owned()
        } else {
            "-Inf".to_owned()
        };
    }
    let s = format!("{d}");
    let abs = d.abs();
    if abs != 0.0 && !(1e-4..1e21).contains(&abs) {
        // Go's %g style with an exponent.
        let e = format!("{d:e}");
        if let Some((m, ex)) = e.split_once('e') {
            let exp: i32 = ex.parse().unwrap_or(0);
            let sign = if exp < 0 { '-' } else { '+' };
            return format!("{m}e{sign}{:02}", exp.abs());
        }
    }
    s
}

fn to_string(x: &Value) -> EvalResult {
    use Value as V;
    Ok(V::string(match x {
        V::String(s) => return Ok(V::String(s.clone())),
        V::Int(i) => i.to_string(),
        V::Uint(u) => u.to_string(),
        V::Double(d) => format_double(*d),
        V::Bool(b) => b.to_string(),
        V::Bytes(b) => String::from_utf8(b.to_vec()).map_err(|_| err("invalid UTF-8 in bytes"))?,
        V::Timestamp(t) => format_timestamp(*t),
        V::Duration(d) => format_duration(*d),
        V::Type(t) => t.to_string(),
        V::Null => "null".to_owned(),
        V::Ip(a) => a.to_string(),
        V::Cidr(a, n) => format!("{a}/{n}"),
        _ => return Err(EvalError::no_overload()),
    }))
}

pub(crate) fn format_timestamp(t: i128) -> String {
    let secs = i64::try_from(t.div_euclid(NANOS)).unwrap_or(0);
    let nanos = u32::try_from(t.rem_euclid(NANOS)).unwrap_or(0);
    match Utc.timestamp_opt(secs, nanos).single() {
        Some(dt) => dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        None => "invalid timestamp".to_owned(),
    }
}

pub(crate) fn format_duration(d: i128) -> String {
    let secs = d / NANOS;
    let nanos = (d % NANOS).abs();
    if nanos == 0 {
        return format!("{secs}s");
    }
    let sign = if d < 0 && secs == 0 { "-" } else { "" };
    let frac = format!("{nanos:09}");
    format!("{sign}{secs}.{}s", frac.trim_end_matches('0'))
}

fn parse_timestamp(s: &str) -> EvalResult {
    let dt = DateTime::parse_from_rfc3339(s)
        .map_err(|e| err(format!("invalid timestamp {s:?}: {e}")))?;
    let n = i128::from(dt.timestamp()) * NANOS + i128::from(dt.timestamp_subsec_nanos());
    ts(n)
}

fn parse_duration(s: &str) -> EvalResult {
    // Go's time.ParseDuration grammar: [-+]? (number unit)+ with units h, m, s, ms, us, µs, ns.
    let bad = || err(format!("invalid duration {s:?}"));
    let mut rest = s;
    let mut neg = false;
    if let Some(r) = rest.strip_prefix('-') {
        neg = true;
        rest = r;
    } else if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    }
    if rest == "0" {
        return Ok(Value::Duration(0));
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .bytes()
            .take_while(|c| c.is_ascii_digit() || *c == b'.')
            .count();
        if num_len == 0 {
            return Err(bad());
        }
        let num = &rest[..num_len];
        rest = &rest[num_len..];
        let unit_len = rest
            .chars()
            .take_while(|c| c.is_alphabetic())
            .map(char::len_utf8)
            .sum::<usize>();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let mult: i128 = match unit {
            "h" => 3600 * NANOS,
            "m" => 60 * NANOS,
            "s" => NANOS,
            "ms" => 1_000_000,
            "us" | "µs" => 1_000,
            "ns" => 1,
            _ => return Err(bad()),
        };
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        let ip: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| bad())?
        };
        total = total
            .checked_add(ip.checked_mul(mult).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        if !frac_part.is_empty() {
            let digits = frac_part.len().min(18);
            let fp: i128 = frac_part[..digits].parse().map_err(|_| bad())?;
            let scale = 10i128.pow(u32::try_from(digits).unwrap_or(0));
            total += fp * mult / scale;
        }
        if total > i128::from(MAX_DUR_SECS) * NANOS * 2 {
            return Err(err("duration out of range"));
        }
    }
    dur(if neg { -total } else { total })
}

fn ts_part(name: &str, t: i128, tz: Option<&str>) -> EvalResult {
    let secs = i64::try_from(t.div_euclid(NANOS)).map_err(|_| err("timestamp out of range"))?;
    let nanos = u32::try_from(t.rem_euclid(NANOS)).unwrap_or(0);
    let utc = Utc
        .timestamp_opt(secs, nanos)
        .single()
        .ok_or_else(|| err("timestamp out of range"))?;
    let fixed: DateTime<FixedOffset> = match tz {
        None => utc.fixed_offset(),
        Some(z) => {
            if let Some(off) = parse_offset(z) {
                utc.with_timezone(&off)
            } else {
                let zone: chrono_tz::Tz = z
                    .parse()
                    .map_err(|_| err(format!("unknown time zone {z:?}")))?;
                utc.with_timezone(&zone).fixed_offset()
            }
        }
    };
    let v: i64 = match name {
        "getFullYear" => i64::from(fixed.year()),
        "getMonth" => i64::from(fixed.month0()),
        "getDayOfYear" => i64::from(fixed.ordinal0()),
        "getDayOfMonth" => i64::from(fixed.day0()),
        "getDate" => i64::from(fixed.day()),
        "getDayOfWeek" => i64::from(fixed.weekday().num_days_from_sunday()),
        "getHours" => i64::from(fixed.hour()),
        "getMinutes" => i64::from(fixed.minute()),
        "getSeconds" => i64::from(fixed.second()),
        _ => i64::from(fixed.nanosecond() / 1_000_000),
    };
    Ok(Value::Int(v))
}

fn parse_offset(z: &str) -> Option<FixedOffset> {
    let (sign, rest) = match z.as_bytes().first()? {
        b'+' => (1, &z[1..]),
        b'-' => (-1, &z[1..]),
        _ => (1, z),
    };
    let (h, m) = rest.split_once(':')?;
    let h: i32 = h.parse().ok()?;
    let m: i32 = m.parse().ok()?;
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

fn index_fn(last: bool, s: &str, t: &str, rest: &[Value]) -> EvalResult {
    let chars: Vec<char> = s.chars().collect();
    let needle: Vec<char> = t.chars().collect();
    let n = chars.len();
    let start = match rest {
        [Value::Int(i)] => {
            let i = usize::try_from(*i).map_err(|_| err("index out of range"))?;
            if i > n {
                return Err(err(format!("index out of range: {i}")));
            }
            Some(i)
        }
        [] => None,
        _ => return Err(EvalError::no_overload()),
    };
    let found = if last {
        let from = start.unwrap_or(n);
        (0..=from.min(n))
            .rev()
            .find(|&i| i + needle.len() <= n && chars[i..i + needle.len()] == needle[..])
    } else {
        let from = start.unwrap_or(0);
        (from..=n).find(|&i| i + needle.len() <= n && chars[i..i + needle.len()] == needle[..])
    };
    Ok(Value::Int(
        found.map_or(-1, |i| i64::try_from(i).unwrap_or(-1)),
    ))
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn format_string(f: &str, args: &[Value]) -> EvalResult {
    let mut out = String::new();
    let mut chars = f.chars().peekable();
    let mut idx = 0;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut precision: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                p.push(*d);
                chars.next();
            }
            let n: usize = p.parse().map_err(|_| err("bad precision"))?;
            if n > 100 {
                return Err(err("format: precision above 100"));
            }
            precision = Some(n);
        }
        let Some(verb) = chars.next() else {
            return Err(err("format: trailing %"));
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let arg = args
            .get(idx)
            .ok_or_else(|| err(format!("index {idx} out of range")))?;
        idx += 1;
        match verb {
            's' => out.push_str(&format_value_s(arg)?),
            'd' => match arg {
                Value::Int(i) => out.push_str(&i.to_string()),
                Value::Uint(u) => out.push_str(&u.to_string()),
                Value::Double(d) if !d.is_finite() => out.push_str(
                    &format_double(*d)
                        .replace("+Inf", "Infinity")
                        .replace("-Inf", "-Infinity"),
                ),
                _ => {
                    return Err(err(
                        "error during formatting: decimal clause can only be used on integers",
                    ));
                }
            },
            'f' | 'e' => {
                let d = match arg {
                    Value::Double(d) => *d,
                    Value::Int(_) | Value::Uint(_) => as_f64(arg)?,
                    _ => {
                        return Err(err(
                            "error during formatting: fixed-point clause can only be used on doubles",
                        ));
                    }
                };
                let p = precision.unwrap_or(6);
                if d.is_nan() {
                    out.push_str("NaN");
                } else if d.is_infinite() {
                    out.push_str(if d > 0.0 { "Infinity" } else { "-Infinity" });
                } else if verb == 'f' {
                    out.push_str(&format!("{d:.p$}"));
                } else {
                    let e = format!("{d:.p$e}");
                    let (m, ex) = e.split_once('e').unwrap_or((&e, "0"));
                    let exp: i32 = ex.parse().unwrap_or(0);
                    let sign = if exp < 0 { '-' } else { '+' };
                    out.push_str(&format!("{m}e{sign}{:02}", exp.abs()));
                }
            }
            'b' => match arg {
                Value::Int(i) => {
                    if *i < 0 {
                        out.push_str(&format!("-{:b}", i.unsigned_abs()));
                    } else {
                        out.push_str(&format!("{i:b}"));
                    }
                }
                Value::Uint(u) => out.push_str(&format!("{u:b}")),
                Value::Bool(b) => out.push_str(if *b { "1" } else { "0" }),
                _ => {
                    return Err(err(
                        "error during formatting: only integers and bools can be formatted as binary",
                    ));
                }
            },
            'x' | 'X' => {
                let s = match arg {
                    Value::Int(i) if *i < 0 => format!("-{:x}", i.unsigned_abs()),
                    Value::Int(i) => format!("{i:x}"),
                    Value::Uint(u) => format!("{u:x}"),
                    Value::String(s) => s.bytes().map(|b| format!("{b:02x}")).collect(),
                    Value::Bytes(bs) => bs.iter().map(|b| format!("{b:02x}")).collect(),
                    _ => {
                        return Err(err(
                            "error during formatting: only integers, byte buffers, and strings can be formatted as hex",
                        ));
                    }
                };
                out.push_str(&if verb == 'X' { s.to_uppercase() } else { s });
            }
            'o' => match arg {
                Value::Int(i) if *i < 0 => out.push_str(&format!("-{:o}", i.unsigned_abs())),
                Value::Int(i) => out.push_str(&format!("{i:o}")),
                Value::Uint(u) => out.push_str(&format!("{u:o}")),
                _ => {
                    return Err(err(
                        "error during formatting: octal clause can only be used on integers",
                    ));
                }
            },
            c => {
                return Err(err(format!(
                    "could not parse formatting clause: unrecognized formatting clause \"{c}\""
                )));
            }
        }
    }
    Ok(Value::string(out))
}

fn format_value_s(v: &Value) -> Result<String, EvalError> {
    Ok(match v {
        Value::String(s) => s.to_string(),
        Value::Double(d) => {
            if d.is_nan() {
                "NaN".to_owned()
            } else if d.is_infinite() {
                if *d > 0.0 {
                    "Infinity".to_owned()
                } else {
                    "-Infinity".to_owned()
                }
            } else {
                format_double(*d)
            }
        }
        Value::List(l) => {
            let items: Result<Vec<String>, EvalError> =
                l.iter().map(format_value_s_nested).collect();
            format!("[{}]", items?.join(", "))
        }
        Value::Map(m) => {
            let mut items: Vec<(String, String)> = Vec::new();
            for (k, v) in m.iter() {
                items.push((
                    format_value_s_nested(&k.to_value())?,
                    format_value_s_nested(v)?,
                ));
            }
            items.sort();
            format!(
                "{{{}}}",
                items
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Optional(_) => return Err(EvalError::no_overload()),
        other => match to_string(other)? {
            Value::String(s) => s.to_string(),
            _ => String::new(),
        },
    })
}

fn format_value_s_nested(v: &Value) -> Result<String, EvalError> {
    format_value_s(v)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (a dozen lines; not worth a dependency for one CEL extension).
pub(crate) fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64, with or without padding.
pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = B64.iter().position(|x| *x == c)? as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((buf >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

#[allow(dead_code)]
fn map_of(entries: Vec<(Key, Value)>) -> Value {
    let mut m = MapValue::new();
    for (k, v) in entries {
        m.insert(k, v);
    }
    Value::Map(Arc::new(m))
}

fn parse_ip(s: &str) -> Result<std::net::IpAddr, EvalError> {
    if s.contains('%') {
        return Err(err("IP Address with zone value is not allowed"));
    }
    let ip: std::net::IpAddr = s.parse().map_err(|_| {
        err(format!(
            "IP Address '{s}' parse error during conversion from string"
        ))
    })?;
    if let std::net::IpAddr::V6(v6) = ip
        && v6.to_ipv4_mapped().is_some()
        && s.contains('.')
    {
        return Err(err("IPv4-mapped IPv6 address is not allowed"));
    }
    Ok(ip)
}

fn parse_cidr(s: &str) -> EvalResult {
    if s.contains('%') {
        return Err(err("CIDR with zone value is not allowed"));
    }
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| err("network address parse error during conversion from string"))?;
    let ip = parse_ip(addr)?;
    let n: u8 = len
        .parse()
        .map_err(|_| err("network address parse error during conversion from string"))?;
    if n > if ip.is_ipv4() { 32 } else { 128 } {
        return Err(err("network address parse error: prefix too long"));
    }
    Ok(Value::Cidr(ip, n))
}

fn bits(ip: &std::net::IpAddr) -> (u128, u8) {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
        std::net::IpAddr::V6(v) => (u128::from(v), 128),
    }
}

fn mask(ip: &std::net::IpAddr, n: u8) -> std::net::IpAddr {
    let (v, width) = bits(ip);
    let keep = if n == 0 {
        0
    } else {
        u128::MAX << (width - n.min(width))
    };
    let masked = v
        & keep
        & if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
    if width == 32 {
        std::net::IpAddr::V4(std::net::Ipv4Addr::from(u32::try_from(masked).unwrap_or(0)))
    } else {
        std::net::IpAddr::V6(std::net::Ipv6Addr::from(masked))
    }
}

fn prefix_contains(
    net: &std::net::IpAddr,
    n: u8,
    ip: &std::net::IpAddr,
    other_len: Option<u8>,
) -> bool {
    let (_, w1) = bits(net);
    let (_, w2) = bits(ip);
    if w1 != w2 {
        return false;
    }
    if let Some(m) = other_len
        && m < n
    {
        return false;
    }
    mask(net, n) == mask(ip, n)
}

fn is_link_local_unicast(a: &std::net::IpAddr) -> bool {
    match a {
        std::net::IpAddr::V4(v) => v.octets()[..2] == [169, 254],
        std::net::IpAddr::V6(v) => v.segments()[0] & 0xffc0 == 0xfe80,
    }
}

fn is_global_unicast(a: &std::net::IpAddr) -> bool {
    let multicast = a.is_multicast();
    let broadcast = matches!(a, std::net::IpAddr::V4(v) if v.is_broadcast());
    !(a.is_unspecified() || a.is_loopback() || multicast || broadcast || is_link_local_unicast(a))
}
