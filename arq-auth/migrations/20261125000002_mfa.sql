-- arq-auth: multi-factor authentication.

create table arq_auth_totp (
    subject      text primary key,
    -- The shared secret (RFC 6238). Protect the database (and its backups) accordingly.
    secret       bytea       not null,
    created_at   timestamptz not null default now(),
    -- Set when the first code is verified; unconfirmed enrollments do not count as MFA.
    confirmed_at timestamptz,
    -- The last time step whose code was accepted: a code is accepted once, and never an older one.
    last_step    bigint      not null default -1
);

create table arq_auth_recovery_codes (
    id         uuid primary key,
    subject    text        not null,
    code_hash  bytea       not null unique,
    created_at timestamptz not null default now(),
    used_at    timestamptz
);
create index arq_auth_recovery_codes_subject on arq_auth_recovery_codes (subject);

create table arq_auth_otp_codes (
    id          uuid primary key,
    subject     text        not null,
    channel     text        not null,
    code_hash   bytea       not null,
    created_at  timestamptz not null default now(),
    expires_at  timestamptz not null,
    consumed_at timestamptz,
    attempts    integer     not null default 0
);
create index arq_auth_otp_codes_subject on arq_auth_otp_codes (subject, channel);
