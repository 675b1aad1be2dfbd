-- Roles and database the arq test suites expect. Idempotent: safe to run on every `services up`.
-- arq_owner runs migrations and owns tenant tables; arq_app is what services connect as at run
-- time and must never bypass row-level security.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'arq_owner') THEN
    CREATE ROLE arq_owner LOGIN CREATEDB PASSWORD 'arq_owner';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'arq_app') THEN
    CREATE ROLE arq_app LOGIN PASSWORD 'arq_app';
  END IF;
END
$$;
ALTER ROLE arq_owner NOSUPERUSER CREATEDB NOBYPASSRLS;
ALTER ROLE arq_app NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
