-- Workflow definitions, one row per version; body is the definition's JSON as registered.
CREATE TABLE workflow_definitions (
    id            TEXT NOT NULL,
    version       BIGINT NOT NULL,
    name          TEXT NOT NULL,
    body          TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (id, version)
);

-- One row per run. `run` is the state machine's state (JSON); status mirrors it for queries.
CREATE TABLE workflow_instances (
    id              TEXT PRIMARY KEY,
    workflow_id     TEXT NOT NULL,
    version         BIGINT NOT NULL,
    status          TEXT NOT NULL,
    run             TEXT NOT NULL,
    idempotency_key TEXT,
    created_at_ms   BIGINT NOT NULL,
    updated_at_ms   BIGINT NOT NULL,
    deadline_ms     BIGINT NOT NULL DEFAULT 0,
    FOREIGN KEY (workflow_id, version) REFERENCES workflow_definitions (id, version)
);
CREATE UNIQUE INDEX workflow_instances_idempotency ON workflow_instances (workflow_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX workflow_instances_by_workflow ON workflow_instances (workflow_id, status, created_at_ms);

-- Append-only history of each run.
CREATE TABLE workflow_events (
    instance_id TEXT NOT NULL REFERENCES workflow_instances (id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    at_ms       BIGINT NOT NULL,
    body        TEXT NOT NULL,
    PRIMARY KEY (instance_id, seq)
);

-- The queue. A worker holds a task while lease_until_ms is in the future; when the lease runs out
-- (the worker died) another worker takes the task.
CREATE TABLE workflow_tasks (
    id             BIGSERIAL PRIMARY KEY,
    instance_id    TEXT NOT NULL REFERENCES workflow_instances (id) ON DELETE CASCADE,
    kind           TEXT NOT NULL,
    step           BIGINT NOT NULL DEFAULT -1,
    attempt        BIGINT NOT NULL DEFAULT 0,
    run_at_ms      BIGINT NOT NULL,
    lease_owner    TEXT,
    lease_until_ms BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX workflow_tasks_due ON workflow_tasks (run_at_ms);
CREATE INDEX workflow_tasks_by_instance ON workflow_tasks (instance_id);
