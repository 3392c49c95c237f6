-- Batched commits: a task carries how long a claim holds it beyond the base lease (its call's
-- timeout), so a worker never has to extend a lease before a call; a run carries the length of its
-- history, so a commit appends events without reading the history first.
ALTER TABLE workflow_tasks ADD COLUMN hold_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workflow_instances ADD COLUMN history_len BIGINT NOT NULL DEFAULT 0;
UPDATE workflow_instances SET history_len =
    (SELECT COALESCE(MAX(e.seq), 0) FROM workflow_events e WHERE e.instance_id = workflow_instances.id);
