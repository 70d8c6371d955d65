//! Go values as `text/template` sees them through reflection: a value carries its Go type, so
//! field access, truthiness, printing, comparisons and error messages behave as they do on the
//! structs Ollama passes to its templates.
//!
//! Invariants:
//! * Interface-kind values (`Value::Iface`) appear exactly where Go has a value of static type
//!   `interface {}`: elements of `[]interface {}` / `map[string]interface {}`, struct fields of
//!   type `any`, and zero values of those. A pipeline's result is "dug out" of its interface
//!   (`dig`), as `evalPipeline` does, so `Iface` survives only in variables set by `range` and in
//!   intermediate field chains, which is where Go shows `interface {}` in its messages.
//! * `Value::Invalid` is Go's zero `reflect.Value` (a missing value, printed `<no value>`).
//! * Map keys are strings (every map Ollama passes is keyed by string); a `BTreeMap` iterates
//!   in the byte order `fmtsort` uses for string keys.
//! * Slices have capacity equal to their length (Go's `slice` can reach into spare capacity of
//!   an appended slice; nothing Ollama builds for a template relies on that).
//!
//! Modelled on Go's `reflect` kinds as used by `text/template/exec.go`; types named as Ollama's
//! `template` and `api` packages name them, so error messages read the same.

use std::collections::BTreeMap;
use std::rc::Rc;

pub type TypeRef = &'static GoType;

/// A Go type, reduced to what templates can observe.
#[derive(Debug)]
pub struct GoType {
    /// `reflect.Type.String()`: `string`, `interface {}`, `*template.templateMessage`, ...
    pub name: &'static str,
    pub kind: Kind,
    /// The methods a template can call (or `fmt` uses) on a value of this type.
    pub methods: Methods,
}

#[derive(Debug)]
pub enum Kind {
    Bool,
    Int,
    Uint8,
    Float64,
    String,
    Interface,
    Slice(TypeRef),
    /// `map[string]T`.
    Map(TypeRef),
    Ptr(TypeRef),
    Struct(&'static [Field]),
    /// `api.ToolPropertiesMap`: an insertion-ordered map behind an unexported field.
    OrderedProps,
}

/// A struct field, with its `encoding/json` tag.
#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub ty: TypeRef,
    /// The JSON key; `None` means no tag (the field name is the key).
    pub json: Option<&'static str>,
    pub omitempty: bool,
}

/// Methods of the types Ollama hands to templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Methods {
    None,
    /// `String() string` returning `json.Marshal(v)`.
    StringJson,
    /// `String() string`: `"{}"` for a nil map, else `json.Marshal(v)`.
    StringJsonNilEmpty,
    /// `api.PropertyType.String()`: "" / the one type / `fmt.Sprintf("%v", []string)`.
    PropertyType,
    /// `api.ToolProperty.ToTypeScriptType()`.
    ToolProperty,
    /// `*api.ToolPropertiesMap`: `Len()`.
    OrderedProps,
}

const fn ty(name: &'static str, kind: Kind) -> GoType {
    GoType { name, kind, methods: Methods::None }
}

pub static T_BOOL: GoType = ty("bool", Kind::Bool);
pub static T_INT: GoType = ty("int", Kind::Int);
pub static T_UINT8: GoType = ty("uint8", Kind::Uint8);
pub static T_FLOAT64: GoType = ty("float64", Kind::Float64);
pub static T_STRING: GoType = ty("string", Kind::String);
pub static T_ANY: GoType = ty("interface {}", Kind::Interface);
pub static T_ANY_MAP: GoType = ty("map[string]interface {}", Kind::Map(&T_ANY));
pub static T_ANY_SLICE: GoType = ty("[]interface {}", Kind::Slice(&T_ANY));
pub static T_STRING_SLICE: GoType = ty("[]string", Kind::Slice(&T_STRING));

/// A Go value.
#[derive(Clone, Debug)]
pub enum Value {
    /// The zero `reflect.Value`: no value at all.
    Invalid,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    /// A value of interface kind: `Some` holds the dynamic (never interface) value, `None` is a
    /// nil interface.
    Iface(Option<Rc<Value>>),
    /// A slice of the given slice type; `None` is a nil slice.
    Slice(TypeRef, Option<Rc<Vec<Value>>>),
    /// A map of the given map type; `None` is a nil map.
    Map(TypeRef, Option<Rc<BTreeMap<String, Value>>>),
    Struct(TypeRef, Rc<Vec<Value>>),
    /// A pointer of the given pointer type; `None` is a nil pointer.
    Ptr(TypeRef, Option<Rc<Value>>),
    /// An `api.ToolPropertiesMap` struct (entries in insertion order).
    Props(Rc<Vec<(String, Value)>>),
}

impl Value {
    pub fn str(s: impl Into<Rc<str>>) -> Value {
        Value::Str(s.into())
    }

    /// Wraps a concrete value as an interface; `Invalid` becomes the nil interface.
    pub fn iface(v: Value) -> Value {
        match v {
            Value::Invalid => Value::Iface(None),
            Value::Iface(_) => v,
            other => Value::Iface(Some(Rc::new(other))),
        }
    }

    /// The Go type of the value (`None` for `Invalid`).
    pub fn go_type(&self) -> Option<TypeRef> {
        Some(match self {
            Value::Invalid => return None,
            Value::Bool(_) => &T_BOOL,
            Value::Int(_) => &T_INT,
            Value::Float(_) => &T_FLOAT64,
            Value::Str(_) => &T_STRING,
            Value::Iface(_) => &T_ANY,
            Value::Slice(t, _) | Value::Map(t, _) | Value::Struct(t, _) | Value::Ptr(t, _) => t,
            Value::Props(_) => &crate::gotmpl::ollama::T_PROPS_MAP,
        })
    }

    /// `reflect.Type.String()` of the value; `<nil>` for `Invalid` (as `%v` of a nil type).
    pub fn type_name(&self) -> &'static str {
        self.go_type().map_or("<nil>", |t| t.name)
    }

    /// Go's `evalPipeline` step: a value of empty-interface kind becomes its dynamic value.
    pub fn dig(self) -> Value {
        match self {
            Value::Iface(Some(v)) => (*v).clone(),
            Value::Iface(None) => Value::Invalid,
            other => other,
        }
    }

    /// Go's `indirectInterface`.
    pub fn indirect_interface(&self) -> Value {
        match self {
            Value::Iface(Some(v)) => (**v).clone(),
            Value::Iface(None) => Value::Invalid,
            other => other.clone(),
        }
    }

    /// Go's `indirect`: through pointers and interfaces until a non-pointer or a nil one.
    /// Returns the value reached and whether it is a nil pointer / interface.
    pub fn indirect(&self) -> (Value, bool) {
        let mut v = self.clone();
        loop {
            match v {
                Value::Ptr(_, None) | Value::Iface(None) => return (v, true),
                Value::Ptr(_, Some(inner)) | Value::Iface(Some(inner)) => v = (*inner).clone(),
                other => return (other, false),
            }
        }
    }

    /// Go's `isTrue`, for every kind a template can meet.
    pub fn truth(&self) -> bool {
        match self {
            Value::Invalid => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::Iface(v) => v.is_some(),
            Value::Ptr(_, p) => p.is_some(),
            Value::Slice(_, s) => s.as_ref().is_some_and(|s| !s.is_empty()),
            Value::Map(_, m) => m.as_ref().is_some_and(|m| !m.is_empty()),
            Value::Struct(..) | Value::Props(_) => true,
        }
    }

    /// Whether `len` applies, and the length (bytes for strings).
    pub fn len(&self) -> Option<usize> {
        match self {
            Value::Str(s) => Some(s.len()),
            Value::Slice(_, s) => Some(s.as_ref().map_or(0, |s| s.len())),
            Value::Map(_, m) => Some(m.as_ref().map_or(0, |m| m.len())),
            _ => None,
        }
    }

    /// The methods of the value's type.
    pub fn methods(&self) -> Methods {
        self.go_type().map_or(Methods::None, |t| t.methods)
    }

    /// The fields of a struct value with their types.
    pub fn struct_fields(&self) -> Option<(&'static [Field], &[Value])> {
        match self {
            Value::Struct(t, vals) => match t.kind {
                Kind::Struct(fields) => Some((fields, vals.as_slice())),
                _ => None,
            },
            _ => None,
        }
    }
}

/// The zero value of a type (`reflect.Zero`).
pub fn zero(t: TypeRef) -> Value {
    match t.kind {
        Kind::Bool => Value::Bool(false),
        Kind::Int | Kind::Uint8 => Value::Int(0),
        Kind::Float64 => Value::Float(0.0),
        Kind::String => Value::str(""),
        Kind::Interface => Value::Iface(None),
        Kind::Slice(_) => Value::Slice(t, None),
        Kind::Map(_) => Value::Map(t, None),
        Kind::Ptr(_) => Value::Ptr(t, None),
        Kind::Struct(fields) => Value::Struct(t, Rc::new(fields.iter().map(|f| zero(f.ty)).collect())),
        Kind::OrderedProps => Value::Props(Rc::new(Vec::new())),
    }
}

/// The element type of a slice or map type.
pub fn elem_type(t: TypeRef) -> Option<TypeRef> {
    match t.kind {
        Kind::Slice(e) | Kind::Map(e) | Kind::Ptr(e) => Some(e),
        _ => None,
    }
}

/// A JSON document as Go's `json.Unmarshal` into `interface {}` gives it: objects become
/// `map[string]interface {}`, arrays `[]interface {}`, numbers `float64`. Container elements
/// are interface-kind; the top level is the concrete value (`null` is `Invalid`).
pub fn from_json(j: &serde_json::Value) -> Value {
    match j {
        serde_json::Value::Null => Value::Invalid,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => Value::Float(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Value::str(s.as_str()),
        serde_json::Value::Array(a) => Value::Slice(&T_ANY_SLICE, Some(Rc::new(a.iter().map(|x| Value::iface(from_json(x))).collect()))),
        serde_json::Value::Object(o) => {
            Value::Map(&T_ANY_MAP, Some(Rc::new(o.iter().map(|(k, v)| (k.clone(), Value::iface(from_json(v)))).collect())))
        }
    }
}
