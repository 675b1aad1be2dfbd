-- The projects of each tenant (a hierarchy: every project has at most one parent) and the
-- history of their versions, isolated by row-level security. Run as the owner role (arq_owner)
-- after arq-tenancy's support migration, which `projects::migrator()` runs first. The service
-- itself connects as arq_app.
CREATE TABLE projects (
    tenant_id   uuid        NOT NULL,
    id          uuid        NOT NULL,
    -- NULL for a top-level project.
    parent_id   uuid,
    name        text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    description text        CHECK (char_length(description) <= 5000),
    -- Free-form attributes; always a JSON object.
    metadata    jsonb       NOT NULL DEFAULT '{}'::jsonb
                            CHECK (jsonb_typeof(metadata) = 'object'
                                   AND octet_length(metadata::text) <= 32768),
    -- Optimistic concurrency: starts at 1, +1 on every change; the ETag is this number.
    version     bigint      NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- tenant_id first in every key, so one tenant's rows can never collide with or reveal another's.
    PRIMARY KEY (tenant_id, id),
    CHECK (parent_id <> id),
    -- A composite foreign key: a parent can only be a project of the same tenant. No cascade: a
    -- project with children cannot be deleted by accident (the service deletes a subtree
    -- explicitly when asked to), and a child inserted by a transaction racing with the delete of
    -- its parent makes one of the two fail instead of leaving an orphan.
    FOREIGN KEY (tenant_id, parent_id) REFERENCES projects (tenant_id, id)
);
-- Children of a project: the list's parent_id filter as a keyset scan, the tree walk, the "has
-- children" check on delete. Top-level projects are the NULL parent_id entries.
CREATE INDEX projects_by_parent ON projects (tenant_id, parent_id, id);

-- Every version of every project, version 1 (the creation) included, written in the
-- transaction of the change. Append-only for the service (see the grants below).
CREATE TABLE project_versions (
    tenant_id   uuid        NOT NULL,
    project_id  uuid        NOT NULL,
    version     bigint      NOT NULL CHECK (version >= 1),
    name        text        NOT NULL,
    description text,
    -- The parent at this version (it may since have been deleted, so no foreign key).
    parent_id   uuid,
    metadata    jsonb       NOT NULL,
    changed_by  text        NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, project_id, version),
    -- A project's history goes with it.
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id) ON DELETE CASCADE
);

-- ENABLE + FORCE row level security, the restrictive tenant policy, and DML grants to arq_app.
SELECT arq.enable_tenant_rls('projects', 'arq_app');
SELECT arq.enable_tenant_rls('project_versions', 'arq_app');
-- History is never rewritten: the runtime role may add versions and read them, not change or
-- delete them. (Deleting a project removes its history through the foreign key's cascade, which
-- PostgreSQL runs with the table owner's rights.)
REVOKE UPDATE, DELETE ON project_versions FROM arq_app;
