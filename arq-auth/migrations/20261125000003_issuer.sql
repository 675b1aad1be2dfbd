-- arq-auth: the token issuer's users and OAuth 2.0 clients.

create table arq_auth_users (
    id              uuid primary key,
    username        text        not null unique,
    -- argon2id PHC string.
    password_hash   text        not null,
    bound_tenant_id uuid,
    roles           text[]      not null default '{}',
    attributes      jsonb       not null default '{}',
    created_at      timestamptz not null default now(),
    disabled_at     timestamptz
);

create table arq_auth_clients (
    client_id       text primary key,
    -- argon2id PHC string of the client secret.
    secret_hash     text        not null,
    bound_tenant_id uuid,
    permissions     text[]      not null default '{}',
    created_at      timestamptz not null default now(),
    disabled_at     timestamptz
);
