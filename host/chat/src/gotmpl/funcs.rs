//! The functions a template can call: Go's builtins (`and or not eq ne lt le gt ge len index
//! slice print printf println html js urlquery call`), Ollama's (`json currentDate
//! yesterdayDate toTypeScriptType`), and the methods of Ollama's types (`String`,
//! `ToTypeScriptType`, `Len`).
//!
//! Invariants: each function sees its arguments after Go's conversion to its parameter types
//! (interfaces unwrapped where Go unwraps them), and fails with Go's message, which the
//! executor wraps as `error calling NAME: MESSAGE`.
//!
//! Modelled on Go's `text/template/funcs.go` and Ollama's `template/template.go` `funcs`.

use std::rc::Rc;

use chrono::NaiveDate;

use super::fmt::{sprint, sprintf, sprintln, stringer};
use super::json;
use super::value::{elem_type, zero, Methods, Value};

/// A parameter type of a function, as `evalArg` converts to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// `reflect.Value`: the argument as is.
    Value,
    /// `interface {}`.
    Any,
    /// `string`.
    Str,
}

impl Param {
    pub fn type_name(self) -> &'static str {
        match self {
            Param::Value => "reflect.Value",
            Param::Any => "interface {}",
            Param::Str => "string",
        }
    }
}

/// A function's signature: fixed parameters, then an optional variadic one.
#[derive(Clone, Copy, Debug)]
pub struct Sig {
    pub fixed: &'static [Param],
    pub variadic: Option<Param>,
}

const V: Param = Param::Value;

/// The signature of a builtin (`None`: no such function). Ollama's functions are looked up
/// only when `ollama` is set (Ollama's legacy-template final render runs without them).
pub fn builtin_sig(name: &str, ollama: bool) -> Option<Sig> {
    let s = |fixed, variadic| Some(Sig { fixed, variadic });
    match name {
        "and" | "or" | "call" | "index" | "slice" | "eq" => s(&[V], Some(V)),
        "html" | "js" | "urlquery" | "print" | "println" => s(&[], Some(Param::Any)),
        "printf" => s(&[Param::Str], Some(Param::Any)),
        "len" | "not" => s(&[V], None),
        "ne" | "lt" | "le" | "gt" | "ge" => s(&[V, V], None),
        "json" | "toTypeScriptType" if ollama => s(&[Param::Any], None),
        "currentDate" | "yesterdayDate" if ollama => s(&[], Some(Param::Str)),
        _ => None,
    }
}

/// A method of one of Ollama's types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    String,
    ToTypeScriptType,
    Len,
}

/// The method `name` of `recv` (already indirected), if its type has one.
pub fn find_method(recv: &Value, name: &str) -> Option<Method> {
    let methods = match recv {
        Value::Ptr(t, None) => elem_type(t).map_or(Methods::None, |e| e.methods),
        other => other.methods(),
    };
    match (methods, name) {
        (Methods::StringJson | Methods::StringJsonNilEmpty | Methods::PropertyType, "String") => Some(Method::String),
        (Methods::ToolProperty, "ToTypeScriptType") => Some(Method::ToTypeScriptType),
        (Methods::OrderedProps, "Len") => Some(Method::Len),
        _ => None,
    }
}

pub fn call_method(m: Method, recv: &Value) -> Result<Value, String> {
    Ok(match m {
        Method::String => Value::str(stringer(recv).unwrap_or_default()),
        Method::ToTypeScriptType => Value::str(ts_type(recv)),
        Method::Len => Value::Int(match recv {
            Value::Props(e) => e.len() as i64,
            _ => 0,
        }),
    })
}

/// `api.ToolProperty.ToTypeScriptType()`.
fn ts_type(prop: &Value) -> String {
    let Some((_, vals)) = prop.struct_fields() else { return "any".into() };
    let strings = |v: &Value| -> Vec<String> {
        match v {
            Value::Slice(_, Some(items)) => {
                items.iter().filter_map(|i| if let Value::Str(s) = i { Some(s.to_string()) } else { None }).collect()
            }
            _ => Vec::new(),
        }
    };
    // Field order of api.ToolProperty: AnyOf, Type, ...
    if let Value::Slice(_, Some(any_of)) = &vals[0] {
        if !any_of.is_empty() {
            return any_of.iter().map(ts_type).collect::<Vec<_>>().join(" | ");
        }
    }
    let types = strings(&vals[1]);
    if types.is_empty() {
        return "any".into();
    }
    types
        .iter()
        .map(|t| match t.as_str() {
            "string" => "string",
            "number" | "integer" => "number",
            "boolean" => "boolean",
            "array" => "any[]",
            "object" => "Record<string, any>",
            "null" => "null",
            _ => "any",
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// What the date functions read.
pub struct FuncCtx {
    pub today: NaiveDate,
}

/// Comparison classes of Go's `basicKind`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum BasicKind {
    Invalid,
    Bool,
    Int,
    Float,
    String,
}

fn basic_kind(v: &Value) -> BasicKind {
    match v {
        Value::Bool(_) => BasicKind::Bool,
        Value::Int(_) => BasicKind::Int,
        Value::Float(_) => BasicKind::Float,
        Value::Str(_) => BasicKind::String,
        _ => BasicKind::Invalid,
    }
}

const BAD_COMPARISON_TYPE: &str = "invalid type for comparison";

fn is_nil(v: &Value) -> bool {
    matches!(v, Value::Invalid | Value::Iface(None) | Value::Ptr(_, None) | Value::Slice(_, None) | Value::Map(_, None))
}

/// reflect kinds, for `canCompare`.
fn reflect_kind(v: &Value) -> u8 {
    match v {
        Value::Invalid => 0,
        Value::Bool(_) => 1,
        Value::Int(_) => 2,
        Value::Float(_) => 3,
        Value::Str(_) => 4,
        Value::Iface(_) => 5,
        Value::Slice(..) => 6,
        Value::Map(..) => 7,
        Value::Struct(..) | Value::Props(_) => 8,
        Value::Ptr(..) => 9,
    }
}

fn eq(args: &[Value]) -> Result<Value, String> {
    let a1 = args[0].indirect_interface();
    if args.len() < 2 {
        return Err("missing argument for comparison".into());
    }
    let k1 = basic_kind(&a1);
    for arg in &args[1..] {
        let a = arg.indirect_interface();
        let k2 = basic_kind(&a);
        let truth = if k1 != k2 {
            if !matches!(a1, Value::Invalid) && !matches!(a, Value::Invalid) {
                return Err(format!("incompatible types for comparison: {} and {}", a1.type_name(), a.type_name()));
            }
            false
        } else {
            match (&a1, &a) {
                (Value::Bool(x), Value::Bool(y)) => x == y,
                (Value::Int(x), Value::Int(y)) => x == y,
                (Value::Float(x), Value::Float(y)) => x == y,
                (Value::Str(x), Value::Str(y)) => x == y,
                _ => {
                    let (r1, r2) = (reflect_kind(&a1), reflect_kind(&a));
                    if r1 != r2 && r1 != 0 && r2 != 0 {
                        return Err(format!(
                            "non-comparable types {}: {}, {}: {}",
                            sprintf("%s", std::slice::from_ref(&a1)),
                            a1.type_name(),
                            a.type_name(),
                            sprintf("%v", std::slice::from_ref(&a))
                        ));
                    }
                    if is_nil(&a1) || is_nil(&a) {
                        is_nil(&a) == is_nil(&a1)
                    } else {
                        match (&a1, &a) {
                            (Value::Ptr(_, Some(x)), Value::Ptr(_, Some(y))) => Rc::ptr_eq(x, y),
                            _ => return Err(format!("non-comparable type {}: {}", sprintf("%s", std::slice::from_ref(&a)), a.type_name())),
                        }
                    }
                }
            }
        };
        if truth {
            return Ok(Value::Bool(true));
        }
    }
    Ok(Value::Bool(false))
}

fn lt(a: &Value, b: &Value) -> Result<bool, String> {
    let a1 = a.indirect_interface();
    let k1 = basic_kind(&a1);
    if k1 == BasicKind::Invalid {
        return Err(BAD_COMPARISON_TYPE.into());
    }
    let a2 = b.indirect_interface();
    let k2 = basic_kind(&a2);
    if k2 == BasicKind::Invalid {
        return Err(BAD_COMPARISON_TYPE.into());
    }
    if k1 != k2 {
        return Err(format!("incompatible types for comparison: {} and {}", a1.type_name(), a2.type_name()));
    }
    Ok(match (&a1, &a2) {
        (Value::Int(x), Value::Int(y)) => x < y,
        (Value::Float(x), Value::Float(y)) => x < y,
        (Value::Str(x), Value::Str(y)) => x.as_bytes() < y.as_bytes(),
        _ => return Err(BAD_COMPARISON_TYPE.into()),
    })
}

fn le(a: &Value, b: &Value) -> Result<bool, String> {
    if lt(a, b)? {
        return Ok(true);
    }
    Ok(eq(&[a.clone(), b.clone()])?.truth())
}

/// Go's `indexArg`.
fn index_arg(index: &Value, cap: usize) -> Result<usize, String> {
    let x = match index {
        Value::Int(i) => *i,
        Value::Invalid => return Err("cannot index slice/array with nil".into()),
        other => return Err(format!("cannot index slice/array with type {}", other.type_name())),
    };
    if x < 0 || x as u64 > cap as u64 {
        return Err(format!("index out of range: {x}"));
    }
    Ok(x as usize)
}

fn index(args: &[Value]) -> Result<Value, String> {
    let mut item = args[0].indirect_interface();
    if matches!(item, Value::Invalid) {
        return Err("index of untyped nil".into());
    }
    for idx in &args[1..] {
        let idx = idx.indirect_interface();
        let (it, nil) = item.indirect();
        if nil {
            return Err("index of nil pointer".into());
        }
        item = match &it {
            Value::Slice(_, items) => {
                let items = items.as_ref().map_or(&[][..], |v| v.as_slice());
                let x = index_arg(&idx, items.len())?;
                items.get(x).cloned().ok_or("reflect: slice index out of range")?
            }
            Value::Str(s) => {
                let x = index_arg(&idx, s.len())?;
                Value::Int(*s.as_bytes().get(x).ok_or("reflect: string index out of range")? as i64)
            }
            Value::Map(t, m) => {
                let key = match &idx {
                    Value::Str(k) => k.clone(),
                    Value::Invalid => return Err("value is nil; should be of type string".into()),
                    other => return Err(format!("value has type {}; should be string", other.type_name())),
                };
                match m.as_ref().and_then(|m| m.get(&*key)) {
                    Some(v) => v.clone(),
                    None => elem_type(t).map_or(Value::Invalid, zero),
                }
            }
            other => return Err(format!("can't index item of type {}", other.type_name())),
        };
    }
    Ok(item)
}

fn slice(args: &[Value]) -> Result<Value, String> {
    let item = args[0].indirect_interface();
    if matches!(item, Value::Invalid) {
        return Err("slice of untyped nil".into());
    }
    let (item, nil) = item.indirect();
    if nil {
        return Err("slice of nil pointer".into());
    }
    let indexes = &args[1..];
    if indexes.len() > 3 {
        return Err(format!("too many slice indexes: {}", indexes.len()));
    }
    let len = match &item {
        Value::Str(s) => {
            if indexes.len() == 3 {
                return Err("cannot 3-index slice a string".into());
            }
            s.len()
        }
        Value::Slice(_, items) => items.as_ref().map_or(0, |v| v.len()),
        other => return Err(format!("can't slice item of type {}", other.type_name())),
    };
    let mut idx = [0, len, len];
    for (i, index) in indexes.iter().enumerate() {
        idx[i] = index_arg(&index.indirect_interface(), len)?;
    }
    if idx[0] > idx[1] {
        return Err(format!("invalid slice index: {} > {}", idx[0], idx[1]));
    }
    if indexes.len() == 3 && idx[1] > idx[2] {
        return Err(format!("invalid slice index: {} > {}", idx[1], idx[2]));
    }
    Ok(match item {
        Value::Str(s) => Value::str(String::from_utf8_lossy(&s.as_bytes()[idx[0]..idx[1]]).as_ref()),
        Value::Slice(t, None) => Value::Slice(t, None),
        Value::Slice(t, Some(items)) => Value::Slice(t, Some(Rc::new(items[idx[0]..idx[1]].to_vec()))),
        _ => Value::Invalid,
    })
}

fn length(v: &Value) -> Result<Value, String> {
    let (item, nil) = v.indirect();
    if nil {
        return Err("len of nil pointer".into());
    }
    match &item {
        Value::Invalid => Err("reflect: call of reflect.Value.Type on zero Value".into()),
        other => other.len().map(|n| Value::Int(n as i64)).ok_or_else(|| format!("len of type {}", other.type_name())),
    }
}

/// Go's `evalArgs` for `html`, `js`, `urlquery`.
fn eval_args(args: &[Value]) -> String {
    if let [Value::Str(s)] = args {
        return s.to_string();
    }
    let printable: Vec<Value> = args
        .iter()
        .map(|a| match a.indirect_interface() {
            // An `any` holding nil: reflect.ValueOf gives the invalid value.
            Value::Invalid => Value::str("<no value>"),
            p @ Value::Ptr(..) => p.indirect().0,
            v => v,
        })
        .collect();
    sprint(&printable)
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\0' => out.push('\u{FFFD}'),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

fn js_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '<' => out.push_str("\\u003C"),
            '>' => out.push_str("\\u003E"),
            '&' => out.push_str("\\u0026"),
            '=' => out.push_str("\\u003D"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u00{:02X}", c as u32)),
            c if c.is_ascii() || super::fmt::is_print(c) => out.push(c),
            c => out.push_str(&format!("\\u{:04X}", c as u32)),
        }
    }
    out
}

fn url_query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Calls the builtin `name` (not `and`/`or`/`call`, which the executor evaluates itself) with
/// converted arguments.
pub fn call_builtin(name: &str, args: &[Value], ctx: &FuncCtx) -> Result<Value, String> {
    let s = |x: String| Ok(Value::str(x));
    match name {
        "not" => Ok(Value::Bool(!args[0].indirect_interface().truth())),
        "eq" => eq(args),
        "ne" => Ok(Value::Bool(!eq(args)?.truth())),
        "lt" => Ok(Value::Bool(lt(&args[0], &args[1])?)),
        "le" => Ok(Value::Bool(le(&args[0], &args[1])?)),
        "gt" => Ok(Value::Bool(!le(&args[0], &args[1])?)),
        "ge" => Ok(Value::Bool(!lt(&args[0], &args[1])?)),
        "len" => length(&args[0]),
        "index" => index(args),
        "slice" => slice(args),
        "print" => s(sprint(args)),
        "println" => s(sprintln(args)),
        "printf" => {
            let format = match &args[0] {
                Value::Str(f) => f.to_string(),
                _ => String::new(),
            };
            s(sprintf(&format, &args[1..]))
        }
        "html" => s(html_escape(&eval_args(args))),
        "js" => s(js_escape(&eval_args(args))),
        "urlquery" => s(url_query_escape(&eval_args(args))),
        // Ollama's: json.Marshal with the error dropped.
        "json" => s(json::marshal(&args[0].indirect_interface()).unwrap_or_default()),
        "currentDate" => s(ctx.today.format("%Y-%m-%d").to_string()),
        "yesterdayDate" => s(ctx.today.pred_opt().unwrap_or(ctx.today).format("%Y-%m-%d").to_string()),
        "toTypeScriptType" => {
            let v = args[0].indirect_interface();
            let prop = match &v {
                Value::Ptr(_, Some(inner)) => (**inner).clone(),
                other => other.clone(),
            };
            s(if prop.methods() == Methods::ToolProperty { ts_type(&prop) } else { "any".into() })
        }
        _ => Err(format!("{} is not a defined function", super::fmt::quote(name))),
    }
}

/// `call FN ARGS...`: templates get no function values, so this only reports what Go would.
pub fn call(callee: &str, f: &Value) -> Result<Value, String> {
    match f.indirect_interface() {
        Value::Invalid => Err("call of nil".into()),
        v => Err(format!("non-function {callee} of type {}", v.type_name())),
    }
}
