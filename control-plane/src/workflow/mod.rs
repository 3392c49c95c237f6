//! The workflow engine.
//!
//! - `definition`: the JSON definitions users register, checked and compiled.

pub mod definition;
