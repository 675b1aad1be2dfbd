//! migrations: the SQL under each `migrations/` directory, parsed with `sqlparser` (PostgreSQL
//! dialect) and read in file-name order as one schema, gives every tenant table (a table with a
//! `tenant_id` column) row level security that is enabled, forced and restricted by a tenant
//! policy, keeps `tenant_id` in its keys, and never sets the tenant for a whole session.
//!
//! `SELECT arq.enable_tenant_rls('t')` (arq-tenancy's support migration) counts as ENABLE, FORCE
//! and the restrictive policy for `t`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::sync::LazyLock;

use regex::Regex;
use sqlparser::ast::{
    AlterTableOperation, ColumnOption, ContextModifier, CreatePolicyCommand, CreatePolicyType,
    FunctionSecurity, IndexColumn, ObjectName, Set, Statement, TableConstraint, visit_relations,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use crate::check::registry::{Rule, Severity};
use crate::check::{Ctx, Finding, SourceFile};

pub(crate) const RULES: &[Rule] = &[
    Rule::new(
        "migrations-parses",
        Severity::Error,
        "Every migration parses as PostgreSQL.",
        "Fix the syntax error at the reported line.",
    )
    .input(),
    Rule::new(
        "migrations-rls-enabled",
        Severity::Error,
        "Every table with a tenant_id column has row level security enabled.",
        "ALTER TABLE t ENABLE ROW LEVEL SECURITY (or SELECT arq.enable_tenant_rls('t')).",
    )
    .security("9.1"),
    Rule::new(
        "migrations-rls-forced",
        Severity::Error,
        "Every table with a tenant_id column forces row level security, so its owner is filtered too.",
        "ALTER TABLE t FORCE ROW LEVEL SECURITY (or SELECT arq.enable_tenant_rls('t')).",
    )
    .security("9.1"),
    Rule::new(
        "migrations-tenant-policy",
        Severity::Error,
        "Every tenant table has a RESTRICTIVE policy for all commands with USING and WITH CHECK on tenant_id.",
        "CREATE POLICY tenant_isolation ON t AS RESTRICTIVE FOR ALL USING (tenant_id = arq.current_tenant_id()) WITH CHECK (tenant_id = arq.current_tenant_id()).",
    )
    .security("9.1"),
    Rule::new(
        "migrations-tenant-primary-key",
        Severity::Error,
        "The primary key of every tenant table starts with tenant_id.",
        "PRIMARY KEY (tenant_id, id).",
    )
    .security("6.5"),
    Rule::new(
        "migrations-tenant-unique",
        Severity::Error,
        "Every unique constraint or unique index of a tenant table includes tenant_id (a duplicate-key error must not reveal another tenant's row).",
        "UNIQUE (tenant_id, column).",
    )
    .security("6.5"),
    Rule::new(
        "migrations-tenant-foreign-key",
        Severity::Error,
        "Every foreign key between tenant tables pairs tenant_id with tenant_id.",
        "FOREIGN KEY (tenant_id, other_id) REFERENCES other (tenant_id, id).",
    )
    .security("7.1"),
    Rule::new(
        "migrations-view-security-invoker",
        Severity::Error,
        "Every view over tenant tables is security_invoker, so row level security applies to the caller.",
        "CREATE VIEW v WITH (security_invoker = true) AS ...",
    )
    .security("8.2"),
    Rule::new(
        "migrations-security-definer",
        Severity::Error,
        "SECURITY DEFINER functions appear only on the allow-list in [check] security_definer_allow.",
        "Make the function SECURITY INVOKER, or add its name to security_definer_allow with a reason in review.",
    )
    .security("8.2"),
    Rule::new(
        "migrations-session-tenant",
        Severity::Error,
        "The tenant is never set for a whole session (SET app.tenant_id, set_config(..., false)) in SQL or code; only transaction-local.",
        "Use set_config('app.tenant_id', $1, true) inside the tenant transaction (arq_tenancy does this).",
    )
    .security("9.1"),
];

#[derive(Debug, Default)]
struct Table {
    file: String,
    line: u32,
    tenant: bool,
}

/// (table, columns, referenced table, referenced columns, file, line).
type ForeignKey = (String, Vec<String>, String, Vec<String>, String, u32);

#[derive(Debug, Default)]
struct Schema {
    tables: BTreeMap<String, Table>,
    enabled: BTreeSet<String>,
    forced: BTreeSet<String>,
    /// Tables with a correct tenant policy.
    policy: BTreeSet<String>,
    /// (table, columns, file, line) for primary keys, unique keys and indexes.
    pks: Vec<(String, Vec<String>, String, u32)>,
    uniques: Vec<(String, Vec<String>, String, u32)>,
    /// (table, columns, referenced table, referenced columns, file, line).
    fks: Vec<ForeignKey>,
    /// (view, relations, security_invoker, file, line).
    views: Vec<(String, Vec<String>, bool, String, u32)>,
}

/// The unqualified, lowercased table name.
fn tname(n: &ObjectName) -> String {
    let s = n.to_string().to_ascii_lowercase().replace('"', "");
    s.rsplit('.').next().unwrap_or(&s).to_owned()
}

fn cols(c: &[IndexColumn]) -> Vec<String> {
    c.iter()
        .map(|c| {
            c.column
                .expr
                .to_string()
                .to_ascii_lowercase()
                .replace('"', "")
        })
        .collect()
}

fn idents(c: &[sqlparser::ast::Ident]) -> Vec<String> {
    c.iter().map(|i| i.value.to_ascii_lowercase()).collect()
}

static ENABLE_FN: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?i)enable_tenant_rls\s*\(\s*'([^']+)'").ok());
static PARSER_LINE: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"Line: (\d+)").ok());
/// Session-level tenant settings in code or SQL text (statement parsing covers .sql files; this
/// covers SQL embedded in Rust strings).
static SESSION_SET: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"(?i)(\bset\s+(session\s+)?app\.tenant_id\b|set_config\s*\(\s*'app\.tenant_id'\s*,[^,()]+,\s*false\s*\))").ok()
});

fn constraint(s: &mut Schema, table: &str, c: &TableConstraint, file: &str, line: u32) {
    match c {
        TableConstraint::PrimaryKey(pk) => {
            s.pks
                .push((table.to_owned(), cols(&pk.columns), file.to_owned(), line));
        }
        TableConstraint::Unique(u) => {
            s.uniques
                .push((table.to_owned(), cols(&u.columns), file.to_owned(), line));
        }
        TableConstraint::ForeignKey(fk) => s.fks.push((
            table.to_owned(),
            idents(&fk.columns),
            tname(&fk.foreign_table),
            idents(&fk.referred_columns),
            file.to_owned(),
            line,
        )),
        _ => {}
    }
}

fn statement(
    s: &mut Schema,
    st: &Statement,
    file: &str,
    line: u32,
    out: &mut Vec<Finding>,
    allow: &[String],
) {
    match st {
        Statement::CreateTable(ct) => {
            let t = tname(&ct.name);
            let tenant = ct
                .columns
                .iter()
                .any(|c| c.name.value.eq_ignore_ascii_case("tenant_id"));
            for col in &ct.columns {
                let cname = col.name.value.to_ascii_lowercase();
                for o in &col.options {
                    match &o.option {
                        ColumnOption::PrimaryKey(_) => {
                            s.pks
                                .push((t.clone(), vec![cname.clone()], file.to_owned(), line));
                        }
                        ColumnOption::Unique(_) => {
                            s.uniques
                                .push((t.clone(), vec![cname.clone()], file.to_owned(), line));
                        }
                        ColumnOption::ForeignKey(fk) => s.fks.push((
                            t.clone(),
                            vec![cname.clone()],
                            tname(&fk.foreign_table),
                            idents(&fk.referred_columns),
                            file.to_owned(),
                            line,
                        )),
                        _ => {}
                    }
                }
            }
            for c in &ct.constraints {
                constraint(s, &t, c, file, line);
            }
            s.tables.insert(
                t,
                Table {
                    file: file.to_owned(),
                    line,
                    tenant,
                },
            );
        }
        Statement::AlterTable(at) => {
            let t = tname(&at.name);
            for op in &at.operations {
                match op {
                    AlterTableOperation::EnableRowLevelSecurity => {
                        s.enabled.insert(t.clone());
                    }
                    AlterTableOperation::ForceRowLevelSecurity => {
                        s.forced.insert(t.clone());
                    }
                    AlterTableOperation::DisableRowLevelSecurity => {
                        s.enabled.remove(&t);
                    }
                    AlterTableOperation::NoForceRowLevelSecurity => {
                        s.forced.remove(&t);
                    }
                    AlterTableOperation::AddConstraint { constraint: c, .. } => {
                        constraint(s, &t, c, file, line);
                    }
                    _ => {}
                }
            }
        }
        Statement::CreateIndex(ix) if ix.unique => {
            s.uniques.push((
                tname(&ix.table_name),
                cols(&ix.columns),
                file.to_owned(),
                line,
            ));
        }
        Statement::CreatePolicy(p) => {
            let restrictive = matches!(p.policy_type, Some(CreatePolicyType::Restrictive));
            let all = matches!(p.command, None | Some(CreatePolicyCommand::All));
            let on_tenant = |e: &Option<sqlparser::ast::Expr>| {
                e.as_ref()
                    .is_some_and(|e| e.to_string().to_ascii_lowercase().contains("tenant_id"))
            };
            if restrictive && all && on_tenant(&p.using) && on_tenant(&p.with_check) {
                s.policy.insert(tname(&p.table_name));
            }
        }
        Statement::CreateView(v) => {
            let mut rels = Vec::new();
            let _ = visit_relations(&v.query, |r| {
                rels.push(tname(r));
                ControlFlow::<()>::Continue(())
            });
            let opts = v
                .options
                .to_string()
                .to_ascii_lowercase()
                .replace([' ', '\''], "");
            let invoker =
                opts.contains("security_invoker=true") || opts.contains("security_invoker=on");
            s.views
                .push((tname(&v.name), rels, invoker, file.to_owned(), line));
        }
        Statement::CreateFunction(f) if matches!(f.security, Some(FunctionSecurity::Definer)) => {
            let name = f.name.to_string().to_ascii_lowercase().replace('"', "");
            if !allow.iter().any(|a| a.eq_ignore_ascii_case(&name)) {
                out.push(Finding::new(
                    "migrations-security-definer",
                    file,
                    line,
                    format!("function {name} is SECURITY DEFINER and not in [check] security_definer_allow"),
                ));
            }
        }
        Statement::Set(Set::SingleAssignment {
            scope, variable, ..
        }) if variable.to_string().eq_ignore_ascii_case("app.tenant_id")
            && !matches!(scope, Some(ContextModifier::Local)) =>
        {
            out.push(Finding::new(
                "migrations-session-tenant",
                file,
                line,
                "SET app.tenant_id sets the tenant for the whole session (it leaks to the next user of a pooled connection)".to_owned(),
            ));
        }
        other => {
            let text = other.to_string();
            if let Some(re) = ENABLE_FN.as_ref() {
                for c in re.captures_iter(&text) {
                    let t = c[1].to_ascii_lowercase();
                    let t = t.rsplit('.').next().unwrap_or(&t).to_owned();
                    s.enabled.insert(t.clone());
                    s.forced.insert(t.clone());
                    s.policy.insert(t);
                }
            }
            if SESSION_SET.as_ref().is_some_and(|re| re.is_match(&text)) {
                out.push(Finding::new(
                    "migrations-session-tenant",
                    file,
                    line,
                    "set_config('app.tenant_id', ..., false) sets the tenant for the whole session"
                        .to_owned(),
                ));
            }
        }
    }
}

/// Parses `f` into (start line, statement) pairs.
pub(crate) fn parse(f: &SourceFile) -> Result<Vec<(u32, Statement)>, (u32, String)> {
    let dialect = PostgreSqlDialect {};
    let err = |e: sqlparser::parser::ParserError| {
        let msg = e.to_string();
        let line = PARSER_LINE
            .as_ref()
            .and_then(|re| re.captures(&msg))
            .and_then(|c| c[1].parse().ok())
            .unwrap_or(1);
        (line, msg)
    };
    let mut p = Parser::new(&dialect).try_with_sql(&f.text).map_err(err)?;
    let mut out = Vec::new();
    loop {
        while p.consume_token(&Token::SemiColon) {}
        let next = p.peek_token();
        if next.token == Token::EOF {
            break;
        }
        let line = u32::try_from(next.span.start.line).unwrap_or(1);
        let st = p.parse_statement().map_err(err)?;
        out.push((line, st));
    }
    Ok(out)
}

pub(crate) fn check(ctx: &Ctx, out: &mut Vec<Finding>) {
    // One schema per migrations directory, files in name order. Other SQL (seed data, role
    // set-up scripts run by an operator) is not a migration and may use what migrations must not.
    let mut groups: BTreeMap<String, Vec<&SourceFile>> = BTreeMap::new();
    for f in ctx.files_where(|p| {
        p.ends_with(".sql") && (p.starts_with("migrations/") || p.contains("/migrations/"))
    }) {
        let dir = f.rel.rsplit_once('/').map_or("", |(d, _)| d).to_owned();
        groups.entry(dir).or_default().push(f);
    }
    for files in groups.values() {
        let mut s = Schema::default();
        for f in files {
            match parse(f) {
                Ok(stmts) => {
                    for (line, st) in &stmts {
                        statement(
                            &mut s,
                            st,
                            &f.rel,
                            *line,
                            out,
                            &ctx.settings.security_definer_allow,
                        );
                    }
                }
                Err((line, msg)) => out.push(Finding::new(
                    "migrations-parses",
                    &f.rel,
                    line,
                    format!("not valid PostgreSQL: {msg}"),
                )),
            }
        }
        report(&s, out);
    }
    // Session-level tenant settings in code.
    if let Some(re) = SESSION_SET.as_ref() {
        for f in ctx.files_where(|p| p.ends_with(".rs")) {
            for m in re.find_iter(&f.text) {
                out.push(Finding::new(
                    "migrations-session-tenant",
                    &f.rel,
                    crate::check::line_of_offset(&f.text, m.start()),
                    format!("`{}` sets the tenant for the whole session; use set_config('app.tenant_id', $1, true) in a transaction", m.as_str()),
                ));
            }
        }
    }
}

fn report(s: &Schema, out: &mut Vec<Finding>) {
    let tenant = |t: &str| s.tables.get(t).is_some_and(|t| t.tenant);
    for (name, t) in s.tables.iter().filter(|(_, t)| t.tenant) {
        if !s.enabled.contains(name) {
            out.push(Finding::new(
                "migrations-rls-enabled",
                &t.file,
                t.line,
                format!("tenant table {name} does not enable row level security"),
            ));
        }
        if !s.forced.contains(name) {
            out.push(Finding::new(
                "migrations-rls-forced",
                &t.file,
                t.line,
                format!("tenant table {name} does not force row level security"),
            ));
        }
        if !s.policy.contains(name) {
            out.push(Finding::new(
                "migrations-tenant-policy",
                &t.file,
                t.line,
                format!("tenant table {name} has no RESTRICTIVE policy FOR ALL with USING and WITH CHECK on tenant_id"),
            ));
        }
        if !s.pks.iter().any(|(t, _, _, _)| t == name) {
            out.push(Finding::new(
                "migrations-tenant-primary-key",
                &t.file,
                t.line,
                format!("tenant table {name} has no primary key; use PRIMARY KEY (tenant_id, id)"),
            ));
        }
    }
    for (t, c, file, line) in &s.pks {
        if tenant(t) && c.first().map(String::as_str) != Some("tenant_id") {
            out.push(Finding::new(
                "migrations-tenant-primary-key",
                file,
                *line,
                format!(
                    "primary key ({}) of tenant table {t} does not start with tenant_id",
                    c.join(", ")
                ),
            ));
        }
    }
    for (t, c, file, line) in &s.uniques {
        if tenant(t) && !c.iter().any(|c| c == "tenant_id") {
            out.push(Finding::new(
                "migrations-tenant-unique",
                file,
                *line,
                format!(
                    "unique key ({}) of tenant table {t} does not include tenant_id",
                    c.join(", ")
                ),
            ));
        }
    }
    for (t, c, rt, rc, file, line) in &s.fks {
        if !(tenant(t) && tenant(rt)) {
            continue;
        }
        let paired = c
            .iter()
            .position(|x| x == "tenant_id")
            .is_some_and(|i| rc.get(i).map(String::as_str) == Some("tenant_id"));
        if !paired {
            out.push(Finding::new(
                "migrations-tenant-foreign-key",
                file,
                *line,
                format!("foreign key ({}) from {t} to tenant table {rt} does not pair tenant_id with tenant_id", c.join(", ")),
            ));
        }
    }
    for (v, rels, invoker, file, line) in &s.views {
        if !invoker && let Some(r) = rels.iter().find(|r| tenant(r)) {
            out.push(Finding::new(
                "migrations-view-security-invoker",
                file,
                *line,
                format!("view {v} reads tenant table {r} but is not security_invoker"),
            ));
        }
    }
}
