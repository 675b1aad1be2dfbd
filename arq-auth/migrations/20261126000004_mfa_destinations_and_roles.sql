-- arq-auth: where one-time codes go, and role assignments per tenant.

-- The email address or phone number a subject receives one-time codes at, one per channel. A
-- destination counts as a second factor only once a code sent to it was entered
-- (`confirmed_at`).
create table arq_auth_otp_destinations (
    subject      text        not null,
    channel      text        not null check (channel in ('email', 'sms')),
    destination  text        not null,
    created_at   timestamptz not null default now(),
    confirmed_at timestamptz,
    primary key (subject, channel)
);

-- RBAC: the roles a subject holds in a tenant. Read by the issuer at sign-in, before any tenant
-- context exists, so (like the credential tables) not row-level-secured, and the column is
-- `bound_tenant_id` rather than `tenant_id`.
create table arq_auth_role_assignments (
    subject         text        not null,
    bound_tenant_id uuid        not null,
    role            text        not null,
    granted_at      timestamptz not null default now(),
    primary key (subject, bound_tenant_id, role)
);
create index arq_auth_role_assignments_tenant on arq_auth_role_assignments (bound_tenant_id);
