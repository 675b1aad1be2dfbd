-- arq-tenancy support: the tenant setting reader, the RLS helper and the data-key table.
-- Run as the owner role (the role that owns the tables), never as the runtime role.

CREATE SCHEMA IF NOT EXISTS arq;
-- Policies are evaluated with the privileges of the querying role, which must see the function.
GRANT USAGE ON SCHEMA arq TO PUBLIC;

-- The current tenant of the transaction, or NULL for "no tenant".
-- current_setting(..., true) is NULL when the setting was never defined on this connection and ''
-- after a transaction-local set_config ended (the placeholder stays defined, with an empty value):
-- both mean "no tenant", so nullif maps '' to NULL and every tenant comparison is NULL (no rows).
-- A malformed value fails the cast: an error, never a match. STABLE and plain SQL so the planner
-- inlines it and can use it as an index condition on tenant_id.
CREATE OR REPLACE FUNCTION arq.current_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT nullif(current_setting('app.tenant_id', true), '')::uuid $$;

-- Makes a table with a tenant_id column tenant-isolated: ENABLE + FORCE row level security (FORCE so
-- the owner is filtered too), a RESTRICTIVE policy (ANDed with every other policy, so an extra
-- permissive policy cannot widen access) and the permissive policy that grants the tenant's rows
-- (without a permissive policy RLS denies everything). Both check USING and WITH CHECK.
-- Optionally grants DML to the runtime role.
CREATE OR REPLACE FUNCTION arq.enable_tenant_rls(tbl regclass, runtime_role name DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql
AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', tbl);
    EXECUTE format('DROP POLICY IF EXISTS arq_tenant_isolation ON %s', tbl);
    EXECUTE format('CREATE POLICY arq_tenant_isolation ON %s AS RESTRICTIVE FOR ALL '
                   'USING (tenant_id = arq.current_tenant_id()) '
                   'WITH CHECK (tenant_id = arq.current_tenant_id())', tbl);
    EXECUTE format('DROP POLICY IF EXISTS arq_tenant_access ON %s', tbl);
    EXECUTE format('CREATE POLICY arq_tenant_access ON %s AS PERMISSIVE FOR ALL '
                   'USING (tenant_id = arq.current_tenant_id()) '
                   'WITH CHECK (tenant_id = arq.current_tenant_id())', tbl);
    IF runtime_role IS NOT NULL THEN
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO %I', tbl, runtime_role);
    END IF;
END
$$;
REVOKE ALL ON FUNCTION arq.enable_tenant_rls(regclass, name) FROM PUBLIC;

-- Wrapped per-tenant data keys for field-level encryption (arq_tenancy::crypto::PgKeyStore).
-- The service's own migration grants SELECT, INSERT (and UPDATE, to rewrap keys) on it to the runtime role.
CREATE TABLE IF NOT EXISTS arq.tenant_data_keys (
    tenant_id  uuid        NOT NULL,
    key_id     integer     NOT NULL CHECK (key_id > 0),
    kek_id     text        NOT NULL,
    wrapped    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key_id)
);
SELECT arq.enable_tenant_rls('arq.tenant_data_keys');
