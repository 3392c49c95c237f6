//! The workflow engine.
//!
//! - `definition`: the JSON definitions users register, checked and compiled.
//! - `state`: a run as a pure state machine: events in, effects out.
//! - `engine`: register definitions; start, read, list and cancel runs.
//! - `worker`: claims queued tasks, calls the services, commits each outcome.
//! - `view`: a run as the API shows it (steps, attempts, history).
//! - `saga`: ad-hoc sagas, run as workflows named by their shape.

pub mod definition;
pub mod engine;
pub mod saga;
pub mod state;
pub mod view;
pub mod worker;

pub use engine::{Engine, EngineOptions, WorkflowError};

#[cfg(test)]
mod tests;
