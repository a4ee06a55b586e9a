//! Parse a JSON or YAML document into a [`serde_json::Value`].
//!
//! Owns the one place where configuration and trigger text becomes data, so
//! that every reader agrees on what a document means. YAML is read the way
//! the Python dsari's PyYAML `safe_load` reads it (YAML 1.1): merge keys
//! (`<<:`) are applied, `yes`/`no`/`on`/`off` are booleans, `0755` is octal
//! (493), a repeated key keeps its last value, an empty document is null and
//! an unknown tag (`!foo`) is an error.
//!
//! serde-saphyr does most of that, but it types more plain scalars than
//! PyYAML does: `y`, `n` and odd cases such as `yEs` become booleans, `08`,
//! `1e3` and `0o17` become numbers. PyYAML keeps those as text, and so does
//! this module: every plain scalar that serde-saphyr turned into a boolean or
//! a number is checked, through its source span, against PyYAML's YAML 1.1
//! resolver patterns. (The one PyYAML typing not reproduced is base-60:
//! PyYAML reads `12:30` as the integer 45030; here it stays the text
//! `"12:30"`, which is what anyone writing it means.)
//!
//! This module never touches the file system; callers read the text.

use std::fmt;
use std::path::Path;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use serde_saphyr::{DuplicateKeyPolicy, MergeKeyPolicy, Spanned};

/// The syntax of a document, chosen by the file name's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.json`
    Json,
    /// `.yaml` or `.yml`
    Yaml,
}

impl Format {
    /// The format for a file name: `.json` is JSON, `.yaml` and `.yml` are
    /// YAML, anything else (including upper case) is `None`.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "json" => Some(Format::Json),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

/// Parse `text` as a document of `format`.
///
/// The error is the parser's message on one line, with the line and column
/// where the parser gave up and no snippet of the text; callers add the file
/// name. An empty or whitespace-only YAML text is `Value::Null`; the same in
/// JSON is an error (serde_json's), which callers may treat as they see fit.
pub fn parse(text: &str, format: Format) -> Result<Value, String> {
    match format {
        Format::Json => serde_json::from_str(text).map_err(|e| e.to_string()),
        Format::Yaml => parse_yaml(text),
    }
}

/// YAML 1.1 as PyYAML's `safe_load` reads it.
fn parse_yaml(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    let options = serde_saphyr::options! {
        with_snippet: false,
        duplicate_keys: DuplicateKeyPolicy::LastWins,
        merge_keys: MergeKeyPolicy::Merge,
        legacy_octal_numbers: true,
        reject_unsupported_tags: true,
    };
    let root: Spanned<Node> =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| one_line(&e.to_string()))?;
    Ok(to_value(root, text))
}

/// Fold a possibly multi-line message onto one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A YAML node as serde-saphyr types it, each child with its source span.
enum Node {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Seq(Vec<Spanned<Node>>),
    /// In document order; a repeated key appears more than once.
    Map(Vec<(String, Spanned<Node>)>),
}

/// Turn a node into a value, giving plain scalars PyYAML's types.
fn to_value(node: Spanned<Node>, text: &str) -> Value {
    let source = source_text(&node, text);
    match node.value {
        Node::Null => Value::Null,
        Node::Bool(b) => pyyaml_scalar(Value::Bool(b), source),
        Node::Number(n) => pyyaml_scalar(Value::Number(n), source),
        Node::String(s) => Value::String(s),
        Node::Seq(items) => Value::Array(items.into_iter().map(|i| to_value(i, text)).collect()),
        Node::Map(entries) => {
            // Insert keeps a repeated key at its first place with its last
            // value, like a Python dict.
            let mut map = Map::new();
            for (key, value) in entries {
                map.insert(key, to_value(value, text));
            }
            Value::Object(map)
        }
    }
}

/// The text a node was written as (for an alias or a merged value: where it
/// was defined), if serde-saphyr knows it.
fn source_text<'t>(node: &Spanned<Node>, text: &'t str) -> Option<&'t str> {
    let span = node.defined.span();
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let len = usize::try_from(span.byte_len()?).ok()?;
    text.get(start..start.checked_add(len)?)
}

/// `value` (a boolean or a number) as PyYAML would type its `source`: the
/// source text itself when PyYAML would not read it as that type.
fn pyyaml_scalar(value: Value, source: Option<&str>) -> Value {
    let Some(source) = source else {
        return value;
    };
    let (pyyaml_agrees, span_is_this_scalar) = match &value {
        Value::Bool(b) => (
            yaml11::is_bool(source),
            yaml11::saphyr_bool(source) == Some(*b),
        ),
        _ => (
            yaml11::is_int(source) || yaml11::is_float(source),
            yaml11::looks_numeric(source),
        ),
    };
    // The second test guards against a span that does not cover the plain
    // scalar itself (say, an explicit tag): then serde-saphyr's type stands.
    if pyyaml_agrees || !span_is_this_scalar {
        value
    } else {
        Value::String(source.to_string())
    }
}

/// PyYAML's YAML 1.1 implicit resolver patterns (`yaml/resolver.py`),
/// written out by hand.
mod yaml11 {
    /// `^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$`
    pub fn is_bool(s: &str) -> bool {
        let words = ["yes", "no", "true", "false", "on", "off"];
        words
            .iter()
            .any(|w| s == *w || s == w.to_uppercase() || s == capitalised(w))
    }

    /// What serde-saphyr reads as a boolean: these words in any case.
    pub fn saphyr_bool(s: &str) -> Option<bool> {
        match s.to_ascii_lowercase().as_str() {
            "y" | "yes" | "true" | "on" => Some(true),
            "n" | "no" | "false" | "off" => Some(false),
            _ => None,
        }
    }

    /// Could be a plain numeric scalar at all (not a tag or a quoted text).
    pub fn looks_numeric(s: &str) -> bool {
        s.starts_with(|c: char| c.is_ascii_digit() || "+-.".contains(c))
            && !s.contains(char::is_whitespace)
    }

    /// `[-+]?0b[0-1_]+ | [-+]?0[0-7_]+ | [-+]?(?:0|[1-9][0-9_]*) |
    /// [-+]?0x[0-9a-fA-F_]+ | [-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+`
    pub fn is_int(s: &str) -> bool {
        let t = s.strip_prefix(['-', '+']).unwrap_or(s);
        if let Some(digits) = t.strip_prefix("0b") {
            return !digits.is_empty() && digits.chars().all(|c| matches!(c, '0' | '1' | '_'));
        }
        if let Some(digits) = t.strip_prefix("0x") {
            return !digits.is_empty() && digits.chars().all(|c| c.is_ascii_hexdigit() || c == '_');
        }
        if let Some(digits) = t.strip_prefix('0') {
            return digits.chars().all(|c| matches!(c, '0'..='7' | '_'));
        }
        let mut parts = t.split(':');
        parts.next().is_some_and(is_decimal_head) && parts.all(is_base60_digit)
    }

    /// `[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)? |
    /// \.[0-9][0-9_]*(?:[eE][-+][0-9]+)? |
    /// [-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]* |
    /// [-+]?\.(?:inf|Inf|INF) | \.(?:nan|NaN|NAN)`
    pub fn is_float(s: &str) -> bool {
        let unsigned = s.strip_prefix(['-', '+']).unwrap_or(s);
        if matches!(unsigned, ".inf" | ".Inf" | ".INF") || matches!(s, ".nan" | ".NaN" | ".NAN") {
            return true;
        }
        let Some((whole, rest)) = unsigned.split_once('.') else {
            return false;
        };
        if whole.is_empty() {
            // `.5`: no sign allowed, a digit first.
            return s == unsigned
                && rest.starts_with(|c: char| c.is_ascii_digit())
                && is_fraction(rest);
        }
        let mut parts = whole.split(':');
        let head_ok = parts.next().is_some_and(|h| {
            h.starts_with(|c: char| c.is_ascii_digit()) && h.chars().all(is_digit_or_underscore)
        });
        let base60: Vec<&str> = parts.collect();
        match base60.is_empty() {
            true => head_ok && is_fraction(rest),
            false => {
                head_ok
                    && base60.into_iter().all(is_base60_digit)
                    && rest.chars().all(is_digit_or_underscore)
            }
        }
    }

    /// `[0-9_]*(?:[eE][-+][0-9]+)?`
    fn is_fraction(s: &str) -> bool {
        let (digits, exponent) = match s.find(['e', 'E']) {
            Some(at) => (&s[..at], Some(&s[at + 1..])),
            None => (s, None),
        };
        let exponent_ok = exponent.is_none_or(|e| {
            e.strip_prefix(['-', '+'])
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        });
        digits.chars().all(is_digit_or_underscore) && exponent_ok
    }

    /// `[1-9][0-9_]*`
    fn is_decimal_head(s: &str) -> bool {
        s.starts_with(|c: char| matches!(c, '1'..='9')) && s.chars().all(is_digit_or_underscore)
    }

    /// `[0-5]?[0-9]`
    fn is_base60_digit(s: &str) -> bool {
        match s.as_bytes() {
            [d] => d.is_ascii_digit(),
            [t, d] => (b'0'..=b'5').contains(t) && d.is_ascii_digit(),
            _ => false,
        }
    }

    fn is_digit_or_underscore(c: char) -> bool {
        c.is_ascii_digit() || c == '_'
    }

    fn capitalised(word: &str) -> String {
        let mut chars = word.chars();
        chars
            .next()
            .map(|first| first.to_uppercase().chain(chars).collect())
            .unwrap_or_default()
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

/// Builds a [`Node`] from whatever serde-saphyr reports.
struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        Node::deserialize(deserializer)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        serde_json::Number::from_f64(v)
            .map(Node::Number)
            .ok_or_else(|| E::custom(format!("{v} is not a finite number")))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        // A string key keeps its text: `yes:` and `0755:` stay "yes", "0755".
        while let Some(key) = map.next_key::<String>()? {
            entries.push((key, map.next_value()?));
        }
        Ok(Node::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn yaml(text: &str) -> Value {
        match parse(text, Format::Yaml) {
            Ok(value) => value,
            Err(e) => panic!("YAML {text:?} failed: {e}"),
        }
    }

    fn yaml_err(text: &str) -> String {
        match parse(text, Format::Yaml) {
            Ok(value) => panic!("YAML {text:?} parsed: {value}"),
            Err(e) => e,
        }
    }

    #[test]
    fn format_from_path() {
        assert_eq!(Format::from_path(Path::new("a/t.json")), Some(Format::Json));
        assert_eq!(Format::from_path(Path::new("t.yaml")), Some(Format::Yaml));
        assert_eq!(Format::from_path(Path::new("t.yml")), Some(Format::Yaml));
        assert_eq!(Format::from_path(Path::new("t.txt")), None);
        assert_eq!(Format::from_path(Path::new("json")), None);
        assert_eq!(Format::from_path(Path::new("t.JSON")), None);
    }

    #[test]
    fn merge_keys_are_applied() {
        let text = "base: &b\n  x: 1\n  y: 2\njob:\n  <<: *b\n  y: 3\n";
        assert_eq!(yaml(text)["job"], json!({"x": 1, "y": 3}));
        // Explicit keys win over merged ones wherever the merge is written.
        let text = "base: &b {x: 1, y: 2}\njob: {y: 3, <<: *b}\n";
        assert_eq!(yaml(text)["job"], json!({"y": 3, "x": 1}));
        // A list of merges: the first mapping wins.
        let text = "a: &a {x: 1}\nb: &b {x: 2, z: 2}\njob:\n  <<: [*a, *b]\n";
        assert_eq!(yaml(text)["job"], json!({"x": 1, "z": 2}));
    }

    #[test]
    fn yaml_1_1_booleans() {
        let text = "a: yes\nb: no\nc: on\nd: off\ne: true\nf: False\ng: YES\nh: Off\n";
        assert_eq!(
            yaml(text),
            json!({"a": true, "b": false, "c": true, "d": false, "e": true, "f": false,
                   "g": true, "h": false})
        );
    }

    #[test]
    fn words_pyyaml_keeps_as_text() {
        let text =
            "a: y\nb: n\nc: Y\nd: N\ne: yEs\nf: tRUE\ng: [y, {h: n}]\nanchor: &x y\nalias: *x\n";
        assert_eq!(
            yaml(text),
            json!({"a": "y", "b": "n", "c": "Y", "d": "N", "e": "yEs", "f": "tRUE",
                   "g": ["y", {"h": "n"}], "anchor": "y", "alias": "y"})
        );
        assert_eq!(yaml("y\n"), json!("y"));
    }

    #[test]
    fn numbers_like_pyyaml() {
        let text = "a: 1_000\nb: +5\nc: 0x1F\nd: 0b101\ne: 1.\nf: .5\ng: 1.0e+3\nh: -0755\n";
        assert_eq!(
            yaml(text),
            json!({"a": 1000, "b": 5, "c": 31, "d": 5, "e": 1.0, "f": 0.5, "g": 1000.0, "h": -493})
        );
        // PyYAML reads these as text.
        let text = "a: 08\nb: 1e3\nc: 0o17\nd: 12:30\ne: 2024-01-01\n";
        assert_eq!(
            yaml(text),
            json!({"a": "08", "b": "1e3", "c": "0o17", "d": "12:30", "e": "2024-01-01"})
        );
    }

    #[test]
    fn legacy_octal() {
        assert_eq!(yaml("perm: 0755\n")["perm"], json!(493));
        assert_eq!(yaml("perm: '0755'\n")["perm"], json!("0755"));
    }

    #[test]
    fn keys_keep_their_text() {
        assert_eq!(
            yaml("yes: 1\n0755: 2\n1.5: 3\n"),
            json!({"yes": 1, "0755": 2, "1.5": 3})
        );
    }

    #[test]
    fn duplicate_keys_last_wins() {
        assert_eq!(yaml("a: 1\nb: 2\na: 3\n"), json!({"a": 3, "b": 2}));
        let keys: Vec<String> = match yaml("a: 1\nb: 2\na: 3\n") {
            Value::Object(map) => map.keys().cloned().collect(),
            other => panic!("{other}"),
        };
        assert_eq!(keys, ["a", "b"]);
    }

    #[test]
    fn empty_document_is_null() {
        assert_eq!(yaml(""), Value::Null);
        assert_eq!(yaml("  \n\n"), Value::Null);
        assert_eq!(yaml("# only a comment\n"), Value::Null);
        assert_eq!(yaml("---\n"), Value::Null);
        assert_eq!(yaml("~\n"), Value::Null);
    }

    #[test]
    fn unknown_tags_are_errors() {
        assert!(yaml_err("a: !custom x\n").contains("!custom"));
        assert_eq!(yaml("a: !!str 5\n"), json!({"a": "5"}));
    }

    #[test]
    fn yaml_errors_are_one_line_with_position() {
        let err = yaml_err("a: b\nschedule: */5 * * * *\n");
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(yaml_err("a: 1\n---\nb: 2\n").contains("line 3"));
    }

    #[test]
    fn json_documents() {
        assert_eq!(
            parse("{\"a\": [1, 2.5, true]}", Format::Json),
            Ok(json!({"a": [1, 2.5, true]}))
        );
        assert!(parse("", Format::Json).is_err());
        assert!(parse("{", Format::Json).is_err());
    }

    #[test]
    fn pyyaml_patterns() {
        for s in [
            "0",
            "-0",
            "+12",
            "1_000",
            "0755",
            "0_",
            "0b1_0",
            "0x_fF",
            "1:30",
            "190:20:30",
        ] {
            assert!(yaml11::is_int(s), "{s}");
        }
        for s in [
            "", "08", "1e3", "0o17", "0b", "0x", "1:60", "1:", "_1", "1a",
        ] {
            assert!(!yaml11::is_int(s), "{s}");
        }
        for s in [
            "1.", "-1.5", "1.0e+3", "1_0.0_1", ".5", ".5e-3", "1:30.5", ".inf", "-.INF", ".NaN",
        ] {
            assert!(yaml11::is_float(s), "{s}");
        }
        for s in [
            "1", "1e3", "1.0e3", "-.5", "._5", ".", "1.5.5", "-.nan", "1:30",
        ] {
            assert!(!yaml11::is_float(s), "{s}");
        }
        for s in ["yes", "Yes", "YES", "off", "Off", "OFF", "true", "False"] {
            assert!(yaml11::is_bool(s), "{s}");
        }
        for s in ["y", "n", "yEs", "oN", "tRUE", ""] {
            assert!(!yaml11::is_bool(s), "{s}");
        }
    }
}
