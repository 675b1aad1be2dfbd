-- The transactional outbox (arq-queue's `arq_outbox`, created just before this migration by
-- `projects::migrator()`) made safe for a tenant database. Events are tenant data (names, metadata)
-- and arq-tenancy's start-up audit treats every table with a tenant_id column as a
-- tenant table, so the outbox gets the same isolation as `projects`:
--   * every row belongs to a tenant, and tenant_id leads the primary key (a key collision can
--     never reveal another tenant's row);
--   * ENABLE + FORCE row level security with the restrictive tenant policy for the runtime role
--     (arq_app), which may only INSERT its own tenant's events, never read them back;
--   * the relay, which publishes every tenant's events, connects as its own role, arq_relay
--     (sql/relay-role.sql), which may read, mark and delete outbox rows and nothing else: it has
--     no grant on any other table and no BYPASSRLS.
-- arq_relay must exist before this runs (`projects migrate` checks and says how to create it).

ALTER TABLE arq_outbox ALTER COLUMN tenant_id SET NOT NULL;
ALTER TABLE arq_outbox DROP CONSTRAINT arq_outbox_pkey;
ALTER TABLE arq_outbox ADD PRIMARY KEY (tenant_id, seq);
-- The relay deletes and marks rows by seq alone.
CREATE INDEX arq_outbox_seq ON arq_outbox (seq);

ALTER TABLE arq_outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE arq_outbox FORCE ROW LEVEL SECURITY;
-- arq.enable_tenant_rls's two policies, for the runtime role only: a restrictive policy that
-- applied to every role would hide every row from the relay too.
CREATE POLICY arq_tenant_isolation ON arq_outbox AS RESTRICTIVE FOR ALL TO arq_app
    USING (tenant_id = arq.current_tenant_id())
    WITH CHECK (tenant_id = arq.current_tenant_id());
CREATE POLICY arq_tenant_access ON arq_outbox AS PERMISSIVE FOR ALL TO arq_app
    USING (tenant_id = arq.current_tenant_id())
    WITH CHECK (tenant_id = arq.current_tenant_id());
-- The relay sees every tenant's rows (and only this table's).
CREATE POLICY arq_outbox_relay ON arq_outbox AS PERMISSIVE FOR ALL TO arq_relay
    USING (true)
    WITH CHECK (true);

GRANT INSERT ON arq_outbox TO arq_app;
GRANT USAGE ON SEQUENCE arq_outbox_seq_seq TO arq_app;
-- SELECT ... FOR UPDATE needs UPDATE; failed rows are marked with UPDATE.
GRANT SELECT, UPDATE, DELETE ON arq_outbox TO arq_relay;
