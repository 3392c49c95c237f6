-- Registry documents are stored as protobuf bytes (reskflow.registry.v1 Service / Instance).
CREATE TABLE services (
    id            TEXT PRIMARY KEY,
    body          BYTEA NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE instances (
    id                TEXT PRIMARY KEY,
    service_id        TEXT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    body              BYTEA NOT NULL,
    last_heartbeat_ms BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX instances_by_service ON instances(service_id);

-- Append-only change log; seq is the registry version watchers see. Writers take an advisory lock
-- first, so seq order is commit order and a reader never skips a change that commits late.
CREATE TABLE registry_changes (
    seq           BIGSERIAL PRIMARY KEY,
    kind          TEXT NOT NULL,
    entity_id     TEXT NOT NULL,
    body          BYTEA,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE registry_meta (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO registry_meta (name, value) VALUES ('compacted_through', 0);

CREATE TABLE leases (
    name          TEXT PRIMARY KEY,
    holder        TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
