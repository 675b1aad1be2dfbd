-- Step 5 (arq-queue): arq-queue's outbox table (arq_queue::outbox::MIGRATION runs just before
-- this file). The runtime role may only INSERT: it writes events inside its tenant transaction
-- and can never read another tenant's. The relay connects as a role that may read and delete
-- (RELAY_DATABASE_URL; in development the owner).
GRANT INSERT ON arq_outbox TO arq_app;
GRANT USAGE ON SEQUENCE arq_outbox_seq_seq TO arq_app;
