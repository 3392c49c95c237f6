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

/// What gateway transform templates may use: the verified caller's `claims`, the route's path
/// `params`, the request's `headers` and `query`, its JSON `body`, `request` (`method`, `path`,
/// `ip`, `routeId`) and, in response transforms, `response` (`status`, `headers`, `body`).
pub const GATEWAY_SCOPE: Scope = Scope {
    variables: &["claims", "params", "headers", "query", "body", "request", "response"],
    keyed: &["headers", "params", "query"],
};
pub use template::Template;
