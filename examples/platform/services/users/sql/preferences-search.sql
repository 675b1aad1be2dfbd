-- Makes the preferences GIN index usable under row-level security. Run it as an administrator
-- (a superuser) IN THE SERVICE'S DATABASE, once, before `users migrate`; it is idempotent:
--   psql "postgres://postgres@HOST/USERS_DB" -f services/users/sql/preferences-search.sql
--
-- Why: PostgreSQL only uses a predicate as an index condition on a table with row-level security
-- if the predicate's function is LEAKPROOF (otherwise it could run on another tenant's rows
-- before the policy filtered them and leak them through an error). jsonb's `@>`
-- (jsonb_contains) is not marked LEAKPROOF, and no GIN operator in core is, so for the runtime
-- role (arq_app, subject to RLS) `preferences @> $1` is never answered by a GIN index: it is a
-- filter over every profile of the tenant. Only a superuser can declare a function LEAKPROOF.
--
-- What: the schema arq_search with
--   * arq_search.jsonb_contains: the built-in jsonb_contains, declared LEAKPROOF. It reads only
--     its two arguments and raises no error that depends on their contents (the only one it can
--     raise is "stack depth limit exceeded" on absurdly deep documents; the service refuses
--     preferences nested deeper than 8 levels, so stored values never come near it);
--   * the operator arq_search.@> over it (with jsonb's own selectivity estimators);
--   * arq_search.jsonb_path_ops: a GIN operator class identical to the built-in jsonb_path_ops
--     (same support functions, same on-disk keys) whose containment operator is arq_search.@>;
--   * the btree_gin extension (trusted, shipped with PostgreSQL), so the index can lead with
--     tenant_id: `USING gin (tenant_id, preferences arq_search.jsonb_path_ops)`.
-- migrations/0001_profiles.sql creates the index with it; the service queries with
-- `preferences OPERATOR(arq_search.@>) $1`. `users migrate` checks it exists first.
CREATE SCHEMA IF NOT EXISTS arq_search;
GRANT USAGE ON SCHEMA arq_search TO PUBLIC;
CREATE EXTENSION IF NOT EXISTS btree_gin SCHEMA arq_search;

CREATE OR REPLACE FUNCTION arq_search.jsonb_contains(jsonb, jsonb) RETURNS boolean
    LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF
AS 'jsonb_contains';

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
                   WHERE n.nspname = 'arq_search' AND o.oprname = '@>') THEN
        CREATE OPERATOR arq_search.@> (
            LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = arq_search.jsonb_contains,
            RESTRICT = matchingsel, JOIN = matchingjoinsel
        );
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_opclass c JOIN pg_namespace n ON n.oid = c.opcnamespace
                   WHERE n.nspname = 'arq_search' AND c.opcname = 'jsonb_path_ops') THEN
        -- Strategy 7 is jsonb's containment strategy: the support functions below key on it.
        CREATE OPERATOR CLASS arq_search.jsonb_path_ops FOR TYPE jsonb USING gin AS
            OPERATOR 7 arq_search.@>,
            FUNCTION 1 btint4cmp(int4, int4),
            FUNCTION 2 gin_extract_jsonb_path(jsonb, internal, internal),
            FUNCTION 3 gin_extract_jsonb_query_path(jsonb, internal, int2, internal, internal, internal, internal),
            FUNCTION 4 gin_consistent_jsonb_path(internal, int2, jsonb, int4, internal, internal, internal, internal),
            FUNCTION 6 gin_triconsistent_jsonb_path(internal, int2, jsonb, int4, internal, internal, internal),
            STORAGE int4;
    END IF;
END
$$;
