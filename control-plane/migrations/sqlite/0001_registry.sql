-- Registry documents are stored as protobuf bytes (reskflow.registry.v1 Service / Instance).
CREATE TABLE services (
    id            TEXT PRIMARY KEY,
    body          BLOB NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE instances (
    id                TEXT PRIMARY KEY,
    service_id        TEXT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    body              BLOB NOT NULL,
    last_heartbeat_ms INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX instances_by_service ON instances(service_id);

-- Append-only change log; seq is the registry version watchers see.
CREATE TABLE registry_changes (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT NOT NULL,
    entity_id     TEXT NOT NULL,
    body          BLOB,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE registry_meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO registry_meta (name, value) VALUES ('compacted_through', 0);

-- Leader leases (the health checker runs on one replica at a time).
CREATE TABLE leases (
    name          TEXT PRIMARY KEY,
    holder        TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
