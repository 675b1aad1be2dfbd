-- The outbox relay's database role, created once per cluster by an administrator (next to
-- arq-tenancy's arq_owner and arq_app), before a service's outbox migrations:
--   psql "$ADMIN_URL" -f relay-role.sql
-- arq_relay reads, marks and deletes rows of arq_outbox (0002_arq_outbox_tenant_isolation.sql
-- grants exactly that and gives it the one row-level-security policy that lets it see every
-- tenant's events). It is not superuser, has no BYPASSRLS and owns nothing. Change the password
-- (or use another authentication method) outside development.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'arq_relay') THEN
        CREATE ROLE arq_relay LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD 'arq_relay';
    END IF;
END
$$;
