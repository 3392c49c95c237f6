//! ReskFlow's contracts and the Rust client other services use.
//!
//! - [`pb`]: the generated protobuf messages and tonic clients/servers.
//! - [`registry`]: the registry's domain model (services, instances, health, discovery), with its
//!   JSON form (the REST API's camelCase), validation and the conversions to and from [`pb`].
//! - [`route`]: gateway routes (matching, auth, limits, cache, validation, transforms), checked.
//! - [`invalid`]: field-level validation errors and their gRPC form (`google.rpc.BadRequest`).
//! - [`client`]: connect to the control plane with timeouts; typed calls that speak the domain model.
//! - [`saga`]: an in-process saga runner (forward and compensate closures).

pub mod client;
pub mod dataplane;
pub mod invalid;
pub mod policy;
pub mod registry;
pub mod route;
pub mod saga;

/// Generated protobuf code, one module per proto package.
pub mod pb {
    pub mod registry {
        pub mod v1 {
            #![allow(clippy::all)]
            tonic::include_proto!("reskflow.registry.v1");
        }
    }
    pub mod workflow {
        pub mod v1 {
            #![allow(clippy::all)]
            tonic::include_proto!("reskflow.workflow.v1");
        }
    }
    pub mod config {
        pub mod v1 {
            #![allow(clippy::all)]
            tonic::include_proto!("reskflow.config.v1");
        }
    }
}

pub use client::{Client, ClientOptions};
pub use invalid::{FieldViolation, Invalid};
