//! Checks of gateway routes before they are stored: each route's shape (`Route::normalize`), its
//! JSON Schemas and transform templates compile, ids are unique in one request, and the resulting
//! table has no two routes for the same method and an equivalent path. A route the control plane
//! accepts is one every gateway can load, so gateways do not refuse (NACK) stored routes.

use std::collections::BTreeMap;

use reskflow_expr::{Template, GATEWAY_SCOPE};
use reskflow_proto::invalid::{FieldViolation, Invalid, Violations};
use reskflow_proto::route::{Edits, Route};
use reskflow_sidecar::routing::RouteTable;

/// Normalizes `routes` (defaults filled) and checks each alone; violations are named
/// `routes[i].field` (or `field` when there is one route and `single`).
pub fn normalize_all(routes: Vec<Route>, single: bool) -> Result<Vec<Route>, Invalid> {
    let mut out = Vec::with_capacity(routes.len());
    let mut bad = Vec::new();
    let prefix = |i: usize, field: &str| if single { field.to_string() } else { format!("routes[{i}].{field}") };
    for (i, route) in routes.into_iter().enumerate() {
        let checked = route.normalize().and_then(|r| compiles(&r).map(|()| r));
        match checked {
            Ok(route) => {
                if out.iter().any(|r: &Route| r.id == route.id) {
                    bad.push(FieldViolation {
                        field: prefix(i, "id"),
                        description: format!("route {} appears twice", route.id),
                    });
                }
                out.push(route);
            }
            Err(Invalid(violations)) => bad.extend(
                violations
                    .into_iter()
                    .map(|v| FieldViolation { field: prefix(i, &v.field), description: v.description }),
            ),
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(Invalid(bad))
    }
}

/// The schemas and templates of one (normalized) route compile.
fn compiles(route: &Route) -> Result<(), Invalid> {
    let mut v = Violations::default();
    if let Some(validation) = &route.validation {
        for (field, schema) in
            [("body", &validation.body), ("query", &validation.query), ("params", &validation.params)]
        {
            if let Some(schema) = schema {
                if let Err(err) = jsonschema::validator_for(schema) {
                    v.add(format!("validation.{field}"), format!("not a usable JSON Schema: {err}"));
                }
            }
        }
    }
    if let Some(transform) = &route.transform {
        for (side, t) in [("request", &transform.request), ("response", &transform.response)] {
            let Some(t) = t else { continue };
            for (part, edits) in [("headers", &t.headers), ("query", &t.query), ("body", &t.body)] {
                templates(&mut v, &format!("transform.{side}.{part}"), edits);
            }
        }
    }
    v.finish()
}

fn templates(v: &mut Violations, field: &str, edits: &Edits) {
    for (name, value) in &edits.add {
        if let Err(err) = Template::compile(&serde_json::Value::String(value.clone()), &GATEWAY_SCOPE) {
            v.add(format!("{field}.add.{name}"), err.to_string());
        }
    }
}

/// The table the routes make has no conflicts (two routes for one method and equivalent paths).
pub fn table_is_routable(routes: &BTreeMap<&str, &Route>) -> Result<(), Invalid> {
    let entries = routes.values().map(|r| (r.id.as_str(), r.method.as_str(), r.path.as_str(), ()));
    match RouteTable::build(entries) {
        Ok(_) => Ok(()),
        Err(conflicts) => Err(Invalid(
            conflicts
                .into_iter()
                .map(|c| FieldViolation { field: format!("routes[{}].path", c.id), description: c.why })
                .collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(json: serde_json::Value) -> Route {
        serde_json::from_value(json).expect("route")
    }

    #[test]
    fn schemas_templates_and_duplicates_are_checked() {
        let good = route(serde_json::json!({"path": "/api/orders/:id", "serviceId": "orders",
            "transform": {"request": {"headers": {"add": {"x-user": "{{ claims.sub }}"}}}}}));
        let routes = normalize_all(vec![good.clone()], true).expect("valid");
        assert_eq!(routes[0].id, "all-api-orders-id");

        let bad_schema = route(serde_json::json!({"path": "/api/a", "serviceId": "a",
            "validation": {"body": {"type": "no-such-type"}}}));
        let bad_template = route(serde_json::json!({"path": "/api/b", "serviceId": "b",
            "transform": {"response": {"body": {"add": {"x": "{{ nope.x }}"}}}}}));
        let err = normalize_all(vec![good.clone(), bad_schema, bad_template, good], false).expect_err("invalid");
        let fields: Vec<&str> = err.0.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["routes[1].validation.body", "routes[2].transform.response.body.add.x", "routes[3].id"]);
    }

    #[test]
    fn conflicting_paths_name_the_route() {
        let a = route(serde_json::json!({"id": "a", "method": "GET", "path": "/api/orders/:id", "serviceId": "x"}));
        let b =
            route(serde_json::json!({"id": "b", "method": "GET", "path": "/api/orders/:orderId", "serviceId": "x"}));
        let c =
            route(serde_json::json!({"id": "c", "method": "POST", "path": "/api/orders/:orderId", "serviceId": "x"}));
        let table: BTreeMap<&str, &Route> = [("a", &a), ("c", &c)].into_iter().collect();
        assert!(table_is_routable(&table).is_ok());
        let table: BTreeMap<&str, &Route> = [("a", &a), ("b", &b)].into_iter().collect();
        let err = table_is_routable(&table).expect_err("conflict");
        assert_eq!(err.0[0].field, "routes[b].path");
    }
}
