//! JSON <-> CEL values. JSON has one number type; CEL has `int`, `uint` and `double` and no implicit
//! conversions between them, so integral JSON numbers become `int` (what a user writing `qty * 2`
//! means) and the others `double`.

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::{Key, Map, Value};

pub fn to_cel(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(items) => Value::List(Arc::new(items.iter().map(to_cel).collect())),
        serde_json::Value::Object(fields) => {
            let map: HashMap<Key, Value> =
                fields.iter().map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v))).collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

/// A CEL value as JSON; `None` for values JSON cannot carry (a function, a type, NaN).
pub fn to_json(v: &Value) -> Option<serde_json::Value> {
    v.json().ok()
}

/// How a value prints inside an interpolated string: strings bare, everything else as JSON.
pub fn to_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_survives_the_round_trip_with_integers_as_int() {
        let json = serde_json::json!({"a": 1, "b": -2, "c": 1.5, "d": [true, null, "x"], "e": {"f": {}}});
        let cel = to_cel(&json);
        assert_eq!(to_json(&cel), Some(json));
        assert!(matches!(to_cel(&serde_json::json!(7)), Value::Int(7)));
        assert!(matches!(to_cel(&serde_json::json!(u64::MAX)), Value::UInt(u64::MAX)));
    }
}
