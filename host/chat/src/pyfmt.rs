//! Python-compatible text for template values: `json.dumps` (HF's `tojson`) and `repr`.
//!
//! Hugging Face renders chat templates with Python jinja2, so two things leak Python into the
//! output and must be reproduced byte for byte:
//!
//! * the `tojson` filter is `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
//!   sort_keys=False)` (transformers' `chat_template_utils.py`): item separator `", "` and key
//!   separator `": "` without indent, `","` / `": "` with indent, no HTML escaping, floats in
//!   `repr` form (`1e-07`, `1e+16`, `NaN`, `Infinity`), non-string keys converted like Python;
//! * `{{ value }}` of a dict or list prints Python's `repr` (`{'a': 1, 'b': [True, None]}`).
//!
//! Invariants: key order is insertion order (minijinja's `preserve_order`); values Python cannot
//! serialise (undefined, iterators, namespaces, macros) fail like `TypeError: Object of type X is
//! not JSON serializable`; nesting is bounded by [`MAX_DEPTH`] and `indent` by [`MAX_INDENT`] so a
//! template cannot allocate without bound (modelled on mistral.rs' indent cap).

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, State, Value};
use std::fmt::Write;

/// Deepest container nesting `tojson`/`repr` will walk (Python's own limit is ~1000 frames).
const MAX_DEPTH: usize = 256;
/// Largest `indent` accepted by `tojson` (guards against `indent=10**9`).
const MAX_INDENT: usize = 256;

/// Layout options of `json.dumps` that templates pass to `tojson`.
struct JsonStyle {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

/// The `tojson` filter as transformers defines it (see the module header).
pub fn tojson(state: &State, value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;

    // json.dumps: an int indent is that many spaces, a string indent is used verbatim, None is
    // the single-line form; a non-None indent switches the default item separator to ",".
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => {
            if let Some(s) = v.as_str() {
                if s.len() > MAX_INDENT {
                    return Err(invalid("tojson: indent string too long"));
                }
                Some(s.to_string())
            } else if let Some(n) = v.as_i64() {
                let n = usize::try_from(n.max(0)).unwrap_or(0);
                if n > MAX_INDENT {
                    return Err(invalid("tojson: indent too large"));
                }
                Some(" ".repeat(n))
            } else {
                return Err(invalid("tojson: indent must be an integer or a string"));
            }
        }
    };
    let (item_sep, key_sep) = match separators {
        Some(seps) if !seps.is_none() => {
            let mut it = seps.try_iter()?;
            let item = it.next().and_then(|v| v.as_str().map(str::to_string));
            let key = it.next().and_then(|v| v.as_str().map(str::to_string));
            match (item, key, it.next()) {
                (Some(i), Some(k), None) => (i, k),
                _ => return Err(invalid("tojson: separators must be a pair of strings")),
            }
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let style = JsonStyle { indent, item_sep, key_sep, sort_keys: sort_keys.unwrap_or(false), ensure_ascii: ensure_ascii.unwrap_or(false) };
    let mut out = String::new();
    write_json(&mut out, value, &style, 0)?;
    // Large outputs are paid for like other created data so fuel bounds them too.
    state.consume_fuel((out.len() / 64) as u64)?;
    Ok(Value::from(out))
}

fn invalid(msg: &'static str) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg)
}

fn not_serializable(value: &Value) -> Error {
    let kind = match value.kind() {
        ValueKind::Undefined => "Undefined".to_string(),
        ValueKind::Iterable => "generator".to_string(),
        other => other.to_string(),
    };
    Error::new(ErrorKind::BadSerialization, format!("Object of type {kind} is not JSON serializable"))
}

fn newline_indent(out: &mut String, style: &JsonStyle, depth: usize) {
    if let Some(ind) = &style.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(ind);
        }
    }
}

fn write_json(out: &mut String, value: &Value, style: &JsonStyle, depth: usize) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(invalid("tojson: value nested too deeply"));
    }
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, value, true),
        ValueKind::String => write_json_str(out, value.as_str().unwrap_or(""), style.ensure_ascii),
        ValueKind::Seq => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline_indent(out, style, depth + 1);
                write_json(out, item, style, depth + 1)?;
            }
            newline_indent(out, style, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut pairs = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                pairs.push((json_key(&key)?, item));
            }
            if pairs.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if style.sort_keys {
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
            }
            out.push('{');
            for (i, (key, item)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline_indent(out, style, depth + 1);
                write_json_str(out, key, style.ensure_ascii);
                out.push_str(&style.key_sep);
                write_json(out, item, style, depth + 1)?;
            }
            newline_indent(out, style, depth);
            out.push('}');
        }
        _ => return Err(not_serializable(value)),
    }
    Ok(())
}

/// Python's json converts bool/None/number keys to strings; other key types are a TypeError.
fn json_key(key: &Value) -> Result<String, Error> {
    Ok(match key.kind() {
        ValueKind::String => key.as_str().unwrap_or("").to_string(),
        ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).to_string(),
        ValueKind::None => "null".to_string(),
        ValueKind::Number => {
            let mut s = String::new();
            write_number(&mut s, key, true);
            s
        }
        _ => {
            return Err(Error::new(ErrorKind::BadSerialization, format!("keys must be str, int, float, bool or None, not {}", key.kind())))
        }
    })
}

/// Writes an int as digits and a float like Python's `repr(float)` (`json` uses the same, but
/// spells non-finite values `NaN`/`Infinity` where `repr` says `nan`/`inf`).
fn write_number(out: &mut String, value: &Value, json: bool) {
    if value.is_integer() {
        let _ = write!(out, "{value}");
        return;
    }
    let f = f64::try_from(value.clone()).unwrap_or(f64::NAN);
    write_float(out, f, json);
}

fn write_float(out: &mut String, f: f64, json: bool) {
    if f.is_nan() {
        out.push_str(if json { "NaN" } else { "nan" });
        return;
    }
    if f.is_infinite() {
        let sign = if f < 0.0 { "-" } else { "" };
        let _ = write!(out, "{sign}{}", if json { "Infinity" } else { "inf" });
        return;
    }
    if f == 0.0 {
        out.push_str(if f.is_sign_negative() { "-0.0" } else { "0.0" });
        return;
    }
    // `{:e}` gives the shortest round-trip digits ("1.5e-7"); Python's repr picks fixed
    // notation when -4 <= exponent < 16 and scientific ("1.5e-07", "1e+16") otherwise.
    let sci = format!("{f:e}");
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (sci.as_str(), 0),
    };
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        out.push_str(&s);
        if !s.contains('.') {
            out.push_str(".0");
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        let _ = write!(out, "{mantissa}e{sign}{:02}", exp.abs());
    }
}

fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr` of a value, used when a template prints a dict or list with `{{ x }}`.
pub fn write_repr(out: &mut String, value: &Value, depth: usize) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(invalid("value nested too deeply to print"));
    }
    match value.kind() {
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => write_number(out, value, false),
        ValueKind::String => write_repr_str(out, value.as_str().unwrap_or("")),
        ValueKind::Seq => {
            out.push('[');
            for (i, item) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &item, depth + 1)?;
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let item = value.get_item(&key)?;
                write_repr(out, &key, depth + 1)?;
                out.push_str(": ");
                write_repr(out, &item, depth + 1)?;
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
    Ok(())
}

/// Python's `repr(str)`: single quotes unless the text has `'` and no `"`.
fn write_repr_str(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float(f: f64) -> String {
        let mut s = String::new();
        write_float(&mut s, f, true);
        s
    }

    // Expected strings are Python 3.11's `json.dumps(x)` for each float.
    #[test]
    fn floats_match_python_repr() {
        assert_eq!(float(15.0), "15.0");
        assert_eq!(float(0.1), "0.1");
        assert_eq!(float(1e-7), "1e-07");
        assert_eq!(float(1.5e-5), "1.5e-05");
        assert_eq!(float(0.0001), "0.0001");
        assert_eq!(float(1e16), "1e+16");
        assert_eq!(float(1234567890123456.0), "1234567890123456.0");
        assert_eq!(float(-2.5), "-2.5");
        assert_eq!(float(f64::INFINITY), "Infinity");
    }

    // Expected strings are Python 3.11's `repr(x)`.
    #[test]
    fn repr_matches_python() {
        let v = Value::from_serialize_json(r#"{"a": [true, null, 1.5, "it's"], "b": "x\ny"}"#);
        let mut s = String::new();
        write_repr(&mut s, &v, 0).expect("repr");
        assert_eq!(s, r#"{'a': [True, None, 1.5, "it's"], 'b': 'x\ny'}"#);
    }

    trait FromJson {
        fn from_serialize_json(s: &str) -> Value;
    }
    impl FromJson for Value {
        fn from_serialize_json(s: &str) -> Value {
            let v: serde_json::Value = serde_json::from_str(s).expect("json");
            Value::from(minijinja::value::Serde(v))
        }
    }
}
