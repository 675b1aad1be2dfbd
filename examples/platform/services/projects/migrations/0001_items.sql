-- The example resource of projects: items, one table per tenant's rows, isolated by
-- row-level security. Run as the owner role (arq_owner) after arq-tenancy's support migration,
-- which `projects::migrator()` runs first. The service itself connects as arq_app.
CREATE TABLE items (
    tenant_id   uuid NOT NULL,
    id          uuid NOT NULL,
    name        text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    description text NOT NULL DEFAULT '' CHECK (char_length(description) <= 1000),
    owner       text NOT NULL,
    -- tenant_id first in every key, so one tenant's rows can never collide with or reveal another's.
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name)
);

-- ENABLE + FORCE row level security, the restrictive tenant policy, and DML grants to arq_app.
SELECT arq.enable_tenant_rls('items', 'arq_app');
