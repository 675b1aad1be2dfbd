-- Workspaces, their members and their pending invitations, isolated by row-level security.
-- Run as the owner role (arq_owner) after arq-tenancy's support migration, which
-- `workspace::migrator()` runs first. The service itself connects as arq_app.
--
-- A workspace IS a tenant: its id is the tenant id of everything in it, on this service and on
-- every other one. So the workspace's key is tenant_id itself (one row per tenant), and the API's
-- `id` is that column.
CREATE TABLE workspaces (
    tenant_id  uuid        NOT NULL PRIMARY KEY,
    name       text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    -- The user (token `sub`) who created it.
    created_by uuid        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Who belongs to a workspace, with one role each (the RBAC assignment the auth service puts
-- into tokens for this tenant, kept in step through the membership.* events).
CREATE TABLE memberships (
    tenant_id uuid        NOT NULL,
    user_id   uuid        NOT NULL,
    -- One of the roles of [rbac.roles]; the service checks the name, the table its shape.
    role      text        NOT NULL CHECK (role ~ '^[a-z][a-z0-9_-]{0,49}$'),
    joined_at timestamptz NOT NULL DEFAULT now(),
    -- tenant_id first in every key, so one tenant's rows can never collide with or reveal another's.
    PRIMARY KEY (tenant_id, user_id),
    FOREIGN KEY (tenant_id) REFERENCES workspaces (tenant_id) ON DELETE CASCADE
);
-- The last-admin rule counts a workspace's admins.
CREATE INDEX memberships_by_role ON memberships (tenant_id, role, user_id);

-- Invitations by e-mail. The code itself is never stored: only its SHA-256, which is what
-- accepting looks up (a stolen table does not let anyone join). One pending invitation per
-- address and workspace: inviting again replaces its code, role and expiry.
CREATE TABLE invitations (
    tenant_id   uuid        NOT NULL,
    id          uuid        NOT NULL,
    email       text        NOT NULL CHECK (char_length(email) BETWEEN 3 AND 254),
    role        text        NOT NULL CHECK (role ~ '^[a-z][a-z0-9_-]{0,49}$'),
    code_sha256 bytea       NOT NULL CHECK (octet_length(code_sha256) = 32),
    created_by  uuid        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    -- Set once, when the code is used; a used invitation is kept as a record of who joined how.
    accepted_at timestamptz,
    accepted_by uuid,
    CHECK ((accepted_at IS NULL) = (accepted_by IS NULL)),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id) REFERENCES workspaces (tenant_id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX invitations_by_code ON invitations (tenant_id, code_sha256);
CREATE UNIQUE INDEX invitations_pending_by_email ON invitations (tenant_id, lower(email))
    WHERE accepted_at IS NULL;

-- ENABLE + FORCE row level security, the restrictive tenant policy, and DML grants to arq_app.
SELECT arq.enable_tenant_rls('workspaces', 'arq_app');
SELECT arq.enable_tenant_rls('memberships', 'arq_app');
SELECT arq.enable_tenant_rls('invitations', 'arq_app');
