-- arq-auth: refresh tokens and API keys.
--
-- These tables are read before a tenant is known (an API key is looked up by its prefix to find
-- its tenant; a refresh token to find its subject), so they are not tenant-scoped with row-level
-- security. The tenant a credential is bound to lives in `bound_tenant_id`, deliberately not
-- named `tenant_id`: these are credential tables, not tenant data. The runtime role needs
-- SELECT/INSERT/UPDATE on them.

create table arq_auth_refresh_tokens (
    id              uuid primary key,
    -- Every token descending from one login shares a family; reuse of a rotated token revokes it.
    family_id       uuid        not null,
    -- SHA-256 of the token. The token is 256 random bits, so a fast hash is enough: there is
    -- nothing to brute-force.
    token_hash      bytea       not null unique,
    subject         text        not null,
    bound_tenant_id uuid,
    -- Authentication methods of the login that started the family (carried into new tokens).
    amr             text[]      not null default '{}',
    created_at      timestamptz not null default now(),
    expires_at      timestamptz not null,
    used_at         timestamptz,
    revoked_at      timestamptz
);
create index arq_auth_refresh_tokens_family on arq_auth_refresh_tokens (family_id);
create index arq_auth_refresh_tokens_subject on arq_auth_refresh_tokens (subject)
    where revoked_at is null;

create table arq_auth_api_keys (
    id              uuid primary key,
    -- The public, recognizable part (`arq_<prefix>_…`), used for lookup.
    prefix          text        not null unique,
    -- SHA-256 of the 256-bit secret part.
    secret_hash     bytea       not null,
    bound_tenant_id uuid        not null,
    name            text        not null,
    permissions     text[]      not null default '{}',
    created_at      timestamptz not null default now(),
    expires_at      timestamptz,
    revoked_at      timestamptz,
    last_used_at    timestamptz
);
create index arq_auth_api_keys_tenant on arq_auth_api_keys (bound_tenant_id);
