-- Profiles: one per user per workspace (tenant), isolated by row-level security. Run as the
-- owner role (arq_owner) after arq-tenancy's support migration, which `users::migrator()` runs
-- first, and after an administrator ran sql/preferences-search.sql in this database
-- (`users migrate` checks). The service itself connects as arq_app.
CREATE TABLE profiles (
    tenant_id    uuid        NOT NULL,
    -- The user's id: the `sub` of their access token.
    user_id      uuid        NOT NULL,
    display_name text        NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 100),
    -- Personal data, encrypted by the service (arq_tenancy::crypto::Encrypted: format version,
    -- data key id, nonce, AES-256-GCM ciphertext bound to tenant/profiles/column/user_id). The
    -- database never sees the plaintext.
    email        bytea       NOT NULL,
    phone        bytea,
    -- HMAC-SHA-256 blind index of the normalised (trimmed, lower-case) e-mail address, keyed per
    -- tenant and column: equality lookups without decryption, and equal addresses in two
    -- tenants give unrelated values.
    email_index  bytea       NOT NULL CHECK (octet_length(email_index) = 32),
    preferences  jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(preferences) = 'object'),
    tier         text        NOT NULL DEFAULT 'free' CHECK (tier IN ('free', 'pro', 'enterprise')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    -- tenant_id first in every key, so one tenant's rows can never collide with or reveal another's.
    PRIMARY KEY (tenant_id, user_id)
);
-- Lookup by e-mail: an index condition on (tenant_id, email_index), keyset by user_id.
CREATE INDEX profiles_by_email ON profiles (tenant_id, email_index, user_id);
-- Lookup by preferences (`@>`), led by tenant_id (btree_gin). The operator class's containment
-- operator is LEAKPROOF, so the planner may use it as an index condition under RLS; the
-- built-in jsonb_path_ops could not be (see sql/preferences-search.sql).
CREATE INDEX profiles_preferences ON profiles
    USING gin (tenant_id, preferences arq_search.jsonb_path_ops);

-- ENABLE + FORCE row level security, the restrictive tenant policy, and DML grants to arq_app.
SELECT arq.enable_tenant_rls('profiles', 'arq_app');

-- Wrapped per-tenant data keys (arq_tenancy::crypto::PgKeyStore; the table and its RLS come from
-- the support migration): the runtime role reads them, creates a tenant's first key and rotated
-- ones, and rewraps them under a new key-encryption key. It never deletes one (a deleted key
-- would make every profile sealed with it unreadable).
GRANT SELECT, INSERT, UPDATE ON arq.tenant_data_keys TO arq_app;
