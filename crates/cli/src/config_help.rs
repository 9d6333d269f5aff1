//! Each stage's config keys, with their types, defaults and descriptions, read from the
//! stage's config type itself: `schemars` derives a JSON schema from the type, its serde
//! attributes (renames, defaults, tags) and its doc comments, so what `geoloc STAGE --help`
//! and `geoloc config STAGE` list cannot drift from what the stage accepts.

use serde_json::Value;

/// The stages with a config table.
pub const STAGES: [&str; 5] = ["ingest", "preprocess", "featurize", "train", "evaluate"];

/// The JSON schema of a stage's config type.
pub fn schema(stage: &str) -> Option<Value> {
    let s = match stage {
        "ingest" => schemars::schema_for!(geoloc_ingest::Config),
        "preprocess" => schemars::schema_for!(geoloc_preprocess::Config),
        "featurize" => schemars::schema_for!(geoloc_featurize::Config),
        "train" => schemars::schema_for!(geoloc_train::Config),
        "evaluate" => schemars::schema_for!(geoloc_evaluate::Config),
        _ => return None,
    };
    Some(s.to_value())
}

/// One key of a config table.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// Dotted from the table (`geometry.resize`, `sources[].format`).
    pub name: String,
    /// What it takes (`integer`, `"centre" | "five-crop"`, `table`).
    pub kind: String,
    pub required: bool,
    /// Its default, as TOML would write it, where the type has one.
    pub default: Option<String>,
    /// Its description (the field's doc comment, else its type's), first paragraph.
    pub doc: String,
    /// For keys of one variant of a tagged table: which (`kind = "squash"`).
    pub only: Option<String>,
}

/// Every key of a stage's config, nested tables flattened with dotted names.
pub fn keys(stage: &str) -> Option<Vec<Key>> {
    let root = schema(stage)?;
    let mut out = Vec::new();
    walk(&root, &root, "", None, &mut out);
    Some(out)
}

fn resolve<'a>(root: &'a Value, s: &'a Value) -> &'a Value {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap_or(r);
            root.pointer(&format!("/$defs/{name}")).unwrap_or(s)
        }
        None => s,
    }
}

fn doc_of(root: &Value, s: &Value) -> String {
    let d = s
        .get("description")
        .or_else(|| resolve(root, s).get("description"))
        .and_then(Value::as_str)
        .unwrap_or("");
    // The first paragraph, on one line.
    d.split("\n\n")
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The non-null branch of an `Option<T>`'s schema, or the schema itself.
fn unwrap_option<'a>(root: &'a Value, s: &'a Value) -> (&'a Value, bool) {
    if let Some(any) = s.get("anyOf").and_then(Value::as_array) {
        let non_null: Vec<&Value> = any
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) != Some("null"))
            .collect();
        if non_null.len() == 1 && any.len() == 2 {
            return (resolve(root, non_null[0]), true);
        }
    }
    if let Some(t) = s.get("type").and_then(Value::as_array) {
        if t.iter().any(|x| x == "null") {
            return (s, true);
        }
    }
    (resolve(root, s), false)
}

fn toml_value(v: &Value) -> String {
    match v {
        Value::Null => "none".into(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(toml_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(m) => format!(
            "{{ {} }}",
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{k} = {}", toml_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        v => v.to_string(),
    }
}

/// The constant values of an enum schema (`enum`, or `oneOf` of `const`s).
fn constants(s: &Value) -> Option<Vec<String>> {
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        return Some(e.iter().map(toml_value).collect());
    }
    let one = s.get("oneOf").and_then(Value::as_array)?;
    one.iter()
        .map(|b| {
            b.get("const").map(toml_value).or_else(|| {
                b.get("enum")?
                    .as_array()
                    .map(|e| e.iter().map(toml_value).collect::<Vec<_>>().join(" | "))
            })
        })
        .collect()
}

/// The tag property and its values, when `s` is an internally tagged enum of tables.
fn tagged(root: &Value, s: &Value) -> Option<(String, Vec<(String, Value)>)> {
    let one = s.get("oneOf").and_then(Value::as_array)?;
    let mut tag: Option<String> = None;
    let mut variants = Vec::new();
    for b in one {
        let b = resolve(root, b);
        let props = b.get("properties")?.as_object()?;
        let (k, v) = props.iter().find(|(_, v)| v.get("const").is_some())?;
        if tag.get_or_insert_with(|| k.clone()) != k {
            return None;
        }
        variants.push((toml_value(&v["const"]), b.clone()));
    }
    Some((tag?, variants))
}

fn kind_of(root: &Value, s: &Value) -> String {
    if let Some(c) = constants(s) {
        return c.join(" | ");
    }
    if let Some((tag, vs)) = tagged(root, s) {
        return format!(
            "table: {tag} = {}",
            vs.iter()
                .map(|v| v.0.as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    // `Option<T>` of a plain type: `["array", "null"]` reads as `array`.
    let ty: Option<String> = match s.get("type") {
        Some(Value::String(t)) => Some(t.clone()),
        Some(Value::Array(ts)) => {
            let t: Vec<&str> = ts
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect();
            Some(t.join(" | "))
        }
        _ => None,
    };
    match ty.as_deref() {
        Some("object") => "table".into(),
        Some("array") => {
            let item = s.get("items").map(|i| kind_of(root, resolve(root, i)));
            match item.as_deref() {
                Some("table") => "list of tables".into(),
                Some(i) => format!("list of {i}"),
                None => "list".into(),
            }
        }
        Some(t) => t.into(),
        None => "value".into(),
    }
}

fn walk(root: &Value, table: &Value, prefix: &str, only: Option<&str>, out: &mut Vec<Key>) {
    let Some(props) = table.get("properties").and_then(Value::as_object) else {
        return;
    };
    let required: Vec<&str> = table
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, field) in props {
        let full = format!("{prefix}{name}");
        let (s, optional) = unwrap_option(root, field);
        let default = field
            .get("default")
            .filter(|d| !d.is_null())
            .map(toml_value);
        out.push(Key {
            name: full.clone(),
            kind: if field.get("const").is_some() {
                toml_value(&field["const"])
            } else {
                kind_of(root, s)
            },
            required: required.contains(&name.as_str()) && !optional,
            default,
            doc: doc_of(root, field),
            only: only.map(str::to_owned),
        });
        if let Some((tag, variants)) = tagged(root, s) {
            for (value, v) in variants {
                let cond = format!("{full}.{tag} = {value}");
                let mut sub = Vec::new();
                walk(root, &v, &format!("{full}."), Some(&cond), &mut sub);
                out.extend(
                    sub.into_iter()
                        .filter(|k| k.name != format!("{full}.{tag}")),
                );
            }
        } else if s.get("properties").is_some() {
            walk(root, s, &format!("{full}."), only, out);
        } else if let Some(items) = s.get("items") {
            let items = resolve(root, items);
            if items.get("properties").is_some() {
                walk(root, items, &format!("{full}[]."), only, out);
            }
        }
    }
}

/// The keys of a stage as help text: one line per key (name, what it takes, default or
/// "required"), its description beneath.
pub fn text(stage: &str) -> String {
    let Some(keys) = keys(stage) else {
        return String::new();
    };
    let mut out = format!(
        "Config keys (the `config` table of a {stage} instance, [stages.NAME.config] in a \
         pipeline, or a file given with --config); `geoloc config {stage}` prints them:\n"
    );
    for k in &keys {
        let mut line = format!("  {} = {}", k.name, k.kind);
        if k.required {
            line.push_str("  (required)");
        } else if let Some(d) = &k.default {
            line.push_str(&format!("  (default {d})"));
        }
        if let Some(o) = &k.only {
            line.push_str(&format!("  [with {o}]"));
        }
        out.push_str(&line);
        out.push('\n');
        if !k.doc.is_empty() {
            for l in wrap(&k.doc, 88) {
                out.push_str("      ");
                out.push_str(&l);
                out.push('\n');
            }
        }
    }
    out
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for w in text.split_whitespace() {
        if !cur.is_empty() && cur.len() + 1 + w.len() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(w);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The top-level keys serde itself accepts, from the error it gives for an unknown one
    /// (`unknown field ..., expected one of `a`, `b``): a list independent of the schema.
    fn serde_keys<T: serde::de::DeserializeOwned>() -> Vec<String> {
        let e = toml::from_str::<T>("zz_not_a_key = 1")
            .err()
            .unwrap()
            .to_string();
        let list = e
            .split("expected one of")
            .nth(1)
            .unwrap_or_else(|| panic!("{e}"));
        list.split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, k)| k.to_owned())
            .collect()
    }

    #[test]
    fn every_key_serde_accepts_is_listed_with_its_doc() {
        let cases: [(&str, Vec<String>); 5] = [
            ("ingest", serde_keys::<geoloc_ingest::Config>()),
            ("preprocess", serde_keys::<geoloc_preprocess::Config>()),
            ("featurize", serde_keys::<geoloc_featurize::Config>()),
            ("train", serde_keys::<geoloc_train::Config>()),
            ("evaluate", serde_keys::<geoloc_evaluate::Config>()),
        ];
        for (stage, want) in cases {
            let keys = keys(stage).unwrap();
            let top: Vec<&str> = keys
                .iter()
                .map(|k| k.name.as_str())
                .filter(|n| !n.contains(['.', '[']))
                .collect();
            let mut want_sorted = want.clone();
            want_sorted.sort();
            let mut top_sorted: Vec<String> = top.iter().map(|s| s.to_string()).collect();
            top_sorted.sort();
            assert_eq!(
                top_sorted, want_sorted,
                "{stage}: listed keys vs the keys serde accepts"
            );
            let help = text(stage);
            for k in &want {
                assert!(
                    help.contains(&format!("\n  {k} = ")),
                    "{stage}: {k} missing from help"
                );
            }
            eprintln!("{stage}: {} keys ({} top-level)", keys.len(), want.len());
        }
    }

    #[test]
    fn nested_tables_defaults_and_variants_are_listed() {
        let k = keys("ingest").unwrap();
        let get = |n: &str| {
            k.iter()
                .find(|x| x.name == n)
                .unwrap_or_else(|| panic!("no {n}: {k:#?}"))
        };
        assert!(get("sources").required);
        assert!(get("sources[].format")
            .kind
            .contains("\"mediaeval-locale\""));
        assert!(get("sources[].path").required);
        assert_eq!(get("photos_only").default.as_deref(), Some("true"));
        assert!(!get("classes.top_k").doc.is_empty());
        let k = keys("preprocess").unwrap();
        let get = |n: &str| {
            k.iter()
                .find(|x| x.name == n)
                .unwrap_or_else(|| panic!("no {n}: {k:#?}"))
        };
        assert!(
            get("geometry").kind.contains("\"squash\""),
            "{:?}",
            get("geometry")
        );
        assert!(get("geometry.width")
            .only
            .as_deref()
            .unwrap()
            .contains("squash"));
        let k = keys("featurize").unwrap();
        let get = |n: &str| k.iter().find(|x| x.name == n).unwrap();
        assert_eq!(get("dtype").default.as_deref(), Some("\"f32\""));
        assert!(get("backbone").kind.contains("\"lite0\""));
        let k = keys("train").unwrap();
        assert!(k.iter().any(|x| x.name.starts_with("optimizer.")), "{k:#?}");
    }
}
