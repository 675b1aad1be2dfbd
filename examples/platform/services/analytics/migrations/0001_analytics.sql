-- The analytics of each tenant, isolated by row-level security. Run as the owner role
-- (arq_owner) after arq-tenancy's support migration, which `analytics::migrator()` runs first.
-- The service itself connects as arq_app. tenant_id leads every key, so one tenant's rows can
-- never collide with or reveal another's.

-- The tenants this service has heard of: one row per `workspace.created` ("creating a workspace
-- creates the tenant everywhere it must exist"). Counts do not depend on it: an event may
-- arrive before its workspace's `workspace.created`.
CREATE TABLE tenants (
    tenant_id   uuid        NOT NULL,
    name        text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    -- When the workspace was created (the event's created-at).
    created_at  timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id)
);

-- The events already counted, by message id: recorded in the transaction that counts the
-- event, so a redelivered message (same id) changes nothing.
CREATE TABLE processed_events (
    tenant_id    uuid        NOT NULL,
    message_id   uuid        NOT NULL,
    event_type   text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, message_id)
);

-- How many events of each type a tenant had on each day (UTC, by the event's created-at).
CREATE TABLE daily_event_counts (
    tenant_id  uuid   NOT NULL,
    day        date   NOT NULL,
    event_type text   NOT NULL CHECK (char_length(event_type) BETWEEN 1 AND 100),
    count      bigint NOT NULL CHECK (count > 0),
    -- A report or /daily reads one tenant's range of days: a range scan of this key.
    PRIMARY KEY (tenant_id, day, event_type)
);

-- Reports, requested through the API and computed by the report.generate consumer.
CREATE TABLE reports (
    tenant_id    uuid        NOT NULL,
    -- A UUIDv7: ids sort by request time, which the newest-first list relies on.
    id           uuid        NOT NULL,
    status       text        NOT NULL DEFAULT 'pending'
                             CHECK (status IN ('pending', 'ready', 'failed')),
    from_day     date        NOT NULL,
    to_day       date        NOT NULL,
    requested_by text        NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    -- {"totals": {...}, "days": [...]} once ready.
    result       jsonb,
    -- Why it failed, once failed.
    error        text,
    -- At most 366 days, both ends included (the API checks it first and says so).
    CHECK (from_day <= to_day AND to_day - from_day <= 365),
    CHECK ((status = 'pending') = (completed_at IS NULL)),
    CHECK ((status = 'ready') = (result IS NOT NULL)),
    CHECK ((status = 'failed') = (error IS NOT NULL)),
    PRIMARY KEY (tenant_id, id)
);

-- ENABLE + FORCE row level security, the restrictive tenant policy, and DML grants to arq_app.
SELECT arq.enable_tenant_rls('tenants', 'arq_app');
SELECT arq.enable_tenant_rls('processed_events', 'arq_app');
SELECT arq.enable_tenant_rls('daily_event_counts', 'arq_app');
SELECT arq.enable_tenant_rls('reports', 'arq_app');
