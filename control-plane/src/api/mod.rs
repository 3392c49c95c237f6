//! The gRPC API: one file per service, and `status` for the one place errors become gRPC statuses.

pub mod auth;
pub mod config;
pub mod registry;
pub mod status;
pub mod workflows;
