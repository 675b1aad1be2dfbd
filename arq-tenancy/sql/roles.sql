-- The two roles an arq service uses, created once per cluster by an administrator.
--   arq_owner: owns the schema and tables, runs migrations. Never used by the running service.
--   arq_app:   the runtime role. Not superuser, no BYPASSRLS, owns nothing; row-level security
--              applies to it. The service's start-up audit refuses to run if any of this is false.
-- Change the passwords (or use another authentication method) outside development.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'arq_owner') THEN
        CREATE ROLE arq_owner LOGIN CREATEDB NOSUPERUSER NOBYPASSRLS PASSWORD 'arq_owner';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'arq_app') THEN
        CREATE ROLE arq_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD 'arq_app';
    END IF;
END
$$;
