//! Start-up of the real binaries: bad configuration is reported in full, before any port is bound.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::process::Command;

use reskflow_e2e::harness::binary;

#[test]
fn the_control_plane_names_every_bad_variable_and_exits_64() {
    let output = Command::new(binary("control-plane"))
        .env_clear()
        .env("GRPC_ADDR", "not-an-address")
        .env("DATABASE_URL", "mysql://db/x")
        .env("HEALTH_LEASE_TTL", "1ms")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for variable in ["GRPC_ADDR", "DATABASE_URL", "HEALTH_LEASE_TTL"] {
        assert!(stderr.contains(variable), "{variable} missing from: {stderr}");
    }
}

#[test]
fn the_gateway_rejects_a_malformed_value_and_exits_64() {
    let output = Command::new(binary("gateway")).env_clear().env("PORT", "http").output().unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("\"PORT\""));
    let output =
        Command::new(binary("gateway")).env_clear().env("ORCHESTRATION_URL", "localhost:50051").output().unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("ORCHESTRATION_URL"));
}
