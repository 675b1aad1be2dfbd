//! The start-up audit: is this database safe to serve tenants from?
//!
//! [`audit`] inspects the catalog and returns an [`AuditReport`] naming every [`Violation`];
//! `arq check --live` prints it. [`ensure_safe`] is what a service calls before it starts
//! serving: it returns [`UnsafeDatabase`] (whose message lists each violation) on any violation,
//! so the service refuses to start.
//!
//! What is checked (a *tenant table* is any table with a `tenant_id` column outside the system
//! schemas):
//!
//! - the runtime role is not superuser, has no `BYPASSRLS`, cannot switch to a role that is or has
//!   either, and owns no tenant table (directly or through role membership);
//! - every tenant table has row level security enabled **and** forced, and a restrictive policy for
//!   all commands whose `USING` and `WITH CHECK` are exactly `tenant_id = arq.current_tenant_id()`;
//! - every unique index (primary keys included) of a tenant table contains `tenant_id`, so a
//!   uniqueness violation never reveals another tenant's row;
//! - every foreign key between tenant tables includes `tenant_id` on both sides;
//! - every view over tenant tables (directly or through other views) is `security_invoker`; no
//!   materialized view is built over tenant tables (it cannot have row level security);
//! - no `SECURITY DEFINER` function that the runtime role may execute is owned by a role that
//!   bypasses row level security.
//!
//! A tenant table the runtime role may only `INSERT` into — no `SELECT` on any column, no
//! `UPDATE`, `DELETE` or `TRUNCATE`, through `PUBLIC` and role membership included — is
//! *insert-only* (arq-queue's transactional outbox is one: its relay, under another role, reads
//! every tenant's rows). The role can never read or change a row of it, so it needs neither row
//! level security nor `tenant_id` in its unique indexes and foreign keys; it is listed in
//! [`AuditReport::insert_only_tables`] instead. It must still not be owned by the runtime role
//! (an owner can grant itself anything). What the audit cannot rule out there is the service
//! inserting a row for another tenant — the same as for any table without a tenant policy.

use std::fmt;

use sqlx::AssertSqlSafe;
use sqlx::postgres::PgConnection;

/// One reason the database is unsafe.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// The runtime role does not exist.
    UnknownRole {
        /// The role name.
        role: String,
    },
    /// The runtime role is a superuser: row level security does not apply to it.
    Superuser {
        /// The role name.
        role: String,
    },
    /// The runtime role has `BYPASSRLS`.
    BypassRls {
        /// The role name.
        role: String,
    },
    /// The runtime role is a member of a role that is superuser or has `BYPASSRLS`.
    CanAssumePrivilegedRole {
        /// The runtime role.
        role: String,
        /// The privileged role it can switch to.
        privileged: String,
    },
    /// The runtime role owns (or inherits ownership of) a tenant table.
    OwnsTenantTable {
        /// The role name.
        role: String,
        /// The table.
        table: String,
    },
    /// Row level security is not enabled on a tenant table.
    RlsNotEnabled {
        /// The table.
        table: String,
    },
    /// Row level security is not forced on a tenant table (the owner bypasses it).
    RlsNotForced {
        /// The table.
        table: String,
    },
    /// A tenant table has no restrictive tenant policy with `USING` and `WITH CHECK`.
    MissingTenantPolicy {
        /// The table.
        table: String,
    },
    /// A unique index of a tenant table does not contain `tenant_id`.
    UniqueIndexWithoutTenant {
        /// The table.
        table: String,
        /// The index.
        index: String,
    },
    /// A foreign key between tenant tables does not pair `tenant_id` with `tenant_id`.
    ForeignKeyWithoutTenant {
        /// The referencing table.
        table: String,
        /// The constraint.
        constraint: String,
    },
    /// A view over tenant tables is not `security_invoker` (it would run as its owner).
    ViewNotSecurityInvoker {
        /// The view.
        view: String,
    },
    /// A materialized view is built over tenant tables (it holds every tenant's rows).
    MaterializedViewOverTenantTable {
        /// The materialized view.
        view: String,
    },
    /// A `SECURITY DEFINER` function executable by the runtime role is owned by a role that
    /// bypasses row level security.
    PrivilegedSecurityDefiner {
        /// The function signature.
        function: String,
        /// Its owner.
        owner: String,
    },
}

impl Violation {
    /// A stable rule id, for `arq check` output and suppressions.
    pub fn rule_id(&self) -> &'static str {
        match self {
            Self::UnknownRole { .. } => "tenancy/unknown-role",
            Self::Superuser { .. } => "tenancy/runtime-superuser",
            Self::BypassRls { .. } => "tenancy/runtime-bypassrls",
            Self::CanAssumePrivilegedRole { .. } => "tenancy/runtime-privileged-membership",
            Self::OwnsTenantTable { .. } => "tenancy/runtime-owns-table",
            Self::RlsNotEnabled { .. } => "tenancy/rls-not-enabled",
            Self::RlsNotForced { .. } => "tenancy/rls-not-forced",
            Self::MissingTenantPolicy { .. } => "tenancy/missing-tenant-policy",
            Self::UniqueIndexWithoutTenant { .. } => "tenancy/unique-without-tenant",
            Self::ForeignKeyWithoutTenant { .. } => "tenancy/fk-without-tenant",
            Self::ViewNotSecurityInvoker { .. } => "tenancy/view-not-security-invoker",
            Self::MaterializedViewOverTenantTable { .. } => "tenancy/materialized-view",
            Self::PrivilegedSecurityDefiner { .. } => "tenancy/privileged-security-definer",
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.rule_id();
        match self {
            Self::UnknownRole { role } => write!(f, "[{id}] runtime role {role:?} does not exist"),
            Self::Superuser { role } => write!(
                f,
                "[{id}] runtime role {role:?} is a superuser; row level security does not apply to it: ALTER ROLE {role} NOSUPERUSER"
            ),
            Self::BypassRls { role } => write!(
                f,
                "[{id}] runtime role {role:?} has BYPASSRLS: ALTER ROLE {role} NOBYPASSRLS"
            ),
            Self::CanAssumePrivilegedRole { role, privileged } => write!(
                f,
                "[{id}] runtime role {role:?} is a member of {privileged:?}, which is superuser or has BYPASSRLS: REVOKE {privileged} FROM {role}"
            ),
            Self::OwnsTenantTable { role, table } => write!(
                f,
                "[{id}] runtime role {role:?} owns tenant table {table} (owners may disable its row level security): make the migration role the owner"
            ),
            Self::RlsNotEnabled { table } => write!(
                f,
                "[{id}] tenant table {table} does not have row level security enabled: SELECT arq.enable_tenant_rls('{table}')"
            ),
            Self::RlsNotForced { table } => write!(
                f,
                "[{id}] tenant table {table} does not force row level security: ALTER TABLE {table} FORCE ROW LEVEL SECURITY"
            ),
            Self::MissingTenantPolicy { table } => write!(
                f,
                "[{id}] tenant table {table} has no RESTRICTIVE policy FOR ALL with USING and WITH CHECK (tenant_id = arq.current_tenant_id()): SELECT arq.enable_tenant_rls('{table}')"
            ),
            Self::UniqueIndexWithoutTenant { table, index } => write!(
                f,
                "[{id}] unique index {index} on tenant table {table} does not include tenant_id (a duplicate-key error would reveal another tenant's row): put tenant_id first in the key"
            ),
            Self::ForeignKeyWithoutTenant { table, constraint } => write!(
                f,
                "[{id}] foreign key {constraint} on {table} does not reference tenant_id with tenant_id: make it composite, (tenant_id, ...) REFERENCES t (tenant_id, ...)"
            ),
            Self::ViewNotSecurityInvoker { view } => write!(
                f,
                "[{id}] view {view} reads tenant tables with its owner's rights: ALTER VIEW {view} SET (security_invoker = true)"
            ),
            Self::MaterializedViewOverTenantTable { view } => write!(
                f,
                "[{id}] materialized view {view} copies tenant rows where row level security cannot filter them: replace it with a tenant table or a security_invoker view"
            ),
            Self::PrivilegedSecurityDefiner { function, owner } => write!(
                f,
                "[{id}] SECURITY DEFINER function {function} runs as {owner:?}, which bypasses row level security, and the runtime role may execute it"
            ),
        }
    }
}

/// The result of [`audit`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditReport {
    /// The runtime role that was audited.
    pub role: String,
    /// The tenant tables found, schema-qualified where needed.
    pub tenant_tables: Vec<String>,
    /// The tenant tables the runtime role may only insert into (see the module docs); also in
    /// `tenant_tables`, exempt from the row level security, index and foreign key rules.
    pub insert_only_tables: Vec<String>,
    /// Every violation found; empty when the database is safe.
    pub violations: Vec<Violation>,
}

impl AuditReport {
    /// Whether no violation was found.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tenancy audit of role {:?}: {} tenant table(s), {} violation(s)",
            self.role,
            self.tenant_tables.len(),
            self.violations.len()
        )?;
        for v in &self.violations {
            write!(f, "\n  - {v}")?;
        }
        Ok(())
    }
}

/// Errors of [`ensure_safe`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The catalog queries failed.
    #[error("the tenancy audit could not read the database catalog: {0}")]
    Database(#[from] sqlx::Error),
    /// The database is unsafe; the service must not start.
    #[error(transparent)]
    Unsafe(#[from] UnsafeDatabase),
}

/// The database failed the audit. The message names every violation.
#[derive(Debug, Clone, thiserror::Error)]
#[error("refusing to start: the database is not safe for tenant data\n{report}")]
pub struct UnsafeDatabase {
    /// The full report.
    pub report: AuditReport,
}

/// Audits the database for `runtime_role` (see the module docs). `conn` may be any role that can
/// read the catalog, the runtime role included.
pub async fn audit(
    conn: &mut PgConnection,
    runtime_role: &str,
) -> Result<AuditReport, sqlx::Error> {
    let mut report = AuditReport {
        role: runtime_role.to_owned(),
        ..AuditReport::default()
    };
    let v = &mut report.violations;

    let role: Option<(bool, bool)> =
        sqlx::query_as("select rolsuper, rolbypassrls from pg_roles where rolname = $1")
            .bind(runtime_role)
            .fetch_optional(&mut *conn)
            .await?;
    match role {
        None => v.push(Violation::UnknownRole {
            role: runtime_role.to_owned(),
        }),
        Some((superuser, bypass)) => {
            if superuser {
                v.push(Violation::Superuser {
                    role: runtime_role.to_owned(),
                });
            }
            if bypass {
                v.push(Violation::BypassRls {
                    role: runtime_role.to_owned(),
                });
            }
            let privileged: Vec<String> = sqlx::query_scalar(
                "select r.rolname::text from pg_roles r \
                 where r.rolname <> $1 and (r.rolsuper or r.rolbypassrls) \
                   and pg_has_role($1, r.oid, 'MEMBER') \
                 order by 1",
            )
            .bind(runtime_role)
            .fetch_all(&mut *conn)
            .await?;
            // A superuser is "member" of every role; that is already reported above.
            if !superuser {
                v.extend(
                    privileged
                        .into_iter()
                        .map(|p| Violation::CanAssumePrivilegedRole {
                            role: runtime_role.to_owned(),
                            privileged: p,
                        }),
                );
            }
        }
    }
    let role_exists = role.is_some();

    // Tenant tables and their row level security state.
    let tables: Vec<(String, bool, bool, bool, bool, bool)> = sqlx::query_as(
        "select c.oid::regclass::text, c.relrowsecurity, c.relforcerowsecurity, \
           case when $1 then pg_has_role($2, c.relowner, 'USAGE') else false end, \
           case when $1 then has_table_privilege($2, c.oid, 'INSERT') \
                  and not has_any_column_privilege($2, c.oid, 'SELECT') \
                  and not has_any_column_privilege($2, c.oid, 'UPDATE') \
                  and not has_table_privilege($2, c.oid, 'DELETE') \
                  and not has_table_privilege($2, c.oid, 'TRUNCATE') \
                else false end, \
           exists (select 1 from pg_policy p \
                   where p.polrelid = c.oid and not p.polpermissive and p.polcmd = '*' \
                     and pg_get_expr(p.polqual, p.polrelid) = '(tenant_id = arq.current_tenant_id())' \
                     and pg_get_expr(p.polwithcheck, p.polrelid) = '(tenant_id = arq.current_tenant_id())') \
         from pg_class c \
         join pg_namespace n on n.oid = c.relnamespace \
         join pg_attribute a on a.attrelid = c.oid and a.attname = 'tenant_id' \
                            and a.attnum > 0 and not a.attisdropped \
         where c.relkind in ('r', 'p') \
           and n.nspname not in ('pg_catalog', 'information_schema') \
           and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%' \
         order by 1",
    )
    .bind(role_exists)
    .bind(runtime_role)
    .fetch_all(&mut *conn)
    .await?;
    for (table, enabled, forced, owned, insert_only, policy) in &tables {
        if *owned {
            v.push(Violation::OwnsTenantTable {
                role: runtime_role.to_owned(),
                table: table.clone(),
            });
        }
        if *insert_only {
            report.insert_only_tables.push(table.clone());
            continue;
        }
        if !enabled {
            v.push(Violation::RlsNotEnabled {
                table: table.clone(),
            });
        }
        if !forced {
            v.push(Violation::RlsNotForced {
                table: table.clone(),
            });
        }
        if !policy {
            v.push(Violation::MissingTenantPolicy {
                table: table.clone(),
            });
        }
    }
    report.tenant_tables = tables.into_iter().map(|t| t.0).collect();
    let v = &mut report.violations;

    // Only this constant is formatted into the catalog queries below; no input is.
    const TENANT_TABLES: &str = "select c.oid from pg_class c \
         join pg_namespace n on n.oid = c.relnamespace \
         join pg_attribute a on a.attrelid = c.oid and a.attname = 'tenant_id' \
                            and a.attnum > 0 and not a.attisdropped \
         where c.relkind in ('r', 'p') \
           and n.nspname not in ('pg_catalog', 'information_schema') \
           and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%'";

    let indexes: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "select i.indrelid::regclass::text, i.indexrelid::regclass::text from pg_index i \
         join pg_attribute a on a.attrelid = i.indrelid and a.attname = 'tenant_id' \
         where i.indisunique and i.indrelid in ({TENANT_TABLES}) \
           and not (a.attnum = any (i.indkey::int2[])) \
         order by 1, 2"
    )))
    .fetch_all(&mut *conn)
    .await?;
    let insert_only = |table: &String| report.insert_only_tables.contains(table);
    v.extend(
        indexes
            .into_iter()
            .filter(|(table, _)| !insert_only(table))
            .map(|(table, index)| Violation::UniqueIndexWithoutTenant { table, index }),
    );

    let fks: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "select k.conrelid::regclass::text, k.conname::text from pg_constraint k \
         join pg_attribute a on a.attrelid = k.conrelid and a.attname = 'tenant_id' \
         join pg_attribute b on b.attrelid = k.confrelid and b.attname = 'tenant_id' \
         where k.contype = 'f' and k.conrelid in ({TENANT_TABLES}) \
           and k.confrelid in ({TENANT_TABLES}) \
           and coalesce(k.confkey[array_position(k.conkey, a.attnum)] <> b.attnum, true) \
         order by 1, 2"
    )))
    .fetch_all(&mut *conn)
    .await?;
    v.extend(
        fks.into_iter()
            .filter(|(table, _)| !insert_only(table))
            .map(|(table, constraint)| Violation::ForeignKeyWithoutTenant { table, constraint }),
    );

    // Views that read tenant tables, directly or through other views.
    let views: Vec<(String, String, bool)> = sqlx::query_as(AssertSqlSafe(format!(
        "with recursive reads(view_oid, base) as ( \
             select r.ev_class, d.refobjid from pg_rewrite r \
             join pg_depend d on d.classid = 'pg_rewrite'::regclass and d.objid = r.oid \
                             and d.refclassid = 'pg_class'::regclass and d.refobjid <> r.ev_class \
           union \
             select rd.view_oid, d.refobjid from reads rd \
             join pg_rewrite r on r.ev_class = rd.base \
             join pg_depend d on d.classid = 'pg_rewrite'::regclass and d.objid = r.oid \
                             and d.refclassid = 'pg_class'::regclass and d.refobjid <> r.ev_class \
         ) \
         select distinct v.oid::regclass::text, v.relkind::text, \
           coalesce(exists (select 1 from unnest(v.reloptions) o \
             where lower(o) in ('security_invoker=true', 'security_invoker=on', \
                                'security_invoker=1', 'security_invoker=yes')), false) \
         from reads r join pg_class v on v.oid = r.view_oid \
         where v.relkind in ('v', 'm') and r.base in ({TENANT_TABLES}) \
         order by 1"
    )))
    .fetch_all(&mut *conn)
    .await?;
    for (view, kind, invoker) in views {
        if kind == "m" {
            v.push(Violation::MaterializedViewOverTenantTable { view });
        } else if !invoker {
            v.push(Violation::ViewNotSecurityInvoker { view });
        }
    }

    if role_exists {
        let definers: Vec<(String, String)> = sqlx::query_as(
            "select p.oid::regprocedure::text, o.rolname::text from pg_proc p \
             join pg_roles o on o.oid = p.proowner \
             join pg_namespace n on n.oid = p.pronamespace \
             where p.prosecdef and (o.rolsuper or o.rolbypassrls) \
               and n.nspname not in ('pg_catalog', 'information_schema') \
               and has_function_privilege($1, p.oid, 'EXECUTE') \
             order by 1",
        )
        .bind(runtime_role)
        .fetch_all(&mut *conn)
        .await?;
        v.extend(
            definers
                .into_iter()
                .map(|(function, owner)| Violation::PrivilegedSecurityDefiner { function, owner }),
        );
    }
    Ok(report)
}

/// Audits the database for the role `conn` is logged in as and fails with [`UnsafeDatabase`]
/// on any violation: call it at start-up with a connection from the runtime pool.
pub async fn ensure_safe(conn: &mut PgConnection) -> Result<AuditReport, AuditError> {
    let role: String = sqlx::query_scalar("select current_user::text")
        .fetch_one(&mut *conn)
        .await?;
    let report = audit(conn, &role).await?;
    if report.is_clean() {
        tracing::info!(role = %report.role, tables = report.tenant_tables.len(), "tenancy audit passed");
        Ok(report)
    } else {
        tracing::error!(%report, "tenancy audit failed");
        Err(UnsafeDatabase { report }.into())
    }
}
