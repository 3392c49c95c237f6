//! End-to-end tests of ReskFlow: the real `control-plane` and `gateway` binaries, driven over
//! HTTP and gRPC. `harness` starts them; `targets` are the real HTTP, TCP and gRPC services whose
//! health the tests flip.

pub mod harness;
pub mod targets;
