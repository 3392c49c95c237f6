//! The REST API, one file per resource; each handler parses the request into the domain model,
//! calls the control plane over gRPC and encodes the answer.

pub mod dataplane;
pub mod registry;
pub mod routes;
pub mod workflows;
