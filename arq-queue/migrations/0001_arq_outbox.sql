-- The arq-queue transactional outbox (see arq-queue/src/outbox.rs).
-- Rows are written inside the caller's transaction and deleted by the relay after the broker
-- confirmed them. Not tenant-scoped by RLS: the runtime (tenant) role gets INSERT only, so no
-- tenant can read another's rows; the relay's role reads and deletes.
create table if not exists arq_outbox (
    seq          bigserial   primary key,
    id           uuid        not null,
    tenant_id    uuid,
    exchange     text        not null,
    routing_key  text        not null,
    envelope     bytea       not null,
    created_at   timestamptz not null default now(),
    failed_at    timestamptz,
    last_error   text
);

create index if not exists arq_outbox_pending on arq_outbox (seq) where failed_at is null;
