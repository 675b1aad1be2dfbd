//! The parsed form of a CEL expression. Operators are calls with CEL's internal names (`_+_`,
//! `_&&_`, `_[_]`, …); macros are already expanded into comprehensions.

use std::sync::Arc;

use super::value::Value;

/// One node of a parsed expression.
#[derive(Clone, Debug)]
pub struct Expr {
    /// Byte offset of the node in the source text.
    pub pos: u32,
    /// What the node is.
    pub kind: ExprKind,
}

/// The kinds of expression node.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ExprKind {
    /// A literal constant.
    Lit(Value),
    /// An identifier (a leading `.` marks a root-scoped name).
    Ident(Arc<str>),
    /// `operand.field`; `test` is set for `has(operand.field)`, `optional` for `operand.?field`.
    Select {
        /// The value selected from.
        operand: Box<Expr>,
        /// The field name.
        field: Arc<str>,
        /// Presence test (`has`).
        test: bool,
        /// Optional selection (`.?`).
        optional: bool,
    },
    /// A function or operator call, global or receiver-style.
    Call {
        /// The receiver of a member call.
        target: Option<Box<Expr>>,
        /// Function name.
        func: Arc<str>,
        /// Arguments.
        args: Vec<Expr>,
    },
    /// A list literal; `optional` holds the indexes of `?elem` entries.
    List {
        /// Elements.
        elems: Vec<Expr>,
        /// Indexes of optional elements.
        optional: Vec<usize>,
    },
    /// A map literal: (key, value, optional entry).
    Map(Vec<(Expr, Expr, bool)>),
    /// A message construction `Name{field: value}` (no message types are registered here).
    Struct {
        /// Message name.
        name: Arc<str>,
        /// Field initialisers.
        fields: Vec<(Arc<str>, Expr, bool)>,
    },
    /// A fold: what every macro expands to.
    Comprehension(Box<Comprehension>),
}

/// A comprehension (fold) over a list or map.
#[derive(Clone, Debug)]
pub struct Comprehension {
    /// First iteration variable (list element, or map key; list index for two-variable forms).
    pub iter_var: Arc<str>,
    /// Second iteration variable (two-variable comprehensions).
    pub iter_var2: Option<Arc<str>>,
    /// The range iterated over.
    pub iter_range: Expr,
    /// Accumulator variable name.
    pub accu_var: Arc<str>,
    /// Initial accumulator.
    pub accu_init: Expr,
    /// Condition checked before each step; iteration stops when false.
    pub loop_cond: Expr,
    /// Next accumulator value.
    pub loop_step: Expr,
    /// Result computed from the accumulator.
    pub result: Expr,
}

impl Expr {
    pub(crate) fn new(pos: u32, kind: ExprKind) -> Self {
        Self { pos, kind }
    }
    pub(crate) fn call(pos: u32, func: &str, args: Vec<Expr>) -> Self {
        Self::new(
            pos,
            ExprKind::Call {
                target: None,
                func: Arc::from(func),
                args,
            },
        )
    }
    pub(crate) fn ident(pos: u32, name: &str) -> Self {
        Self::new(pos, ExprKind::Ident(Arc::from(name)))
    }
    pub(crate) fn lit(pos: u32, v: Value) -> Self {
        Self::new(pos, ExprKind::Lit(v))
    }

    /// If the expression is a chain of identifiers and field selections (`a.b.c`), the dotted name.
    pub fn qualified_name(&self) -> Option<String> {
        match &self.kind {
            ExprKind::Ident(n) => Some(n.to_string()),
            ExprKind::Select {
                operand,
                field,
                test: false,
                optional: false,
            } => operand.qualified_name().map(|mut s| {
                s.push('.');
                s.push_str(field);
                s
            }),
            _ => None,
        }
    }

    /// Number of nodes in the expression.
    pub fn node_count(&self) -> usize {
        let mut n = 1;
        self.for_each_child(&mut |c| n += c.node_count());
        n
    }

    /// Calls `f` on each direct child.
    pub fn for_each_child(&self, f: &mut dyn FnMut(&Expr)) {
        match &self.kind {
            ExprKind::Lit(_) | ExprKind::Ident(_) => {}
            ExprKind::Select { operand, .. } => f(operand),
            ExprKind::Call { target, args, .. } => {
                if let Some(t) = target {
                    f(t);
                }
                args.iter().for_each(f);
            }
            ExprKind::List { elems, .. } => elems.iter().for_each(f),
            ExprKind::Map(entries) => {
                for (k, v, _) in entries {
                    f(k);
                    f(v);
                }
            }
            ExprKind::Struct { fields, .. } => {
                for (_, v, _) in fields {
                    f(v);
                }
            }
            ExprKind::Comprehension(c) => {
                f(&c.iter_range);
                f(&c.accu_init);
                f(&c.loop_cond);
                f(&c.loop_step);
                f(&c.result);
            }
        }
    }
}

/// A position in source text, 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// Line, starting at 1.
    pub line: u32,
    /// Column in characters, starting at 1.
    pub column: u32,
}

impl Location {
    /// The line and column of byte offset `pos` in `src`.
    pub fn of(src: &str, pos: u32) -> Self {
        let pos = (pos as usize).min(src.len());
        let mut line = 1u32;
        let mut column = 1u32;
        for (i, c) in src.char_indices() {
            if i >= pos {
                break;
            }
            if c == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        Self { line, column }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}
