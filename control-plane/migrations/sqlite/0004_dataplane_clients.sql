-- Data planes (sidecars, gateways) connected to a control-plane replica over the config stream:
-- the version each was sent and acked, and its latest circuit-breaker report. Every replica writes
-- the rows of its own streams, so any replica can list all of them.
CREATE TABLE dataplane_clients (
    node_id         TEXT PRIMARY KEY,
    role            TEXT NOT NULL,
    service_id      TEXT NOT NULL DEFAULT '',
    region          TEXT NOT NULL DEFAULT '',
    zone            TEXT NOT NULL DEFAULT '',
    sent_version    BIGINT NOT NULL DEFAULT 0,
    acked_version   BIGINT NOT NULL DEFAULT 0,
    nacked_version  BIGINT NOT NULL DEFAULT 0,
    nack_error      TEXT NOT NULL DEFAULT '',
    control_plane   TEXT NOT NULL,
    connected_at_ms BIGINT NOT NULL,
    last_seen_ms    BIGINT NOT NULL,
    breakers_json   TEXT NOT NULL DEFAULT '{}'
);
