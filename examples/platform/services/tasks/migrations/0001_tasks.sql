-- The tasks of each tenant and the dependencies between them, isolated by row-level security.
-- Run as the owner role (arq_owner) after arq-tenancy's support migration, which
-- `tasks::migrator()` runs first. The service itself connects as arq_app.
CREATE TABLE tasks (
    tenant_id      uuid        NOT NULL,
    id             uuid        NOT NULL,
    title          text        NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    description    text        NOT NULL DEFAULT '' CHECK (char_length(description) <= 5000),
    status         text        NOT NULL DEFAULT 'todo'
                               CHECK (status IN ('todo', 'in_progress', 'done', 'cancelled')),
    priority       text        NOT NULL DEFAULT 'normal'
                               CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    -- The assignee's subject (the `sub` of their access token) and, optionally, where to mail them.
    assignee       text        CHECK (char_length(assignee) BETWEEN 1 AND 200),
    assignee_email text        CHECK (char_length(assignee_email) BETWEEN 3 AND 254),
    created_by     text        NOT NULL,
    due_at         timestamptz,
    -- Not startable before this instant.
    scheduled_for  timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (assignee_email IS NULL OR assignee IS NOT NULL),
    -- tenant_id first in every key, so one tenant's rows can never collide with or reveal another's.
    PRIMARY KEY (tenant_id, id)
);
-- The list's filters, each a keyset scan on (tenant_id, ..., id).
CREATE INDEX tasks_by_status ON tasks (tenant_id, status, id);
CREATE INDEX tasks_by_assignee ON tasks (tenant_id, assignee, id);
CREATE INDEX tasks_by_due ON tasks (tenant_id, due_at, id);

-- "task_id depends on depends_on_id": task_id cannot start or finish before depends_on_id is
-- done. The service keeps the graph acyclic (see src/dependencies.rs for how, race-safely).
CREATE TABLE task_dependencies (
    tenant_id     uuid        NOT NULL,
    task_id       uuid        NOT NULL,
    depends_on_id uuid        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, task_id, depends_on_id),
    CHECK (task_id <> depends_on_id),
    -- Composite foreign keys: a dependency can only name a task of the same tenant.
    FOREIGN KEY (tenant_id, task_id) REFERENCES tasks (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, depends_on_id) REFERENCES tasks (tenant_id, id) ON DELETE CASCADE
);
-- "Who depends on this task": the reverse walk, and the cascade when a task is deleted.
CREATE INDEX task_dependencies_reverse ON task_dependencies (tenant_id, depends_on_id, task_id);

-- ENABLE + FORCE row level security, the restrictive tenant policy, and DML grants to arq_app.
SELECT arq.enable_tenant_rls('tasks', 'arq_app');
SELECT arq.enable_tenant_rls('task_dependencies', 'arq_app');
