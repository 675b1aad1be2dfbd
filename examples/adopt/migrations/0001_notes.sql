-- Step 4 (arq-tenancy): the notes of each tenant, isolated by row-level security. Runs as the
-- owner role (arq_owner) after arq-tenancy's support migration; the service connects as arq_app.
CREATE TABLE notes (
    tenant_id uuid NOT NULL,
    id        uuid NOT NULL,
    author    text NOT NULL,
    body      text NOT NULL CHECK (char_length(body) BETWEEN 1 AND 2000),
    -- tenant_id first in every key: one tenant's rows never collide with or reveal another's.
    PRIMARY KEY (tenant_id, id)
);
-- ENABLE + FORCE row level security, the restrictive tenant policy, DML grants to arq_app.
SELECT arq.enable_tenant_rls('notes', 'arq_app');

-- Step 5 (arq-queue): what the note.created consumer records, one row per message id, so a
-- redelivered message inserts nothing.
CREATE TABLE note_activity (
    tenant_id  uuid NOT NULL,
    message_id uuid NOT NULL,
    note_id    uuid NOT NULL,
    kind       text NOT NULL,
    PRIMARY KEY (tenant_id, message_id),
    FOREIGN KEY (tenant_id, note_id) REFERENCES notes (tenant_id, id) ON DELETE CASCADE
);
SELECT arq.enable_tenant_rls('note_activity', 'arq_app');
