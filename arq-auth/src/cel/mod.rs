//! arq's CEL (Common Expression Language) engine.
//!
//! Parse → check → compile → evaluate:
//! - [`parse`] turns text into an [`Expr`] with byte positions on every node and the standard
//!   macros expanded into comprehensions. Nesting depth and length are bounded.
//! - [`check`](checker::Checker) deduces types against declared variables and rejects undeclared
//!   names, type mismatches, unknown functions and wrong arity.
//! - The dynamic path ([`Interpreter`]) evaluates any expression over [`Value`]s within a cost
//!   budget; the policy engine compiles checked expressions to typed closures instead.
//!
//! # Example
//!
//! ```
//! use arq_auth::cel::{eval_str, Value};
//! let v = eval_str("[1, 2, 3].exists(x, x > 2) && 'abc'.startsWith('a')").unwrap();
//! assert!(matches!(v, Value::Bool(true)));
//! ```

pub mod ast;
pub mod checker;
mod functions;
pub mod interp;
pub mod parser;
pub mod types;
pub mod value;

pub use ast::{Expr, ExprKind, Location};
pub use checker::{CheckError, Checker};
pub use interp::{Activation, EmptyActivation, Interpreter};
pub use parser::{ParseError, ParseOptions, parse};
pub use types::Type;
pub use value::{EvalError, Key, MapValue, Value};

/// Default runtime cost budget (evaluation steps) of the dynamic path.
pub const DEFAULT_BUDGET: u64 = 1_000_000;

/// Parses and evaluates `src` with no variables; a convenience for tests and examples.
///
/// # Errors
/// A parse error or evaluation error, as text.
pub fn eval_str(src: &str) -> Result<Value, String> {
    let e = parse(src, ParseOptions::default()).map_err(|e| e.to_string())?;
    Interpreter::new(&EmptyActivation, "", DEFAULT_BUDGET)
        .eval(&e)
        .map_err(|e| e.to_string())
}
