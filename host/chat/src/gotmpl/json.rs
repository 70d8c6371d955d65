//! Go's `encoding/json.Marshal` over template values: what Ollama's `json` function and its
//! types' `String()` methods print.
//!
//! Rules (Go 1.22+): map keys sorted; struct fields in order under their `json` tag, empty
//! ones dropped under `omitempty`; strings escaped with `\"`, `\\`, `\b \f \n \r \t`, other
//! control bytes as `\u00xx`, `< > &` as `\u003c \u003e \u0026` (HTML-safe), U+2028/U+2029
//! escaped; floats as ES6 numbers (`1e+21`, `1e-7`); `[]byte` as base64; a NaN or infinity is an
//! error (Ollama's `json` then prints an empty string); `api.PropertyType` marshals one type as
//! a string and several as an array; `api.ToolPropertiesMap` keeps insertion order.
//!
//! Modelled on Go's `encoding/json/encode.go`.

use super::fmt::format_float;
use super::value::{Kind, Methods, Value};

/// `json.Marshal(v)`.
pub fn marshal(v: &Value) -> Result<String, String> {
    let mut out = String::new();
    encode(&mut out, v)?;
    Ok(out)
}

fn encode_float(out: &mut String, f: f64) -> Result<(), String> {
    if f.is_nan() || f.is_infinite() {
        return Err(format!("json: unsupported value: {}", format_float(f, 'g', -1)));
    }
    let abs = f.abs();
    let e = abs != 0.0 && !(1e-6..1e21).contains(&abs);
    let mut s = format_float(f, if e { 'e' } else { 'f' }, -1);
    if e {
        // e-09 -> e-9
        let n = s.len();
        let b = s.as_bytes();
        if n >= 4 && b[n - 4] == b'e' && b[n - 3] == b'-' && b[n - 2] == b'0' {
            s.remove(n - 2);
        }
    }
    out.push_str(&s);
    Ok(())
}

/// A JSON string as Go writes it (HTML-safe).
pub fn encode_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.len();
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= n {
                s.push(T[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Whether `omitempty` drops the value.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Invalid | Value::Iface(None) | Value::Ptr(_, None) => true,
        Value::Bool(b) => !b,
        Value::Int(i) => *i == 0,
        Value::Float(f) => *f == 0.0,
        Value::Str(s) => s.is_empty(),
        Value::Slice(_, s) => s.as_ref().is_none_or(|s| s.is_empty()),
        Value::Map(_, m) => m.as_ref().is_none_or(|m| m.is_empty()),
        _ => false,
    }
}

fn encode(out: &mut String, v: &Value) -> Result<(), String> {
    match v {
        Value::Invalid | Value::Iface(None) | Value::Ptr(_, None) => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Float(f) => encode_float(out, *f)?,
        Value::Str(s) => encode_string(out, s),
        Value::Iface(Some(inner)) | Value::Ptr(_, Some(inner)) => encode(out, inner)?,
        Value::Slice(t, items) => {
            let Some(items) = items else {
                out.push_str("null");
                return Ok(());
            };
            if t.methods == Methods::PropertyType && items.len() == 1 {
                return encode(out, &items[0]);
            }
            if matches!(t.kind, Kind::Slice(e) if matches!(e.kind, Kind::Uint8)) {
                let bytes: Vec<u8> = items.iter().map(|b| if let Value::Int(x) = b { *x as u8 } else { 0 }).collect();
                encode_string(out, &base64(&bytes));
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                encode(out, item)?;
            }
            out.push(']');
        }
        Value::Map(_, m) => {
            let Some(m) = m else {
                out.push_str("null");
                return Ok(());
            };
            out.push('{');
            for (i, (k, val)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                encode_string(out, k);
                out.push(':');
                encode(out, val)?;
            }
            out.push('}');
        }
        Value::Props(entries) => {
            out.push('{');
            for (i, (k, val)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                encode_string(out, k);
                out.push(':');
                encode(out, val)?;
            }
            out.push('}');
        }
        Value::Struct(..) => {
            let Some((fields, vals)) = v.struct_fields() else { return Ok(()) };
            out.push('{');
            let mut first = true;
            for (f, val) in fields.iter().zip(vals) {
                if f.omitempty && is_empty(val) {
                    continue;
                }
                if !first {
                    out.push(',');
                }
                first = false;
                encode_string(out, f.json.unwrap_or(f.name));
                out.push(':');
                encode(out, val)?;
            }
            out.push('}');
        }
    }
    Ok(())
}
