//! tenancy: the live audit (`arq check --live`), arq-tenancy's [`arq_tenancy::audit`] run
//! against a database. Its ids (`tenancy/<name>`) become `tenancy-<name>` here, because `/`
//! cannot appear in the name part of a Kubernetes annotation key.

use crate::check::registry::{Rule, Severity};

const fn live(id: &'static str, description: &'static str, remedy: &'static str) -> Rule {
    Rule::new(id, Severity::Error, description, remedy).security("9.1")
}

pub(crate) const RULES: &[Rule] = &[
    live(
        "tenancy-unknown-role",
        "(live) The runtime role exists.",
        "CREATE ROLE arq_app LOGIN NOSUPERUSER NOBYPASSRLS, or pass --runtime-role.",
    ),
    live(
        "tenancy-runtime-superuser",
        "(live) The runtime role is not a superuser.",
        "ALTER ROLE <role> NOSUPERUSER.",
    ),
    live(
        "tenancy-runtime-bypassrls",
        "(live) The runtime role does not have BYPASSRLS.",
        "ALTER ROLE <role> NOBYPASSRLS.",
    ),
    live(
        "tenancy-runtime-privileged-membership",
        "(live) The runtime role cannot switch to a superuser or BYPASSRLS role.",
        "REVOKE <privileged> FROM <role>.",
    ),
    live(
        "tenancy-runtime-owns-table",
        "(live) The runtime role owns no tenant table.",
        "Make the migration role the owner: ALTER TABLE t OWNER TO arq_owner.",
    ),
    live(
        "tenancy-rls-not-enabled",
        "(live) Every tenant table has row level security enabled.",
        "SELECT arq.enable_tenant_rls('t').",
    ),
    live(
        "tenancy-rls-not-forced",
        "(live) Every tenant table forces row level security.",
        "ALTER TABLE t FORCE ROW LEVEL SECURITY.",
    ),
    live(
        "tenancy-missing-tenant-policy",
        "(live) Every tenant table has the restrictive tenant policy with USING and WITH CHECK.",
        "SELECT arq.enable_tenant_rls('t').",
    ),
    live(
        "tenancy-unique-without-tenant",
        "(live) Every unique index of a tenant table includes tenant_id.",
        "Put tenant_id first in the key.",
    ),
    live(
        "tenancy-fk-without-tenant",
        "(live) Every foreign key between tenant tables pairs tenant_id with tenant_id.",
        "Make the foreign key composite: (tenant_id, ...) REFERENCES t (tenant_id, ...).",
    ),
    live(
        "tenancy-view-not-security-invoker",
        "(live) Every view over tenant tables is security_invoker.",
        "ALTER VIEW v SET (security_invoker = true).",
    ),
    live(
        "tenancy-materialized-view",
        "(live) No materialized view is built over tenant tables.",
        "Replace it with a tenant table or a security_invoker view.",
    ),
    live(
        "tenancy-privileged-security-definer",
        "(live) No SECURITY DEFINER function executable by the runtime role is owned by a role that bypasses row level security.",
        "Make it SECURITY INVOKER or change its owner.",
    ),
];

/// The registry id of an audit rule id (`tenancy/x` → `tenancy-x`).
pub(crate) fn map_id(audit_id: &str) -> Option<&'static str> {
    let id = audit_id.replacen('/', "-", 1);
    RULES.iter().find(|r| r.id == id).map(|r| r.id)
}
