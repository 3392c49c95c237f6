//! The workflow engine.
//!
//! - `definition`: the JSON definitions users register, checked and compiled.
//! - `state`: a run as a pure state machine: events in, effects out.

pub mod definition;
pub mod state;
