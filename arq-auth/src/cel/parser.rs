//! A hand-written lexer and recursive-descent parser for CEL.
//!
//! Written here rather than taken from a crate because the engine needs byte positions on every
//! node, hard limits on nesting (no stack overflow on hostile input) and macro expansion into
//! our own comprehension form.

use std::sync::Arc;

use super::ast::{Comprehension, Expr, ExprKind, Location};
use super::value::Value;

/// Longest expression accepted, in bytes.
pub const MAX_EXPR_LEN: usize = 100_000;
/// Deepest nesting accepted (parentheses, lists, calls, operator chains).
pub const MAX_DEPTH: usize = 96;

/// A parse failure, with its position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} at {location}")]
pub struct ParseError {
    /// What was wrong.
    pub message: String,
    /// Byte offset in the source.
    pub pos: u32,
    /// Line and column in the source.
    pub location: Location,
}

/// Parser options.
#[derive(Clone, Copy, Debug)]
pub struct ParseOptions {
    /// Expand the standard macros (`has`, `all`, `exists`, …).
    pub macros: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        Self { macros: true }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Int(i64),
    Uint(u64),
    Double(f64),
    Str(String),
    Bytes(Vec<u8>),
    Ident(String),
    Quoted(String),
    True,
    False,
    Null,
    In,
    Punct(&'static str),
    Eof,
}

const RESERVED: &[&str] = &[
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

struct Lexer<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

type LexResult<T> = Result<T, (String, usize)>;

impl<'a> Lexer<'a> {
    fn skip_ws(&mut self) {
        while self.pos < self.bytes.len() {
            let c = self.bytes[self.pos];
            if c == b' ' || c == b'\t' || c == b'\n' || c == b'\r' || c == 0x0c {
                self.pos += 1;
            } else if c == b'/' && self.bytes.get(self.pos + 1) == Some(&b'/') {
                while self.pos < self.bytes.len() && self.bytes[self.pos] != b'\n' {
                    self.pos += 1;
                }
            } else {
                break;
            }
        }
    }

    fn next(&mut self) -> LexResult<(Tok, usize)> {
        self.skip_ws();
        let start = self.pos;
        let Some(&c) = self.bytes.get(self.pos) else {
            return Ok((Tok::Eof, start));
        };
        let rest = &self.src[self.pos..];
        // Strings with prefixes.
        if c == b'"' || c == b'\'' {
            return self.string(false, false).map(|t| (t, start));
        }
        if matches!(c, b'r' | b'R' | b'b' | b'B') {
            let b1 = self.bytes.get(self.pos + 1).copied();
            let b2 = self.bytes.get(self.pos + 2).copied();
            let q = |b: Option<u8>| b == Some(b'"') || b == Some(b'\'');
            if q(b1) {
                self.pos += 1;
                let raw = matches!(c, b'r' | b'R');
                return self.string(raw, !raw).map(|t| (t, start));
            }
            if q(b2) {
                let pair = [c.to_ascii_lowercase(), b1.unwrap_or(0).to_ascii_lowercase()];
                if pair == *b"rb" || pair == *b"br" {
                    self.pos += 2;
                    return self.string(true, true).map(|t| (t, start));
                }
            }
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let len = rest
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            self.pos += len;
            let word = &rest[..len];
            let tok = match word {
                "true" => Tok::True,
                "false" => Tok::False,
                "null" => Tok::Null,
                "in" => Tok::In,
                w => Tok::Ident(w.to_owned()),
            };
            return Ok((tok, start));
        }
        if c == b'`' {
            let end = rest[1..]
                .find('`')
                .ok_or_else(|| ("unterminated quoted identifier".to_owned(), start))?;
            let name = &rest[1..=end];
            if name.is_empty()
                || !name.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/' | b' ')
                })
            {
                return Err(("invalid quoted identifier".to_owned(), start));
            }
            self.pos += end + 2;
            return Ok((Tok::Quoted(name.to_owned()), start));
        }
        if c.is_ascii_digit()
            || (c == b'.' && self.bytes.get(self.pos + 1).is_some_and(u8::is_ascii_digit))
        {
            return self.number().map(|t| (t, start));
        }
        const PUNCT: &[&str] = &[
            "==", "!=", "<=", ">=", "&&", "||", ".?", "[?", "<", ">", "!", "+", "-", "*", "/", "%",
            "?", ":", ".", ",", "(", ")", "[", "]", "{", "}",
        ];
        for p in PUNCT {
            if rest.starts_with(p) {
                self.pos += p.len();
                return Ok((Tok::Punct(p), start));
            }
        }
        Err((
            format!(
                "unexpected character {:?}",
                rest.chars().next().unwrap_or(' ')
            ),
            start,
        ))
    }

    fn number(&mut self) -> LexResult<Tok> {
        let start = self.pos;
        let rest = &self.src[self.pos..];
        if rest.starts_with("0x") || rest.starts_with("0X") {
            let digits: String = rest[2..]
                .chars()
                .take_while(char::is_ascii_hexdigit)
                .collect();
            self.pos += 2 + digits.len();
            if digits.is_empty() {
                return Err(("invalid hex literal".to_owned(), start));
            }
            return self.int_suffix(&digits, 16, start);
        }
        let b = self.bytes;
        let mut i = self.pos;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let mut is_float = false;
        if i < b.len() && b[i] == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
            is_float = true;
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
        if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
            let mut j = i + 1;
            if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
                j += 1;
            }
            if j < b.len() && b[j].is_ascii_digit() {
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                i = j;
                is_float = true;
            }
        }
        let text = &self.src[start..i];
        self.pos = i;
        if is_float {
            return text
                .parse::<f64>()
                .map(Tok::Double)
                .map_err(|_| ("invalid double literal".to_owned(), start));
        }
        self.int_suffix(text, 10, start)
    }

    fn int_suffix(&mut self, digits: &str, radix: u32, start: usize) -> LexResult<Tok> {
        if matches!(self.bytes.get(self.pos), Some(b'u' | b'U')) {
            self.pos += 1;
            return u64::from_str_radix(digits, radix)
                .map(Tok::Uint)
                .map_err(|_| ("uint literal out of range".to_owned(), start));
        }
        // Parsed as u64 so that `-9223372036854775808` can be folded by the parser.
        match u64::from_str_radix(digits, radix) {
            Ok(v) if v <= i64::MAX as u64 => Ok(Tok::Int(v as i64)),
            // Only valid when negated; the parser folds the minus sign.
            Ok(v) if v == i64::MAX as u64 + 1 => Ok(Tok::Punct("MININT")),
            _ => Err(("int literal out of range".to_owned(), start)),
        }
    }

    fn string(&mut self, raw: bool, bytes: bool) -> LexResult<Tok> {
        let start = self.pos;
        let rest = &self.src[self.pos..];
        let q = &rest[..1];
        let triple = rest.len() >= 3 && rest.as_bytes()[..3] == *q.repeat(3).as_bytes();
        let delim = if triple { q.repeat(3) } else { q.to_owned() };
        self.pos += delim.len();
        let mut out: Vec<u8> = Vec::new();
        loop {
            let rest = &self.src[self.pos..];
            if rest.starts_with(&delim) {
                self.pos += delim.len();
                break;
            }
            let Some(c) = rest.chars().next() else {
                return Err(("unterminated string literal".to_owned(), start));
            };
            if !triple && (c == '\n' || c == '\r') {
                return Err(("newline in string literal".to_owned(), start));
            }
            if c == '\\' && !raw {
                self.pos += 1;
                self.escape(&mut out, bytes, start)?;
                continue;
            }
            if c == '\\' && raw {
                // A raw string keeps the backslash, but an escaped quote does not end it.
                out.push(b'\\');
                self.pos += 1;
                if let Some(n) = self.src[self.pos..].chars().next()
                    && n.to_string() == q
                {
                    out.extend_from_slice(q.as_bytes());
                    self.pos += 1;
                }
                continue;
            }
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            self.pos += c.len_utf8();
        }
        if bytes {
            Ok(Tok::Bytes(out))
        } else {
            String::from_utf8(out)
                .map(Tok::Str)
                .map_err(|_| ("invalid UTF-8 in string literal".to_owned(), start))
        }
    }

    fn escape(&mut self, out: &mut Vec<u8>, bytes: bool, start: usize) -> LexResult<()> {
        let Some(c) = self.src[self.pos..].chars().next() else {
            return Err(("unterminated escape".to_owned(), start));
        };
        self.pos += c.len_utf8();
        let simple = match c {
            'a' => Some(0x07),
            'b' => Some(0x08),
            'f' => Some(0x0c),
            'n' => Some(b'\n'),
            'r' => Some(b'\r'),
            't' => Some(b'\t'),
            'v' => Some(0x0b),
            '\\' => Some(b'\\'),
            '\'' => Some(b'\''),
            '"' => Some(b'"'),
            '`' => Some(b'`'),
            '?' => Some(b'?'),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            return Ok(());
        }
        let (digits, radix, is_byte) = match c {
            'x' | 'X' => (2, 16, true),
            'u' if !bytes => (4, 16, false),
            'U' if !bytes => (8, 16, false),
            '0'..='3' => {
                self.pos -= 1;
                (3, 8, true)
            }
            _ => return Err((format!("invalid escape sequence \\{c}"), start)),
        };
        let text = self.src.get(self.pos..self.pos + digits).unwrap_or("");
        if text.len() != digits || !text.chars().all(|d| d.is_digit(radix)) {
            return Err(("invalid escape sequence".to_owned(), start));
        }
        self.pos += digits;
        let code =
            u32::from_str_radix(text, radix).map_err(|_| ("bad escape".to_owned(), start))?;
        if is_byte && bytes {
            out.push(u8::try_from(code).map_err(|_| ("bad escape".to_owned(), start))?);
            return Ok(());
        }
        let ch = char::from_u32(code)
            .ok_or_else(|| ("invalid code point in escape".to_owned(), start))?;
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        Ok(())
    }
}

/// Parses `src` into an expression.
pub fn parse(src: &str, opts: ParseOptions) -> Result<Expr, ParseError> {
    let err = |message: String, pos: usize| ParseError {
        location: Location::of(src, pos as u32),
        message,
        pos: pos as u32,
    };
    if src.len() > MAX_EXPR_LEN {
        return Err(err(
            format!(
                "expression is {} bytes; the limit is {MAX_EXPR_LEN}",
                src.len()
            ),
            0,
        ));
    }
    let mut lexer = Lexer {
        src,
        bytes: src.as_bytes(),
        pos: 0,
    };
    let mut toks = Vec::new();
    loop {
        let (t, p) = lexer.next().map_err(|(m, p)| err(m, p))?;
        let eof = t == Tok::Eof;
        toks.push((t, p as u32));
        if eof {
            break;
        }
    }
    let mut p = Parser {
        toks,
        i: 0,
        depth: 0,
        opts,
        accu_counter: 0,
    };
    let e = p.expr().map_err(|(m, pos)| err(m, pos as usize))?;
    if p.peek() != &Tok::Eof {
        return Err(err(
            format!("unexpected {}", describe(p.peek())),
            p.pos() as usize,
        ));
    }
    Ok(e)
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Eof => "end of input".to_owned(),
        Tok::Punct(p) => format!("'{p}'"),
        Tok::Ident(s) => format!("identifier '{s}'"),
        other => format!("{other:?}"),
    }
}

type PResult<T> = Result<T, (String, u32)>;

struct Parser {
    toks: Vec<(Tok, u32)>,
    i: usize,
    depth: usize,
    opts: ParseOptions,
    accu_counter: u32,
}

const ACCU: &str = "@result";

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.i.min(self.toks.len() - 1)].0
    }
    fn pos(&self) -> u32 {
        self.toks[self.i.min(self.toks.len() - 1)].1
    }
    fn bump(&mut self) -> (Tok, u32) {
        let t = self.toks[self.i.min(self.toks.len() - 1)].clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }
    fn is(&self, p: &str) -> bool {
        matches!(self.peek(), Tok::Punct(q) if *q == p)
    }
    fn eat(&mut self, p: &str) -> bool {
        if self.is(p) {
            self.bump();
            true
        } else {
            false
        }
    }
    fn expect(&mut self, p: &str) -> PResult<u32> {
        if self.is(p) {
            Ok(self.bump().1)
        } else {
            Err((
                format!("expected '{p}', found {}", describe(self.peek())),
                self.pos(),
            ))
        }
    }
    fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err((
                format!("expression nests deeper than {MAX_DEPTH} levels; simplify it"),
                self.pos(),
            ));
        }
        Ok(())
    }
    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn expr(&mut self) -> PResult<Expr> {
        self.enter()?;
        let r = self.conditional();
        self.leave();
        r
    }

    fn conditional(&mut self) -> PResult<Expr> {
        let cond = self.or()?;
        if self.is("?") {
            let pos = self.bump().1;
            let a = self.or()?;
            self.expect(":")?;
            let b = self.expr()?;
            return Ok(Expr::call(pos, "_?_:_", vec![cond, a, b]));
        }
        Ok(cond)
    }

    /// A left-associative chain; each link counts as one level of nesting.
    fn chain(
        &mut self,
        ops: &[(&'static str, &'static str)],
        next: fn(&mut Self) -> PResult<Expr>,
    ) -> PResult<Expr> {
        let mut lhs = next(self)?;
        let mut links = 0;
        loop {
            let found = ops.iter().find(|(tok, _)| match self.peek() {
                Tok::In => *tok == "in",
                Tok::Punct(p) => p == tok,
                _ => false,
            });
            let Some((_, func)) = found else { break };
            let pos = self.bump().1;
            links += 1;
            if let Err(e) = self.enter() {
                self.depth -= links - 1;
                return Err(e);
            }
            let rhs = next(self);
            let rhs = match rhs {
                Ok(r) => r,
                Err(e) => {
                    self.depth -= links;
                    return Err(e);
                }
            };
            lhs = Expr::call(pos, func, vec![lhs, rhs]);
        }
        self.depth -= links;
        Ok(lhs)
    }

    fn or(&mut self) -> PResult<Expr> {
        self.chain(&[("||", "_||_")], Self::and)
    }
    fn and(&mut self) -> PResult<Expr> {
        self.chain(&[("&&", "_&&_")], Self::relation)
    }
    fn relation(&mut self) -> PResult<Expr> {
        self.chain(
            &[
                ("==", "_==_"),
                ("!=", "_!=_"),
                ("<=", "_<=_"),
                (">=", "_>=_"),
                ("<", "_<_"),
                (">", "_>_"),
                ("in", "@in"),
            ],
            Self::addition,
        )
    }
    fn addition(&mut self) -> PResult<Expr> {
        self.chain(&[("+", "_+_"), ("-", "_-_")], Self::multiplication)
    }
    fn multiplication(&mut self) -> PResult<Expr> {
        self.chain(&[("*", "_*_"), ("/", "_/_"), ("%", "_%_")], Self::unary)
    }

    fn unary(&mut self) -> PResult<Expr> {
        if self.is("!") || self.is("-") {
            let (tok, pos) = self.bump();
            let op = if tok == Tok::Punct("!") { "!_" } else { "-_" };
            self.enter()?;
            // Fold a minus directly in front of a numeric literal into the literal.
            if op == "-_" {
                let folded = match self.peek().clone() {
                    Tok::Int(i) => Some(Value::Int(-i)),
                    Tok::Double(d) => Some(Value::Double(-d)),
                    Tok::Punct("MININT") => Some(Value::Int(i64::MIN)),
                    _ => None,
                };
                if let Some(v) = folded {
                    let lpos = self.bump().1;
                    let e = self.member_suffix(Expr::lit(lpos.min(pos), v));
                    self.leave();
                    return e;
                }
            }
            let inner = self.unary();
            self.leave();
            return Ok(Expr::call(pos, op, vec![inner?]));
        }
        let prim = self.primary()?;
        self.member_suffix(prim)
    }

    fn member_suffix(&mut self, e: Expr) -> PResult<Expr> {
        let mut links = 0;
        let r = self.member_links(e, &mut links);
        self.depth -= links;
        r
    }

    fn member_links(&mut self, mut e: Expr, links: &mut usize) -> PResult<Expr> {
        loop {
            if self.is(".") || self.is(".?") {
                let (tok, pos) = self.bump();
                let optional = tok == Tok::Punct(".?");
                let (ftok, fpos) = self.bump();
                let quoted = matches!(ftok, Tok::Quoted(_));
                let field = match ftok {
                    Tok::Ident(s) | Tok::Quoted(s) => s,
                    t => {
                        return Err((format!("expected field name, found {}", describe(&t)), fpos));
                    }
                };
                *links += 1;
                self.enter()?;
                if !optional && self.is("(") {
                    if quoted {
                        return Err(("a quoted identifier cannot be called".to_owned(), pos));
                    }
                    self.bump();
                    let args = self.args(")")?;
                    e = self.member_call(pos, e, &field, args)?;
                } else {
                    e = Expr::new(
                        pos,
                        ExprKind::Select {
                            operand: Box::new(e),
                            field: Arc::from(field),
                            test: false,
                            optional,
                        },
                    );
                }
            } else if self.is("[") || self.is("[?") {
                let (tok, pos) = self.bump();
                *links += 1;
                self.enter()?;
                let idx = self.expr()?;
                self.expect("]")?;
                let f = if tok == Tok::Punct("[?") {
                    "_[?_]"
                } else {
                    "_[_]"
                };
                e = Expr::call(pos, f, vec![e, idx]);
            } else if self.is("{") && is_struct_name(&e) {
                let pos = self.bump().1;
                let name = e.qualified_name().unwrap_or_default();
                e = self.struct_fields(pos, name)?;
            } else {
                return Ok(e);
            }
        }
    }

    fn args(&mut self, close: &str) -> PResult<Vec<Expr>> {
        let mut out = Vec::new();
        if self.eat(close) {
            return Ok(out);
        }
        loop {
            out.push(self.expr()?);
            if self.eat(close) {
                return Ok(out);
            }
            self.expect(",")?;
        }
    }

    fn struct_fields(&mut self, pos: u32, name: String) -> PResult<Expr> {
        self.enter()?;
        let mut fields = Vec::new();
        loop {
            if self.eat("}") {
                break;
            }
            let optional = self.eat("?");
            let (t, p) = self.bump();
            let f = match t {
                Tok::Ident(s) | Tok::Quoted(s) => s,
                t => return Err((format!("expected field name, found {}", describe(&t)), p)),
            };
            self.expect(":")?;
            let v = self.expr()?;
            fields.push((Arc::from(f), v, optional));
            if self.eat("}") {
                break;
            }
            self.expect(",")?;
        }
        self.leave();
        Ok(Expr::new(
            pos,
            ExprKind::Struct {
                name: Arc::from(name),
                fields,
            },
        ))
    }

    fn primary(&mut self) -> PResult<Expr> {
        let (tok, pos) = self.bump();
        Ok(match tok {
            Tok::Int(i) => Expr::lit(pos, Value::Int(i)),
            Tok::Uint(u) => Expr::lit(pos, Value::Uint(u)),
            Tok::Double(d) => Expr::lit(pos, Value::Double(d)),
            Tok::Str(s) => Expr::lit(pos, Value::String(Arc::from(s))),
            Tok::Bytes(b) => Expr::lit(pos, Value::Bytes(Arc::from(b))),
            Tok::True => Expr::lit(pos, Value::Bool(true)),
            Tok::False => Expr::lit(pos, Value::Bool(false)),
            Tok::Null => Expr::lit(pos, Value::Null),
            Tok::Punct("MININT") => {
                return Err(("int literal out of range".to_owned(), pos));
            }
            Tok::Punct(".") => {
                // Root-scoped identifier `.name`.
                let (t, p) = self.bump();
                let Tok::Ident(name) = t else {
                    return Err(("expected identifier after '.'".to_owned(), p));
                };
                if self.is("(") {
                    self.bump();
                    let args = self.args(")")?;
                    return Ok(Expr::new(
                        pos,
                        ExprKind::Call {
                            target: None,
                            func: Arc::from(format!(".{name}")),
                            args,
                        },
                    ));
                }
                Expr::ident(pos, &format!(".{name}"))
            }
            Tok::Ident(name) => {
                if RESERVED.contains(&name.as_str()) {
                    return Err((format!("reserved identifier '{name}'"), pos));
                }
                if self.is("(") {
                    self.bump();
                    self.enter()?;
                    let args = self.args(")");
                    self.leave();
                    return self.global_call(pos, &name, args?);
                }
                Expr::ident(pos, &name)
            }
            Tok::Punct("(") => {
                let e = self.expr()?;
                self.expect(")")?;
                e
            }
            Tok::Punct(open @ ("[" | "[?")) => {
                self.enter()?;
                let mut elems = Vec::new();
                let mut optional = Vec::new();
                let mut first_optional = open == "[?";
                loop {
                    if first_optional {
                        first_optional = false;
                        optional.push(0);
                        elems.push(self.expr()?);
                        if self.eat("]") {
                            break;
                        }
                        self.expect(",")?;
                        continue;
                    }
                    if self.eat("]") {
                        break;
                    }
                    if self.eat("?") {
                        optional.push(elems.len());
                    }
                    elems.push(self.expr()?);
                    if self.eat("]") {
                        break;
                    }
                    self.expect(",")?;
                }
                self.leave();
                Expr::new(pos, ExprKind::List { elems, optional })
            }
            Tok::Punct("{") => {
                self.enter()?;
                let mut entries = Vec::new();
                loop {
                    if self.eat("}") {
                        break;
                    }
                    let optional = self.eat("?");
                    let k = self.expr()?;
                    self.expect(":")?;
                    let v = self.expr()?;
                    entries.push((k, v, optional));
                    if self.eat("}") {
                        break;
                    }
                    self.expect(",")?;
                }
                self.leave();
                Expr::new(pos, ExprKind::Map(entries))
            }
            t => return Err((format!("unexpected {}", describe(&t)), pos)),
        })
    }

    fn global_call(&mut self, pos: u32, name: &str, mut args: Vec<Expr>) -> PResult<Expr> {
        if self.opts.macros && name == "has" && args.len() == 1 {
            let arg = args.pop().unwrap_or_else(|| Expr::lit(pos, Value::Null));
            return match arg.kind {
                ExprKind::Select {
                    operand,
                    field,
                    optional: false,
                    ..
                } => Ok(Expr::new(
                    pos,
                    ExprKind::Select {
                        operand,
                        field,
                        test: true,
                        optional: false,
                    },
                )),
                _ => Err(("invalid argument to has() macro".to_owned(), pos)),
            };
        }
        Ok(Expr::new(
            pos,
            ExprKind::Call {
                target: None,
                func: Arc::from(name),
                args,
            },
        ))
    }

    fn iter_var_name(e: &Expr) -> PResult<Arc<str>> {
        match &e.kind {
            ExprKind::Ident(n) if !n.starts_with('.') => Ok(n.clone()),
            _ => Err(("argument must be a simple name".to_owned(), e.pos)),
        }
    }

    fn fresh_accu(&mut self) -> Arc<str> {
        self.accu_counter += 1;
        Arc::from(ACCU)
    }

    #[allow(clippy::too_many_lines)]
    fn member_call(
        &mut self,
        pos: u32,
        target: Expr,
        name: &str,
        mut args: Vec<Expr>,
    ) -> PResult<Expr> {
        let plain = |target: Expr, args: Vec<Expr>| {
            Ok(Expr::new(
                pos,
                ExprKind::Call {
                    target: Some(Box::new(target)),
                    func: Arc::from(name),
                    args,
                },
            ))
        };
        if !self.opts.macros {
            return plain(target, args);
        }
        // Test-only macros of the conformance suite's block_ext: cel.block, cel.index, cel.iterVar,
        // cel.accuVar (see tests/cel-spec/README.md).
        if target.qualified_name().as_deref() == Some("cel") {
            let int_arg = |e: &Expr| match &e.kind {
                ExprKind::Lit(Value::Int(i)) => Ok(*i),
                _ => Err(("argument must be an int literal".to_owned(), e.pos)),
            };
            match (name, args.len()) {
                ("index", 1) => {
                    return Ok(Expr::ident(pos, &format!("@index{}", int_arg(&args[0])?)));
                }
                ("iterVar", 2) => {
                    return Ok(Expr::ident(
                        pos,
                        &format!("@it:{}:{}", int_arg(&args[0])?, int_arg(&args[1])?),
                    ));
                }
                ("accuVar", 2) => {
                    return Ok(Expr::ident(
                        pos,
                        &format!("@ac:{}:{}", int_arg(&args[0])?, int_arg(&args[1])?),
                    ));
                }
                ("block", 2) => {
                    let result = args.pop().unwrap_or_else(|| Expr::lit(pos, Value::Null));
                    let list = args.pop().unwrap_or_else(|| Expr::lit(pos, Value::Null));
                    let ExprKind::List { elems, .. } = list.kind else {
                        return Err(("cel.block needs a list literal".to_owned(), pos));
                    };
                    let mut body = result;
                    for (i, init) in elems.into_iter().enumerate().rev() {
                        body = bind(pos, Arc::from(format!("@index{i}")), init, body);
                    }
                    return Ok(body);
                }
                _ => {}
            }
        }
        // cel.bind(var, init, expr)
        if name == "bind" && args.len() == 3 && target.qualified_name().as_deref() == Some("cel") {
            let var = Self::iter_var_name(&args[0])?;
            let result = args.pop().unwrap_or_else(|| Expr::lit(pos, Value::Null));
            let init = args.pop().unwrap_or_else(|| Expr::lit(pos, Value::Null));
            return Ok(bind(pos, var, init, result));
        }
        let b = |v: bool| Expr::lit(pos, Value::Bool(v));
        let id = |n: &Arc<str>| Expr::new(pos, ExprKind::Ident(n.clone()));
        let call = |f: &str, a: Vec<Expr>| Expr::call(pos, f, a);
        let list_of = |e: Expr| {
            Expr::new(
                pos,
                ExprKind::List {
                    elems: vec![e],
                    optional: vec![],
                },
            )
        };
        let empty_list = || {
            Expr::new(
                pos,
                ExprKind::List {
                    elems: vec![],
                    optional: vec![],
                },
            )
        };
        let two = matches!(
            (name, args.len()),
            ("all" | "exists" | "existsOne" | "exists_one", 3)
                | (
                    "transformList" | "transformMap" | "transformMapEntry",
                    3 | 4
                )
        );
        let one = matches!(
            (name, args.len()),
            ("all" | "exists" | "exists_one" | "existsOne" | "filter", 2) | ("map", 2 | 3)
        );
        if !one && !two {
            return plain(target, args);
        }
        let v1 = Self::iter_var_name(&args[0])?;
        let v2 = if two {
            Some(Self::iter_var_name(&args[1])?)
        } else {
            None
        };
        if let Some(v2) = &v2
            && *v2 == v1
        {
            return Err((format!("duplicate variable name '{v1}'"), args[1].pos));
        }
        let accu = self.fresh_accu();
        if v1.as_ref() == ACCU || v2.as_deref() == Some(ACCU) {
            return Err((
                "iteration variable overwrites accumulator variable".to_owned(),
                pos,
            ));
        }
        let mut rest: Vec<Expr> = args.drain(if two { 2.. } else { 1.. }).collect();
        let (init, cond, step, result) = match name {
            "all" => {
                let p = rest.remove(0);
                (
                    b(true),
                    call("@not_strictly_false", vec![id(&accu)]),
                    call("_&&_", vec![id(&accu), p]),
                    id(&accu),
                )
            }
            "exists" => {
                let p = rest.remove(0);
                (
                    b(false),
                    call("@not_strictly_false", vec![call("!_", vec![id(&accu)])]),
                    call("_||_", vec![id(&accu), p]),
                    id(&accu),
                )
            }
            "exists_one" | "existsOne" => {
                let p = rest.remove(0);
                (
                    Expr::lit(pos, Value::Int(0)),
                    b(true),
                    call(
                        "_?_:_",
                        vec![
                            p,
                            call("_+_", vec![id(&accu), Expr::lit(pos, Value::Int(1))]),
                            id(&accu),
                        ],
                    ),
                    call("_==_", vec![id(&accu), Expr::lit(pos, Value::Int(1))]),
                )
            }
            "map" | "transformList" if rest.len() == 1 => {
                let f = rest.remove(0);
                (
                    empty_list(),
                    b(true),
                    call("_+_", vec![id(&accu), list_of(f)]),
                    id(&accu),
                )
            }
            "map" | "transformList" => {
                let filter = rest.remove(0);
                let f = rest.remove(0);
                (
                    empty_list(),
                    b(true),
                    call(
                        "_?_:_",
                        vec![filter, call("_+_", vec![id(&accu), list_of(f)]), id(&accu)],
                    ),
                    id(&accu),
                )
            }
            "filter" => {
                let p = rest.remove(0);
                (
                    empty_list(),
                    b(true),
                    call(
                        "_?_:_",
                        vec![p, call("_+_", vec![id(&accu), list_of(id(&v1))]), id(&accu)],
                    ),
                    id(&accu),
                )
            }
            "transformMap" | "transformMapEntry" => {
                let entry = name == "transformMapEntry";
                let (filter, f) = if rest.len() == 2 {
                    let fl = rest.remove(0);
                    (Some(fl), rest.remove(0))
                } else {
                    (None, rest.remove(0))
                };
                let v2n = v2.clone().unwrap_or_else(|| v1.clone());
                let add = if entry {
                    call("@map_insert_entry", vec![id(&accu), f])
                } else {
                    call("@map_insert", vec![id(&accu), id(&v1), f])
                };
                let _ = v2n;
                let step = match filter {
                    Some(fl) => call("_?_:_", vec![fl, add, id(&accu)]),
                    None => add,
                };
                (
                    Expr::new(pos, ExprKind::Map(vec![])),
                    b(true),
                    step,
                    id(&accu),
                )
            }
            _ => return Err((format!("unsupported macro {name}"), pos)),
        };
        Ok(Expr::new(
            pos,
            ExprKind::Comprehension(Box::new(Comprehension {
                iter_var: v1,
                iter_var2: v2,
                iter_range: target,
                accu_var: accu,
                accu_init: init,
                loop_cond: cond,
                loop_step: step,
                result,
            })),
        ))
    }
}

/// `cel.bind(var, init, body)` as a comprehension over an empty list.
fn bind(pos: u32, var: Arc<str>, init: Expr, body: Expr) -> Expr {
    Expr::new(
        pos,
        ExprKind::Comprehension(Box::new(Comprehension {
            iter_var: Arc::from("#unused"),
            iter_var2: None,
            iter_range: Expr::new(
                pos,
                ExprKind::List {
                    elems: vec![],
                    optional: vec![],
                },
            ),
            accu_var: var.clone(),
            accu_init: init,
            loop_cond: Expr::lit(pos, Value::Bool(false)),
            loop_step: Expr::new(pos, ExprKind::Ident(var)),
            result: body,
        })),
    )
}

fn is_struct_name(e: &Expr) -> bool {
    e.qualified_name().is_some()
}
