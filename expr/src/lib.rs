//! One expression language for the whole project: [CEL](https://cel.dev) via the `cel` crate, used by
//! workflow conditions and routing, `{{ }}` templates in step inputs and outputs, and gateway
//! transforms.
//!
//! - [`expr`]: one compiled expression: the variables it may use, the ids it names, evaluation.
//! - [`template`]: JSON with `{{ expr }}` strings; a string that is exactly one `{{ expr }}` yields the
//!   expression's JSON value (a number stays a number), any other string is interpolated.
//! - [`value`]: JSON <-> CEL values (JSON integers are CEL `int`, so `input.qty * 2` works).

pub mod expr;
pub mod template;
pub mod value;

pub use expr::{Expr, ExprError, Scope, Vars};
pub use template::Template;
