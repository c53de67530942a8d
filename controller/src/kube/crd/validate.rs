//! A small validator for objects against a structural CRD schema, as the API server applies it:
//! `type`, `format: int32/int64`, `properties`, `required`, `items`, `enum`, typed
//! `additionalProperties` (maps), `nullable`, `x-kubernetes-preserve-unknown-fields` and
//! `x-kubernetes-int-or-string`.
//!
//! Used by the tests to check that every CDI example manifest fits the generated CRDs, and
//! usable as an offline `kubectl apply --dry-run`.
//!
//! # Caveats
//! - `null` in a field that is not `nullable` is *pruned* by the API server before validation
//!   (apiextensions v1); this validator does the same (the field then counts as absent).
//! - A field the schema does not declare (and no `preserve-unknown-fields` above it) is an error
//!   here, as with `kubectl apply --validate=strict`; the API server would prune it silently.
//! - The root `metadata` is only checked to be an object: the API server validates ObjectMeta
//!   itself, whatever the CRD says.
//! - `pattern`, `minLength`/`maxLength`, `minimum`/`maximum` and CEL rules are not checked.

use serde_json::{Map, Value};

use super::schema::{INT_OR_STRING, PRESERVE_UNKNOWN};

/// Checks `object` against `schema` (a CRD's `openAPIV3Schema` as JSON). Returns every problem
/// as `path: what` (e.g. `.spec.source.http.url: expected string, got 5`).
///
/// # Errors
/// The list of problems, when there is at least one.
pub fn validate(schema: &Value, object: &Value) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    check(schema, object, "", &mut problems);
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

fn flag(map: &Map<String, Value>, key: &str) -> bool {
    map.get(key) == Some(&Value::Bool(true))
}

fn check(schema: &Value, value: &Value, path: &str, problems: &mut Vec<String>) {
    let shown = if path.is_empty() { "." } else { path };
    let Value::Object(schema) = schema else {
        problems.push(format!("{shown}: the schema is not an object"));
        return;
    };
    if value.is_null() {
        // Only reached for the root or for items of a list; fields are pruned by the caller.
        if !flag(schema, "nullable") {
            problems.push(format!("{shown}: null is not allowed"));
        }
        return;
    }
    if let Some(Value::Array(allowed)) = schema.get("enum")
        && !allowed.contains(value)
    {
        problems.push(format!("{shown}: {value} is not one of {}", Value::Array(allowed.clone())));
    }
    if flag(schema, INT_OR_STRING) {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            problems.push(format!("{shown}: expected an integer or a string, got {value}"));
        }
        return;
    }
    match schema.get("type").and_then(Value::as_str) {
        None => {
            // preserve-unknown-fields without a type: any value; declared fields still checked.
            if let Value::Object(fields) = value {
                check_fields(schema, fields, path, problems);
            }
        }
        Some("object") => match value {
            Value::Object(fields) => check_fields(schema, fields, path, problems),
            other => problems.push(format!("{shown}: expected object, got {other}")),
        },
        Some("array") => match value {
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        check(item_schema, item, &format!("{path}[{i}]"), problems);
                    }
                }
            }
            other => problems.push(format!("{shown}: expected array, got {other}")),
        },
        Some("string") => {
            if !value.is_string() {
                problems.push(format!("{shown}: expected string, got {value}"));
            }
        }
        Some("boolean") => {
            if !value.is_boolean() {
                problems.push(format!("{shown}: expected boolean, got {value}"));
            }
        }
        Some("number") => {
            if !value.is_number() {
                problems.push(format!("{shown}: expected number, got {value}"));
            }
        }
        Some("integer") => match value.as_i64() {
            Some(n) => {
                if schema.get("format").and_then(Value::as_str) == Some("int32") && i32::try_from(n).is_err()
                {
                    problems.push(format!("{shown}: {n} does not fit int32"));
                }
            }
            None if value.is_u64() => {
                problems.push(format!("{shown}: {value} does not fit int64"));
            }
            None => problems.push(format!("{shown}: expected integer, got {value}")),
        },
        Some(other) => problems.push(format!("{shown}: the schema has an unknown type {other}")),
    }
}

fn check_fields(
    schema: &Map<String, Value>,
    fields: &Map<String, Value>,
    path: &str,
    problems: &mut Vec<String>,
) {
    let shown = if path.is_empty() { "." } else { path };
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties");
    let preserve = flag(schema, PRESERVE_UNKNOWN);
    let mut present: Vec<&str> = Vec::new();
    for (name, value) in fields {
        let child_path = format!("{path}.{name}");
        if path.is_empty() && name == "metadata" {
            // The root `metadata` is `type: object` only: the API server checks ObjectMeta itself.
            present.push(name);
            if !value.is_object() {
                problems.push(format!("{child_path}: expected object, got {value}"));
            }
            continue;
        }
        let child_schema = properties.and_then(|p| p.get(name)).or(additional.filter(|a| a.is_object()));
        match child_schema {
            Some(child) => {
                let nullable = child.get("nullable") == Some(&Value::Bool(true));
                if value.is_null() && !nullable {
                    continue; // pruned
                }
                present.push(name);
                check(child, value, &child_path, problems);
            }
            None if preserve => present.push(name),
            None => problems.push(format!("{child_path}: unknown field")),
        }
    }
    if let Some(Value::Array(required)) = schema.get("required") {
        for name in required.iter().filter_map(Value::as_str) {
            if !present.contains(&name) {
                problems.push(format!("{shown}: missing required field {name}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "count": {"type": "integer", "format": "int32"},
                "mode": {"type": "string", "enum": ["A", "B"]},
                "size": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                "tags": {"type": "array", "items": {"type": "string"}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "opt": {"type": "object", "nullable": true, "properties": {}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            }
        })
    }

    #[test]
    fn a_fitting_object_passes() {
        let object = json!({
            "name": "x", "count": 3, "mode": "A", "size": "10Gi", "tags": ["a"],
            "labels": {"k": "v"}, "opt": null, "free": {"any": [1, {"thing": true}]},
        });
        assert_eq!(validate(&schema(), &object), Ok(()));
        assert_eq!(validate(&schema(), &json!({"name": "x", "size": 1024})), Ok(()));
    }

    #[test]
    fn every_mismatch_is_named_with_its_path() {
        let object = json!({
            "count": 4_294_967_296_i64, "mode": "C", "size": true, "tags": [1],
            "labels": {"k": 1}, "bogus": 1, "free": 5,
        });
        let problems = validate(&schema(), &object).unwrap_err().join("\n");
        for expected in [
            ".: missing required field name",
            ".count: 4294967296 does not fit int32",
            ".mode: \"C\" is not one of",
            ".size: expected an integer or a string",
            ".tags[0]: expected string, got 1",
            ".labels.k: expected string, got 1",
            ".bogus: unknown field",
            ".free: expected object, got 5",
        ] {
            assert!(problems.contains(expected), "{expected} missing from:\n{problems}");
        }
    }

    #[test]
    fn null_in_a_non_nullable_field_is_pruned_so_required_fields_still_count() {
        assert_eq!(validate(&schema(), &json!({"name": "x", "tags": null})), Ok(()));
        let problems = validate(&schema(), &json!({"name": null})).unwrap_err();
        assert_eq!(problems, vec![".: missing required field name".to_owned()]);
    }
}
