//! From a Rust API type to a Kubernetes *structural* OpenAPI v3 schema.
//!
//! schemars describes the type in OpenAPI 3 form with every subschema inlined; [`rewrite`] then
//! turns that into what the API server accepts for a CRD:
//! - no `$ref`, `$schema`, `title`, `default` (the API server would apply defaults; CDI's CRDs
//!   have none and the controller defaults in code);
//! - `Option<T>` written as `anyOf: [T, null]` / `type: [T, null]` becomes `T` + `nullable: true`;
//! - `#[serde(flatten)] extra` maps (schemars: `additionalProperties: true` beside `properties`)
//!   become `x-kubernetes-preserve-unknown-fields: true`, so unknown fields survive as they do in
//!   the Rust types;
//! - `serde_json::Value` fields (an empty schema) become `x-kubernetes-preserve-unknown-fields`;
//! - formats Kubernetes does not know (`uint32`…) are dropped.
//!
//! [`structural_problems`] checks the result against the structural-schema rules, so a type
//! change that would make the API server refuse the CRD fails a test instead of an install.

use serde_json::{Map, Value};

/// Formats the API server understands for CRD schemas; others are dropped.
const KNOWN_FORMATS: &[&str] = &["int32", "int64", "float", "double", "byte", "date-time", "date"];

/// The extension marking a node whose unknown fields are kept.
pub const PRESERVE_UNKNOWN: &str = "x-kubernetes-preserve-unknown-fields";
/// The extension marking an int-or-string node (quantities).
pub const INT_OR_STRING: &str = "x-kubernetes-int-or-string";

/// The structural schema of `T`, as JSON.
pub fn schema_value<T: schemars::JsonSchema>() -> Value {
    let settings = schemars::generate::SchemaSettings::openapi3().with(|s| {
        s.inline_subschemas = true;
        s.meta_schema = None;
    });
    let schema = settings.into_generator().into_root_schema_for::<T>();
    let mut value = schema.to_value();
    if let Value::Object(root) = &mut value {
        for key in ["$schema", "$defs", "definitions", "components"] {
            root.remove(key);
        }
    }
    rewrite(&mut value);
    value
}

/// Rewrites one schemars node (and everything below it) into structural form.
pub fn rewrite(node: &mut Value) {
    if let Value::Bool(true) = node {
        *node = preserve_anything(false);
        return;
    }
    let Value::Object(map) = node else { return };
    for key in ["title", "default", "examples", "$schema"] {
        map.remove(key);
    }
    fold_nullable(map);
    if let Some(Value::String(format)) = map.get("format")
        && !KNOWN_FORMATS.contains(&format.as_str())
    {
        map.remove("format");
    }
    // `{}` or `{nullable: true}` (a serde_json::Value field): anything.
    if is_unconstrained(map) {
        let nullable = map.get("nullable") == Some(&Value::Bool(true));
        let description = map.remove("description");
        *map = preserve_anything(nullable).as_object().cloned().unwrap_or_default();
        if let Some(description) = description {
            map.insert("description".into(), description);
        }
        return;
    }
    match map.get("additionalProperties") {
        // flatten'ed `extra`, or a map of arbitrary values
        Some(Value::Bool(true)) => {
            map.remove("additionalProperties");
            map.insert(PRESERVE_UNKNOWN.into(), Value::Bool(true));
            map.entry("type").or_insert_with(|| "object".into());
        }
        Some(Value::Object(extra)) if extra.is_empty() => {
            map.remove("additionalProperties");
            map.insert(PRESERVE_UNKNOWN.into(), Value::Bool(true));
            map.entry("type").or_insert_with(|| "object".into());
        }
        Some(Value::Bool(false)) => {
            map.remove("additionalProperties");
        }
        _ => {}
    }
    if let Some(Value::Object(properties)) = map.get_mut("properties") {
        properties.values_mut().for_each(rewrite);
    }
    if let Some(additional @ Value::Object(_)) = map.get_mut("additionalProperties") {
        rewrite(additional);
    }
    if let Some(items) = map.get_mut("items") {
        rewrite(items);
    }
    if map.get("type") == Some(&Value::String("object".into()))
        && !map.contains_key("properties")
        && !map.contains_key("additionalProperties")
    {
        // An object with no declared fields (`upload: {}`): keep whatever is in it.
        map.insert(PRESERVE_UNKNOWN.into(), Value::Bool(true));
    }
}

/// `{x-kubernetes-preserve-unknown-fields: true}` (+ `nullable`).
fn preserve_anything(nullable: bool) -> Value {
    let mut map = Map::new();
    if nullable {
        map.insert("nullable".into(), Value::Bool(true));
    }
    map.insert(PRESERVE_UNKNOWN.into(), Value::Bool(true));
    Value::Object(map)
}

/// Whether a node says nothing about its value (only a description / nullable).
fn is_unconstrained(map: &Map<String, Value>) -> bool {
    map.keys().all(|k| k == "description" || k == "nullable")
}

/// Folds the shapes schemars uses for `Option<T>` into `T` + `nullable: true`:
/// `type: [T, "null"]`, `anyOf`/`oneOf: [T, {type: null}]`, `enum: [.., null]`.
fn fold_nullable(map: &mut Map<String, Value>) {
    if let Some(Value::Array(types)) = map.get("type") {
        let non_null: Vec<Value> = types.iter().filter(|t| t.as_str() != Some("null")).cloned().collect();
        if non_null.len() < types.len() {
            map.insert("nullable".into(), Value::Bool(true));
        }
        match non_null.as_slice() {
            [one] => {
                map.insert("type".into(), one.clone());
            }
            [] => {
                map.remove("type");
            }
            _ => {}
        }
    }
    if let Some(Value::Array(values)) = map.get_mut("enum")
        && values.iter().any(Value::is_null)
    {
        values.retain(|v| !v.is_null());
        map.insert("nullable".into(), Value::Bool(true));
    }
    for key in ["anyOf", "oneOf"] {
        let Some(Value::Array(branches)) = map.get(key) else { continue };
        let is_null = |b: &Value| {
            b.get("type").and_then(Value::as_str) == Some("null")
                || b.get("enum").is_some_and(|e| e == &Value::Array(vec![Value::Null]))
                || b == &serde_json::json!({"nullable": true})
        };
        let rest: Vec<Value> = branches.iter().filter(|b| !is_null(b)).cloned().collect();
        if rest.len() == branches.len() {
            continue;
        }
        if let [Value::Object(inner)] = rest.as_slice() {
            let inner = inner.clone();
            map.remove(key);
            for (k, v) in inner {
                map.entry(k).or_insert(v);
            }
            map.insert("nullable".into(), Value::Bool(true));
            fold_nullable(map);
        }
    }
    if let Some(Value::Array(all)) = map.get("allOf")
        && let [Value::Object(inner)] = all.as_slice()
    {
        let inner = inner.clone();
        map.remove("allOf");
        for (k, v) in inner {
            map.entry(k).or_insert(v);
        }
        fold_nullable(map);
    }
}

/// Every way `schema` breaks the structural-schema rules of `apiextensions.k8s.io/v1`, as
/// `path: problem` lines; empty when the schema is structural.
pub fn structural_problems(schema: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    check_node(schema, "", &mut problems);
    if let Some(metadata) = schema.pointer("/properties/metadata")
        && metadata != &serde_json::json!({"type": "object"})
    {
        problems.push(format!(".metadata: must be `type: object` only, got {metadata}"));
    }
    problems
}

fn check_node(node: &Value, path: &str, problems: &mut Vec<String>) {
    let Value::Object(map) = node else {
        problems.push(format!("{path}: a schema must be an object, got {node}"));
        return;
    };
    let shown = if path.is_empty() { "." } else { path };
    for key in ["$ref", "$schema", "definitions", "$defs", "default"] {
        if map.contains_key(key) {
            problems.push(format!("{shown}: `{key}` is not allowed"));
        }
    }
    let int_or_string = map.get(INT_OR_STRING) == Some(&Value::Bool(true));
    let preserve = map.get(PRESERVE_UNKNOWN) == Some(&Value::Bool(true));
    match map.get("type") {
        Some(Value::String(t)) if int_or_string => {
            problems.push(format!("{shown}: int-or-string must not have a type, got {t}"));
        }
        Some(Value::String(t)) => {
            if !["object", "array", "string", "integer", "number", "boolean"].contains(&t.as_str()) {
                problems.push(format!("{shown}: unknown type {t}"));
            }
            if t == "array" && !map.contains_key("items") {
                problems.push(format!("{shown}: array without items"));
            }
        }
        Some(other) => problems.push(format!("{shown}: type must be a string, got {other}")),
        None if int_or_string || preserve => {}
        None => problems.push(format!("{shown}: no type (and not int-or-string or preserve-unknown-fields)")),
    }
    for key in ["anyOf", "oneOf", "allOf", "not"] {
        if let Some(value) = map.get(key) {
            let int_or_string_form = serde_json::json!([{"type": "integer"}, {"type": "string"}]);
            if !(int_or_string && key == "anyOf" && value == &int_or_string_form) {
                problems.push(format!("{shown}: `{key}` is only allowed as the int-or-string pattern here"));
            }
        }
    }
    if map.contains_key("properties") && map.contains_key("additionalProperties") {
        problems.push(format!("{shown}: properties and additionalProperties are mutually exclusive"));
    }
    if let Some(Value::Object(properties)) = map.get("properties") {
        for (name, child) in properties {
            check_node(child, &format!("{path}.{name}"), problems);
        }
    }
    match map.get("additionalProperties") {
        Some(child @ Value::Object(_)) => check_node(child, &format!("{path}.*"), problems),
        Some(other) => problems.push(format!("{shown}: additionalProperties must be a schema, got {other}")),
        None => {}
    }
    if let Some(items) = map.get("items") {
        check_node(items, &format!("{path}[]"), problems);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn option_shapes_fold_into_nullable() {
        let mut node =
            json!({"anyOf": [{"type": "object", "properties": {"a": {"type": "string"}}}, {"type": "null"}]});
        rewrite(&mut node);
        assert_eq!(
            node,
            json!({"type": "object", "nullable": true, "properties": {"a": {"type": "string"}}})
        );

        let mut node = json!({"type": ["string", "null"], "format": "uint32"});
        rewrite(&mut node);
        assert_eq!(node, json!({"type": "string", "nullable": true}));
    }

    #[test]
    fn flattened_extra_and_any_values_preserve_unknown_fields() {
        let mut node = json!({"type": "object", "properties": {"v": {}}, "additionalProperties": true});
        rewrite(&mut node);
        assert_eq!(
            node,
            json!({"type": "object", "properties": {"v": {PRESERVE_UNKNOWN: true}}, PRESERVE_UNKNOWN: true})
        );
    }

    #[test]
    fn structural_check_names_refs_untyped_nodes_and_bad_metadata() {
        let schema = json!({
            "type": "object",
            "properties": {
                "metadata": {"type": "object", "properties": {"name": {"type": "string"}}},
                "a": {"$ref": "#/x"},
                "b": {"description": "nothing"},
                "c": {"type": "array"},
                "d": {"anyOf": [{"type": "string"}, {"type": "boolean"}]},
            }
        });
        let problems = structural_problems(&schema).join("\n");
        for expected in
            [".a: `$ref`", ".b: no type", ".c: array without items", ".d: `anyOf`", ".metadata: must be"]
        {
            assert!(problems.contains(expected), "{expected} missing from:\n{problems}");
        }
    }
}
