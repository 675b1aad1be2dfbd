//! The type checker: deduces the type of every node against declared variables and functions,
//! and rejects undeclared names, unknown functions, wrong arity and type mismatches with the
//! position of the problem.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use super::ast::{Expr, ExprKind, Location};
use super::types::Type;
use super::value::Value;

/// A type-check failure with its position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} at {location}")]
pub struct CheckError {
    /// What is wrong.
    pub message: String,
    /// Byte offset.
    pub pos: u32,
    /// Line and column (filled in by [`Checker::check_source`]; 1:1-relative otherwise).
    pub location: Location,
}

#[derive(Clone, Debug)]
struct Overload {
    member: bool,
    params: Vec<Type>,
    result: Type,
}

/// Types deduced for each node, keyed by node address within one checked [`Expr`].
#[derive(Debug, Default)]
pub struct TypeMap {
    types: HashMap<usize, Type>,
}

impl TypeMap {
    /// The deduced type of a node of the checked expression.
    pub fn get(&self, e: &Expr) -> Option<&Type> {
        self.types.get(&(std::ptr::from_ref(e) as usize))
    }
}

/// Checks expressions against declared variables and functions.
///
/// # Example
///
/// ```
/// use arq_auth::cel::{parse, Checker, ParseOptions, Type};
/// let mut c = Checker::new();
/// c.declare("x", Type::Int);
/// let e = parse("x + 1 > 2", ParseOptions::default()).unwrap();
/// assert_eq!(c.check(&e).unwrap(), Type::Bool);
/// let bad = parse("x + 'a'", ParseOptions::default()).unwrap();
/// assert!(c.check(&bad).is_err());
/// ```
#[derive(Debug, Default)]
pub struct Checker {
    vars: HashMap<String, Type>,
    funcs: HashMap<String, Vec<Overload>>,
    container: String,
    namespaces: std::collections::HashSet<String>,
    subst: Vec<Option<Type>>,
    types: HashMap<usize, Type>,
}

type CResult<T> = Result<T, CheckError>;

fn cerr(e: &Expr, message: String) -> CheckError {
    CheckError {
        message,
        pos: e.pos,
        location: Location {
            line: 1,
            column: e.pos + 1,
        },
    }
}

/// The standard library's signatures. One overload a line: `name param… -> result`; a leading
/// `.` marks a receiver-style (member) function whose first parameter is the receiver.
const STDLIB: &str = "
_+_ int int -> int
_+_ uint uint -> uint
_+_ double double -> double
_+_ string string -> string
_+_ bytes bytes -> bytes
_+_ list(A) list(A) -> list(A)
_+_ ts dur -> ts
_+_ dur ts -> ts
_+_ dur dur -> dur
_-_ int int -> int
_-_ uint uint -> uint
_-_ double double -> double
_-_ ts ts -> dur
_-_ ts dur -> ts
_-_ dur dur -> dur
_*_ int int -> int
_*_ uint uint -> uint
_*_ double double -> double
_/_ int int -> int
_/_ uint uint -> uint
_/_ double double -> double
_%_ int int -> int
_%_ uint uint -> uint
-_ int -> int
-_ double -> double
!_ bool -> bool
_&&_ bool bool -> bool
_||_ bool bool -> bool
@not_strictly_false bool -> bool
_?_:_ bool A A -> A
_==_ A A -> bool
_!=_ A A -> bool
@in A list(A) -> bool
@in A map(A,B) -> bool
_[_] list(A) int -> A
_[_] map(A,B) A -> B
_[?_] list(A) int -> opt(A)
_[?_] map(A,B) A -> opt(B)
_[?_] opt(list(A)) int -> opt(A)
_[?_] opt(map(A,B)) A -> opt(B)
_[_] opt(list(A)) int -> opt(A)
_[_] opt(map(A,B)) A -> opt(B)
@map_insert map(A,B) A B -> map(A,B)
@map_insert_entry map(A,B) map(A,B) -> map(A,B)
size string -> int
size bytes -> int
size list(A) -> int
size map(A,B) -> int
.size string -> int
.size bytes -> int
.size list(A) -> int
.size map(A,B) -> int
.contains string string -> bool
.startsWith string string -> bool
.endsWith string string -> bool
.matches string string -> bool
matches string string -> bool
int int -> int
int uint -> int
int double -> int
int string -> int
int ts -> int
int dur -> int
uint int -> uint
uint uint -> uint
uint double -> uint
uint string -> uint
double int -> double
double uint -> double
double double -> double
double string -> double
string int -> string
string uint -> string
string double -> string
string bool -> string
string bytes -> string
string string -> string
string ts -> string
string dur -> string
bytes bytes -> bytes
bytes string -> bytes
bool bool -> bool
bool string -> bool
dyn A -> dyn
type A -> type(A)
timestamp string -> ts
timestamp int -> ts
timestamp ts -> ts
duration string -> dur
duration dur -> dur
.getFullYear ts -> int
.getFullYear ts string -> int
.getMonth ts -> int
.getMonth ts string -> int
.getDayOfYear ts -> int
.getDayOfYear ts string -> int
.getDayOfMonth ts -> int
.getDayOfMonth ts string -> int
.getDate ts -> int
.getDate ts string -> int
.getDayOfWeek ts -> int
.getDayOfWeek ts string -> int
.getHours ts -> int
.getHours ts string -> int
.getMinutes ts -> int
.getMinutes ts string -> int
.getSeconds ts -> int
.getSeconds ts string -> int
.getMilliseconds ts -> int
.getMilliseconds ts string -> int
.getHours dur -> int
.getMinutes dur -> int
.getSeconds dur -> int
.getMilliseconds dur -> int
.charAt string int -> string
.indexOf string string -> int
.indexOf string string int -> int
.lastIndexOf string string -> int
.lastIndexOf string string int -> int
.lowerAscii string -> string
.upperAscii string -> string
.replace string string string -> string
.replace string string string int -> string
.split string string -> list(string)
.split string string int -> list(string)
.substring string int -> string
.substring string int int -> string
.trim string -> string
.reverse string -> string
.join list(string) -> string
.join list(string) string -> string
.format string list(dyn) -> string
strings.quote string -> string
base64.encode bytes -> string
base64.decode string -> bytes
math.ceil double -> double
math.floor double -> double
math.round double -> double
math.trunc double -> double
math.sqrt int -> double
math.sqrt uint -> double
math.sqrt double -> double
math.abs int -> int
math.abs uint -> uint
math.abs double -> double
math.sign int -> int
math.sign uint -> uint
math.sign double -> double
math.isInf double -> bool
math.isNaN double -> bool
math.isFinite double -> bool
math.bitAnd int int -> int
math.bitAnd uint uint -> uint
math.bitOr int int -> int
math.bitOr uint uint -> uint
math.bitXor int int -> int
math.bitXor uint uint -> uint
math.bitNot int -> int
math.bitNot uint -> uint
math.bitShiftLeft int int -> int
math.bitShiftLeft uint int -> uint
math.bitShiftRight int int -> int
math.bitShiftRight uint int -> uint
optional.of A -> opt(A)
optional.ofNonZeroValue A -> opt(A)
optional.none -> opt(A)
.hasValue opt(A) -> bool
.value opt(A) -> A
.or opt(A) opt(A) -> opt(A)
.orValue opt(A) A -> A
ip string -> ip
isIP string -> bool
ip.isCanonical string -> bool
string ip -> string
string cidr -> string
.family ip -> int
.isUnspecified ip -> bool
.isLoopback ip -> bool
.isGlobalUnicast ip -> bool
.isLinkLocalMulticast ip -> bool
.isLinkLocalUnicast ip -> bool
cidr string -> cidr
.containsIP cidr ip -> bool
.containsIP cidr string -> bool
.containsCIDR cidr cidr -> bool
.containsCIDR cidr string -> bool
.ip cidr -> ip
.masked cidr -> cidr
.prefixLength cidr -> int
";

const ORDERED: &[&str] = &[
    "int", "uint", "double", "string", "bytes", "bool", "ts", "dur",
];

fn parse_sig_type(s: &str) -> Type {
    let (head, inner) = match s.find('(') {
        Some(i) => (&s[..i], Some(&s[i + 1..s.len() - 1])),
        None => (s, None),
    };
    let args = || -> Vec<Type> {
        let inner = inner.unwrap_or("");
        // Split on top-level commas.
        let mut out = Vec::new();
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    out.push(parse_sig_type(&inner[start..i]));
                    start = i + 1;
                }
                _ => {}
            }
        }
        out.push(parse_sig_type(&inner[start..]));
        out
    };
    match head {
        "int" => Type::Int,
        "uint" => Type::Uint,
        "double" => Type::Double,
        "string" => Type::String,
        "bytes" => Type::Bytes,
        "bool" => Type::Bool,
        "ts" => Type::Timestamp,
        "dur" => Type::Duration,
        "dyn" => Type::Dyn,
        "ip" => Type::Abstract(Arc::from("net.IP"), vec![]),
        "cidr" => Type::Abstract(Arc::from("net.CIDR"), vec![]),
        "list" => Type::list(args().remove(0)),
        "map" => {
            let mut a = args();
            let v = a.remove(1);
            Type::map(a.remove(0), v)
        }
        "opt" => Type::Optional(Box::new(args().remove(0))),
        "type" => Type::Type(Box::new(args().remove(0))),
        p => Type::Param(Arc::from(p)),
    }
}

fn stdlib() -> &'static HashMap<String, Vec<Overload>> {
    static LIB: OnceLock<HashMap<String, Vec<Overload>>> = OnceLock::new();
    LIB.get_or_init(|| {
        let mut m: HashMap<String, Vec<Overload>> = HashMap::new();
        let mut add = |name: &str, member: bool, params: Vec<Type>, result: Type| {
            m.entry(name.to_owned()).or_default().push(Overload {
                member,
                params,
                result,
            });
        };
        for line in STDLIB.lines().filter(|l| !l.trim().is_empty()) {
            let (lhs, rhs) = line.split_once(" -> ").unwrap_or((line, "dyn"));
            let mut words = lhs.split_whitespace();
            let name = words.next().unwrap_or("");
            let params: Vec<Type> = words.map(parse_sig_type).collect();
            let (name, member) = match name.strip_prefix('.') {
                Some(n) => (n, true),
                None => (name, false),
            };
            add(name, member, params, parse_sig_type(rhs));
        }
        // Ordering, including CEL's cross-type numeric comparisons.
        for op in ["_<_", "_<=_", "_>_", "_>=_"] {
            for t in ORDERED {
                let ty = parse_sig_type(t);
                add(op, false, vec![ty.clone(), ty], Type::Bool);
            }
            for (a, b) in [
                ("int", "uint"),
                ("int", "double"),
                ("uint", "int"),
                ("uint", "double"),
                ("double", "int"),
                ("double", "uint"),
            ] {
                add(
                    op,
                    false,
                    vec![parse_sig_type(a), parse_sig_type(b)],
                    Type::Bool,
                );
            }
        }
        m
    })
}

impl Checker {
    /// A checker with the standard library and no variables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the container (namespace) that qualifies names.
    pub fn set_container(&mut self, container: &str) {
        container.clone_into(&mut self.container);
    }

    /// Declares a variable (possibly dotted, `a.b`).
    pub fn declare(&mut self, name: &str, t: Type) {
        self.vars.insert(name.to_owned(), t);
    }

    /// Declares a namespace: a root name (`principal`) whose declared members are dotted
    /// variables (`principal.department`). Selecting an undeclared member is an
    /// "undeclared attribute" error.
    pub fn declare_namespace(&mut self, name: &str) {
        self.namespaces.insert(name.to_owned());
    }

    /// Declares a function overload; `member` overloads take the receiver as first parameter.
    pub fn declare_function(&mut self, name: &str, member: bool, params: Vec<Type>, result: Type) {
        self.funcs
            .entry(name.to_owned())
            .or_default()
            .push(Overload {
                member,
                params,
                result,
            });
    }

    /// Checks `e` and returns its type.
    ///
    /// # Errors
    /// The first problem found, with its byte position.
    pub fn check(&mut self, e: &Expr) -> CResult<Type> {
        self.check_with_types(e).map(|(t, _)| t)
    }

    /// Checks `e`, computing line and column of an error within `src`.
    ///
    /// # Errors
    /// The first problem found, located in `src`.
    pub fn check_source(&mut self, src: &str, e: &Expr) -> CResult<Type> {
        self.check(e).map_err(|mut err| {
            err.location = Location::of(src, err.pos);
            err
        })
    }

    /// Checks `e` and returns its type plus the type of every node.
    ///
    /// # Errors
    /// The first problem found.
    pub fn check_with_types(&mut self, e: &Expr) -> CResult<(Type, TypeMap)> {
        self.subst.clear();
        self.types.clear();
        let t = self.visit(e, &mut Vec::new())?;
        let t = self.finalize(&t);
        let types = std::mem::take(&mut self.types)
            .into_iter()
            .map(|(k, v)| (k, self.finalize(&v)))
            .collect();
        Ok((t, TypeMap { types }))
    }

    fn fresh(&mut self) -> Type {
        self.subst.push(None);
        Type::Var(u32::try_from(self.subst.len() - 1).unwrap_or(u32::MAX))
    }

    fn resolve(&self, t: &Type) -> Type {
        match t {
            Type::Var(v) => match self.subst.get(*v as usize).and_then(Clone::clone) {
                Some(inner) => self.resolve(&inner),
                None => t.clone(),
            },
            _ => t.clone(),
        }
    }

    /// Fully substitutes type variables; unbound ones become `dyn`.
    fn finalize(&self, t: &Type) -> Type {
        match self.resolve(t) {
            Type::Var(_) | Type::Param(_) => Type::Dyn,
            Type::List(e) => Type::list(self.finalize(&e)),
            Type::Map(k, v) => Type::map(self.finalize(&k), self.finalize(&v)),
            Type::Type(e) => Type::Type(Box::new(self.finalize(&e))),
            Type::Optional(e) => Type::Optional(Box::new(self.finalize(&e))),
            Type::Abstract(n, ps) => {
                Type::Abstract(n, ps.iter().map(|p| self.finalize(p)).collect())
            }
            other => other,
        }
    }

    fn occurs(&self, v: u32, t: &Type) -> bool {
        match self.resolve(t) {
            Type::Var(w) => v == w,
            Type::List(e) | Type::Type(e) | Type::Optional(e) => self.occurs(v, &e),
            Type::Map(k, x) => self.occurs(v, &k) || self.occurs(v, &x),
            Type::Abstract(_, ps) => ps.iter().any(|p| self.occurs(v, p)),
            _ => false,
        }
    }

    /// Makes `a` and `b` agree, binding type variables; `dyn` agrees with anything.
    fn unify(&mut self, a: &Type, b: &Type) -> bool {
        let (a, b) = (self.resolve(a), self.resolve(b));
        match (&a, &b) {
            (Type::Var(x), Type::Var(y)) if x == y => true,
            (Type::Var(x), t) | (t, Type::Var(x)) => {
                if self.occurs(*x, t) {
                    return false;
                }
                self.subst[*x as usize] = Some(t.clone());
                true
            }
            // `dyn` agrees with anything; type values compare at run time whatever they denote;
            // `null` may stand for an optional or abstract value.
            (Type::Dyn | Type::Error, _)
            | (_, Type::Dyn | Type::Error)
            | (Type::Type(_), Type::Type(_))
            | (Type::Null, Type::Optional(_) | Type::Abstract(..))
            | (Type::Optional(_) | Type::Abstract(..), Type::Null) => true,
            (Type::List(x), Type::List(y)) | (Type::Optional(x), Type::Optional(y)) => {
                self.unify(x, y)
            }
            (Type::Map(k1, v1), Type::Map(k2, v2)) => self.unify(k1, k2) && self.unify(v1, v2),
            (Type::Abstract(n1, p1), Type::Abstract(n2, p2)) => {
                n1 == n2 && p1.len() == p2.len() && p1.iter().zip(p2).all(|(x, y)| self.unify(x, y))
            }
            _ => a == b,
        }
    }

    /// The most general common type of two element types (for list and map literals): equal
    /// types stay, otherwise `dyn`.
    fn join(&mut self, a: &Type, b: &Type) -> Type {
        let snapshot = self.subst.clone();
        if self.unify(a, b) {
            let fa = self.finalize(a);
            let fb = self.finalize(b);
            if fa == fb || !contains_dyn(&fa) && !contains_dyn(&fb) {
                return self.resolve(a);
            }
            // One side is more general: prefer the one holding dyn.
            if contains_dyn(&fb) && !matches!(self.resolve(a), Type::Null) {
                return fb;
            }
            return fa;
        }
        self.subst = snapshot;
        Type::Dyn
    }

    /// Replaces an overload's type parameters by fresh variables; `map` holds the ones already
    /// replaced (a signature has one or two, so a list beats a hash map).
    fn instantiate(&mut self, t: &Type, map: &mut Vec<(Arc<str>, Type)>) -> Type {
        match t {
            Type::Param(p) => {
                if let Some((_, v)) = map.iter().find(|(q, _)| q == p) {
                    return v.clone();
                }
                let v = self.fresh();
                map.push((p.clone(), v.clone()));
                v
            }
            Type::List(e) => Type::list(self.instantiate(e, map)),
            Type::Map(k, v) => {
                let k = self.instantiate(k, map);
                Type::map(k, self.instantiate(v, map))
            }
            Type::Type(e) => Type::Type(Box::new(self.instantiate(e, map))),
            Type::Optional(e) => Type::Optional(Box::new(self.instantiate(e, map))),
            Type::Abstract(n, ps) => Type::Abstract(
                n.clone(),
                ps.iter().map(|p| self.instantiate(p, map)).collect(),
            ),
            other => other.clone(),
        }
    }

    fn record(&mut self, e: &Expr, t: Type) -> Type {
        self.types.insert(std::ptr::from_ref(e) as usize, t.clone());
        t
    }

    fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(root) = name.strip_prefix('.') {
            return vec![root.to_owned()];
        }
        let mut out = Vec::new();
        let mut c = self.container.as_str();
        while !c.is_empty() {
            out.push(format!("{c}.{name}"));
            c = c.rfind('.').map_or("", |i| &c[..i]);
        }
        out.push(name.to_owned());
        out
    }

    fn lookup_var(&self, name: &str, locals: &[(Arc<str>, Type)]) -> Option<Type> {
        if !name.starts_with('.')
            && let Some((_, t)) = locals.iter().rev().find(|(n, _)| **n == *name)
        {
            return Some(t.clone());
        }
        for c in self.candidates(name) {
            if let Some(t) = self.vars.get(&c) {
                return Some(t.clone());
            }
        }
        let bare = name.strip_prefix('.').unwrap_or(name);
        Type::of_type_name(bare).map(|t| Type::Type(Box::new(t)))
    }

    fn visit(&mut self, e: &Expr, locals: &mut Vec<(Arc<str>, Type)>) -> CResult<Type> {
        let t = self.visit_inner(e, locals)?;
        Ok(self.record(e, t))
    }

    #[allow(clippy::too_many_lines)]
    fn visit_inner(&mut self, e: &Expr, locals: &mut Vec<(Arc<str>, Type)>) -> CResult<Type> {
        match &e.kind {
            ExprKind::Lit(v) => Ok(match v {
                Value::Null => Type::Null,
                Value::Bool(_) => Type::Bool,
                Value::Int(_) => Type::Int,
                Value::Uint(_) => Type::Uint,
                Value::Double(_) => Type::Double,
                Value::String(_) => Type::String,
                Value::Bytes(_) => Type::Bytes,
                _ => Type::Dyn,
            }),
            ExprKind::Ident(name) => self
                .lookup_var(name, locals)
                .ok_or_else(|| cerr(e, format!("undeclared reference to '{name}'"))),
            ExprKind::Select {
                operand,
                field,
                test,
                optional,
            } => {
                // `principal.department`: a namespace member, found with one lookup. The general
                // path below reaches the same answer through qualified-name candidates, at a
                // dozen allocations per selection.
                if !*test
                    && !*optional
                    && self.container.is_empty()
                    && let ExprKind::Ident(root) = &operand.kind
                    && !root.starts_with('.')
                    && self.namespaces.contains(&**root)
                    && !locals.iter().any(|(n, _)| *n == *root)
                {
                    return self
                        .vars
                        .get(&format!("{root}.{field}"))
                        .cloned()
                        .ok_or_else(|| cerr(e, format!("undeclared attribute '{root}.{field}'")));
                }
                // A dotted name may be a declared variable (`a.b.c`), longest match first.
                if !*test
                    && !*optional
                    && let Some(qn) = e.qualified_name()
                {
                    let root = qn.trim_start_matches('.').split('.').next().unwrap_or("");
                    let is_local = !qn.starts_with('.') && locals.iter().any(|(n, _)| **n == *root);
                    if !is_local {
                        let lead = if qn.starts_with('.') { "." } else { "" };
                        let parts: Vec<&str> = qn.trim_start_matches('.').split('.').collect();
                        for n in (2..=parts.len()).rev() {
                            let name = format!("{lead}{}", parts[..n].join("."));
                            if let Some(t) = self.lookup_var(&name, &[]) {
                                let mut cur = t;
                                for f in &parts[n..] {
                                    cur = self.field_type(e, &cur, f)?;
                                }
                                return Ok(cur);
                            }
                        }
                        if self.namespaces.contains(root) {
                            return Err(cerr(
                                e,
                                format!(
                                    "undeclared attribute '{root}.{}'",
                                    parts.get(1).unwrap_or(&"")
                                ),
                            ));
                        }
                    }
                }
                if let ExprKind::Ident(root) = &operand.kind
                    && self.namespaces.contains(&**root)
                    && !locals.iter().any(|(n, _)| *n == *root)
                {
                    if self.vars.contains_key(&format!("{root}.{field}")) {
                        let t = self
                            .vars
                            .get(&format!("{root}.{field}"))
                            .cloned()
                            .unwrap_or(Type::Dyn);
                        return Ok(if *test {
                            Type::Bool
                        } else if *optional {
                            Type::Optional(Box::new(t))
                        } else {
                            t
                        });
                    }
                    return Err(cerr(e, format!("undeclared attribute '{root}.{field}'")));
                }
                let ot = self.visit(operand, locals)?;
                if *test {
                    let rt = match self.resolve(&ot) {
                        Type::Optional(inner) => self.resolve(&inner),
                        other => other,
                    };
                    if !matches!(
                        rt,
                        Type::Map(..) | Type::Dyn | Type::Var(_) | Type::Abstract(..)
                    ) {
                        return Err(cerr(
                            e,
                            format!(
                                "type '{}' does not support field selection",
                                self.finalize(&rt)
                            ),
                        ));
                    }
                    return Ok(Type::Bool);
                }
                if *optional {
                    let inner = match self.resolve(&ot) {
                        Type::Optional(i) => *i,
                        other => other,
                    };
                    let ft = self.field_type(e, &inner, field)?;
                    return Ok(Type::Optional(Box::new(ft)));
                }
                if let Type::Optional(inner) = self.resolve(&ot) {
                    let ft = self.field_type(e, &inner, field)?;
                    return Ok(Type::Optional(Box::new(ft)));
                }
                self.field_type(e, &ot, field)
            }
            ExprKind::Call { target, func, args } => {
                self.visit_call(e, target.as_deref(), func, args, locals)
            }
            ExprKind::List { elems, optional } => {
                let mut elem = self.fresh();
                for (i, el) in elems.iter().enumerate() {
                    let mut t = self.visit(el, locals)?;
                    if optional.contains(&i) {
                        match self.resolve(&t) {
                            Type::Optional(inner) => t = *inner,
                            Type::Dyn => {}
                            other => {
                                return Err(cerr(
                                    el,
                                    format!(
                                        "optional element has type {}, want optional",
                                        self.finalize(&other)
                                    ),
                                ));
                            }
                        }
                    }
                    elem = if i == 0 {
                        self.unify_or_dyn(&elem, &t)
                    } else {
                        self.join(&elem, &t)
                    };
                }
                Ok(Type::list(elem))
            }
            ExprKind::Map(entries) => {
                let mut kt = self.fresh();
                let mut vt = self.fresh();
                for (i, (k, v, opt)) in entries.iter().enumerate() {
                    let k1 = self.visit(k, locals)?;
                    let mut v1 = self.visit(v, locals)?;
                    match self.resolve(&k1) {
                        Type::Bool
                        | Type::Int
                        | Type::Uint
                        | Type::String
                        | Type::Dyn
                        | Type::Var(_) => {}
                        other => {
                            return Err(cerr(
                                k,
                                format!("unsupported map key type {}", self.finalize(&other)),
                            ));
                        }
                    }
                    if *opt && let Type::Optional(inner) = self.resolve(&v1) {
                        v1 = *inner;
                    }
                    if i == 0 {
                        kt = self.unify_or_dyn(&kt, &k1);
                        vt = self.unify_or_dyn(&vt, &v1);
                    } else {
                        kt = self.join(&kt, &k1);
                        vt = self.join(&vt, &v1);
                    }
                }
                Ok(Type::map(kt, vt))
            }
            ExprKind::Struct { name, .. } => Err(cerr(
                e,
                format!("undeclared reference to message type '{name}'"),
            )),
            ExprKind::Comprehension(c) => {
                let rt = self.visit(&c.iter_range, locals)?;
                let (t1, t2) = match self.resolve(&rt) {
                    Type::List(el) => {
                        if c.iter_var2.is_some() {
                            (Type::Int, *el)
                        } else {
                            (*el, Type::Dyn)
                        }
                    }
                    Type::Map(k, v) => (*k, *v),
                    Type::Dyn | Type::Var(_) => (Type::Dyn, Type::Dyn),
                    other => {
                        return Err(cerr(
                            &c.iter_range,
                            format!(
                                "expression of type '{}' cannot be the range of a comprehension (must be list, map, or dynamic)",
                                self.finalize(&other)
                            ),
                        ));
                    }
                };
                let at = self.visit(&c.accu_init, locals)?;
                let base = locals.len();
                locals.push((c.accu_var.clone(), at.clone()));
                locals.push((c.iter_var.clone(), t1));
                if let Some(v2) = &c.iter_var2 {
                    locals.push((v2.clone(), t2));
                }
                let r = (|| {
                    let ct = self.visit(&c.loop_cond, locals)?;
                    if !self.unify(&ct, &Type::Bool) {
                        return Err(cerr(&c.loop_cond, "loop condition must be bool".to_owned()));
                    }
                    let st = self.visit(&c.loop_step, locals)?;
                    if !self.unify(&st, &at) {
                        return Err(cerr(
                            &c.loop_step,
                            format!(
                                "loop step has type {}, accumulator has type {}",
                                self.finalize(&st),
                                self.finalize(&at)
                            ),
                        ));
                    }
                    Ok(())
                })();
                locals.truncate(base);
                r?;
                locals.push((c.accu_var.clone(), at));
                let res = self.visit(&c.result, locals);
                locals.truncate(base);
                res
            }
        }
    }

    fn unify_or_dyn(&mut self, a: &Type, b: &Type) -> Type {
        if self.unify(a, b) {
            self.resolve(a)
        } else {
            Type::Dyn
        }
    }

    fn field_type(&mut self, e: &Expr, t: &Type, field: &str) -> CResult<Type> {
        match self.resolve(t) {
            Type::Map(k, v) => {
                if !self.unify(&k, &Type::String) {
                    return Err(cerr(
                        e,
                        format!("field selection '{field}' needs a map with string keys"),
                    ));
                }
                Ok(*v)
            }
            Type::Dyn | Type::Var(_) | Type::Error => Ok(Type::Dyn),
            other => Err(cerr(
                e,
                format!(
                    "type '{}' does not support field selection ('{field}')",
                    self.finalize(&other)
                ),
            )),
        }
    }

    fn visit_call(
        &mut self,
        e: &Expr,
        target: Option<&Expr>,
        func: &str,
        args: &[Expr],
        locals: &mut Vec<(Arc<str>, Type)>,
    ) -> CResult<Type> {
        // Namespaced global call written as a member call: `math.greatest(1, 2)`.
        let mut name = func.strip_prefix('.').unwrap_or(func).to_owned();
        let mut member = target.is_some();
        if let Some(t) = target
            && let Some(qn) = t.qualified_name()
        {
            let root = qn.split('.').next().unwrap_or("");
            let full = format!("{qn}.{func}");
            let is_local = locals.iter().any(|(n, _)| **n == *root);
            if !is_local && self.lookup_var(&qn, &[]).is_none() && self.has_function(&full) {
                name = full;
                member = false;
            }
        }
        if !member && !func.starts_with('.') && !self.has_function(&name) {
            for c in self.candidates(&name) {
                if self.has_function(&c) {
                    name = c;
                    break;
                }
            }
        }
        let mut arg_types = Vec::with_capacity(args.len() + 1);
        if member && let Some(t) = target {
            arg_types.push(self.visit(t, locals)?);
        }
        // optMap / optFlatMap bind a variable in their second argument.
        if member && (name == "optMap" || name == "optFlatMap") && args.len() == 2 {
            let inner = match self.resolve(&arg_types[0]) {
                Type::Optional(i) => *i,
                Type::Dyn => Type::Dyn,
                other => {
                    return Err(cerr(
                        e,
                        format!(
                            "{name} needs an optional receiver, found {}",
                            self.finalize(&other)
                        ),
                    ));
                }
            };
            let ExprKind::Ident(var) = &args[0].kind else {
                return Err(cerr(&args[0], format!("{name} needs a variable name")));
            };
            locals.push((var.clone(), inner));
            let r = self.visit(&args[1], locals);
            locals.pop();
            let r = r?;
            return Ok(if name == "optMap" {
                Type::Optional(Box::new(r))
            } else {
                r
            });
        }
        for a in args {
            arg_types.push(self.visit(a, locals)?);
        }
        if name == "math.greatest" || name == "math.least" {
            return self.check_greatest(e, &name, &arg_types);
        }
        // Standard overloads are borrowed from the static table; declared ones are few and
        // copied (they live in `self`, which unification borrows mutably).
        let fits = |o: &Overload| o.member == member && o.params.len() == arg_types.len();
        let overloads: Vec<std::borrow::Cow<'static, Overload>> = self
            .funcs
            .get(&name)
            .into_iter()
            .flatten()
            .filter(|o| fits(o))
            .map(|o| std::borrow::Cow::Owned(o.clone()))
            .chain(
                stdlib()
                    .get(&name)
                    .into_iter()
                    .flatten()
                    .filter(|o| fits(o))
                    .map(std::borrow::Cow::Borrowed),
            )
            .collect();
        if overloads.is_empty() {
            let known = self.funcs.contains_key(&name) || stdlib().contains_key(&name);
            return Err(cerr(
                e,
                if known {
                    format!(
                        "found no matching overload for '{name}' with {} argument(s)",
                        arg_types.len()
                    )
                } else {
                    format!("undeclared reference to '{name}'")
                },
            ));
        }
        let mut results: Vec<Type> = Vec::new();
        let mut final_subst = None;
        for o in &overloads {
            let snapshot = self.subst.clone();
            let mut map = Vec::new();
            let params: Vec<Type> = o
                .params
                .iter()
                .map(|p| self.instantiate(p, &mut map))
                .collect();
            let result = self.instantiate(&o.result, &mut map);
            if params.iter().zip(&arg_types).all(|(p, a)| self.unify(p, a)) {
                results.push(self.resolve(&result));
                if final_subst.is_none() {
                    final_subst = Some(self.subst.clone());
                }
            }
            self.subst = snapshot;
        }
        if results.is_empty() {
            return Err(cerr(
                e,
                format!(
                    "found no matching overload for '{}' applied to '({})'",
                    display_name(&name),
                    arg_types
                        .iter()
                        .map(|t| self.finalize(t).to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if results.len() == 1
            && let Some(s) = final_subst
        {
            self.subst = s;
            return Ok(results.remove(0));
        }
        let first = self.finalize(&results[0]);
        if results.iter().all(|r| self.finalize(r) == first) {
            if let Some(s) = final_subst {
                self.subst = s;
            }
            return Ok(results.remove(0));
        }
        Ok(Type::Dyn)
    }

    fn has_function(&self, name: &str) -> bool {
        self.funcs.contains_key(name)
            || stdlib().contains_key(name)
            || name == "math.greatest"
            || name == "math.least"
    }

    fn check_greatest(&mut self, e: &Expr, name: &str, args: &[Type]) -> CResult<Type> {
        let items: Vec<Type> = match args {
            [] => return Err(cerr(e, format!("{name} needs at least one argument"))),
            [single] => match self.resolve(single) {
                Type::List(el) => vec![*el],
                t => vec![t],
            },
            many => many.iter().map(|t| self.resolve(t)).collect(),
        };
        let mut common: Option<Type> = None;
        for t in items {
            match t {
                Type::Int | Type::Uint | Type::Double | Type::Dyn | Type::Var(_) => {}
                other => {
                    return Err(cerr(
                        e,
                        format!(
                            "found no matching overload for '{name}' applied to '({})'",
                            self.finalize(&other)
                        ),
                    ));
                }
            }
            common = Some(match common {
                None => t,
                Some(c) if c == t => c,
                Some(_) => Type::Dyn,
            });
        }
        Ok(common.unwrap_or(Type::Dyn))
    }
}

fn contains_dyn(t: &Type) -> bool {
    match t {
        Type::Dyn => true,
        Type::List(e) | Type::Type(e) | Type::Optional(e) => contains_dyn(e),
        Type::Map(k, v) => contains_dyn(k) || contains_dyn(v),
        Type::Abstract(_, ps) => ps.iter().any(contains_dyn),
        _ => false,
    }
}

fn display_name(name: &str) -> &str {
    match name {
        "_+_" => "+",
        "_-_" => "-",
        "_*_" => "*",
        "_/_" => "/",
        "_%_" => "%",
        "_==_" => "==",
        "_!=_" => "!=",
        "_<_" => "<",
        "_<=_" => "<=",
        "_>_" => ">",
        "_>=_" => ">=",
        "@in" => "in",
        "_&&_" => "&&",
        "_||_" => "||",
        "_[_]" => "[]",
        n => n,
    }
}
