-- Gateway routes (reskflow_proto::route::Route as JSON). Changes to them go through the registry's
-- change log like services and instances, so every replica and every gateway sees them in order.
CREATE TABLE gateway_routes (
    id            TEXT PRIMARY KEY,
    body          BYTEA NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
