//! GGUF metadata values: the thirteen on-disk value types, typed arrays (which may nest), and
//! the lenient accessors model loaders use (`as_u64` accepts any non-negative integer type,
//! because converters disagree on whether a count is `u32`, `i32` or `u64`).
//!
//! Invariant: a value keeps the exact on-disk type it was read with (a `U32` stays `U32`, an empty
//! `Str` array stays a `Str` array), so writing a read file back gives the same bytes.
//!
//! Modelled on the GGUF specification (ggml `docs/gguf.md`) and gguf-py's `GGUFValueType`.

/// On-disk value type ids (`gguf_type`).
pub(crate) mod type_id {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// Human name of an on-disk value type id (for error messages), or `None` if unknown.
pub(crate) fn type_id_name(id: u32) -> Option<&'static str> {
    Some(match id {
        type_id::U8 => "u8",
        type_id::I8 => "i8",
        type_id::U16 => "u16",
        type_id::I16 => "i16",
        type_id::U32 => "u32",
        type_id::I32 => "i32",
        type_id::F32 => "f32",
        type_id::BOOL => "bool",
        type_id::STRING => "string",
        type_id::ARRAY => "array",
        type_id::U64 => "u64",
        type_id::I64 => "i64",
        type_id::F64 => "f64",
        _ => return None,
    })
}

/// The smallest number of bytes one element of this type occupies on disk. Used to reject
/// counts that cannot fit in the rest of the file before allocating anything.
pub(crate) fn min_encoded_size(id: u32) -> Option<u64> {
    Some(match id {
        type_id::U8 | type_id::I8 | type_id::BOOL => 1,
        type_id::U16 | type_id::I16 => 2,
        type_id::U32 | type_id::I32 | type_id::F32 => 4,
        type_id::U64 | type_id::I64 | type_id::F64 => 8,
        type_id::STRING => 8,    // u64 length, empty string
        type_id::ARRAY => 4 + 8, // element type + count, empty array
        _ => return None,
    })
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(GgufArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A homogeneous metadata array. `Array` holds nested arrays, each with its own element type.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    Str(Vec<String>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
    Array(Vec<GgufArray>),
}

impl GgufValue {
    /// On-disk type id.
    pub fn type_id(&self) -> u32 {
        match self {
            GgufValue::U8(_) => type_id::U8,
            GgufValue::I8(_) => type_id::I8,
            GgufValue::U16(_) => type_id::U16,
            GgufValue::I16(_) => type_id::I16,
            GgufValue::U32(_) => type_id::U32,
            GgufValue::I32(_) => type_id::I32,
            GgufValue::F32(_) => type_id::F32,
            GgufValue::Bool(_) => type_id::BOOL,
            GgufValue::Str(_) => type_id::STRING,
            GgufValue::Array(_) => type_id::ARRAY,
            GgufValue::U64(_) => type_id::U64,
            GgufValue::I64(_) => type_id::I64,
            GgufValue::F64(_) => type_id::F64,
        }
    }

    /// `"u32"`, `"string"`, `"array"`, ... (for error messages).
    pub fn type_name(&self) -> &'static str {
        type_id_name(self.type_id()).unwrap_or("?")
    }

    /// Any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type whose value fits in `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Any numeric type (integers and floats; 64-bit integers may round).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            GgufValue::U64(v) => Some(v as f64),
            GgufValue::I64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

macro_rules! array_dispatch {
    ($self:expr, $v:ident => $e:expr) => {
        match $self {
            GgufArray::U8($v) => $e,
            GgufArray::I8($v) => $e,
            GgufArray::U16($v) => $e,
            GgufArray::I16($v) => $e,
            GgufArray::U32($v) => $e,
            GgufArray::I32($v) => $e,
            GgufArray::F32($v) => $e,
            GgufArray::Bool($v) => $e,
            GgufArray::Str($v) => $e,
            GgufArray::U64($v) => $e,
            GgufArray::I64($v) => $e,
            GgufArray::F64($v) => $e,
            GgufArray::Array($v) => $e,
        }
    };
}

impl GgufArray {
    pub fn len(&self) -> usize {
        array_dispatch!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// On-disk type id of the elements.
    pub fn elem_type_id(&self) -> u32 {
        match self {
            GgufArray::U8(_) => type_id::U8,
            GgufArray::I8(_) => type_id::I8,
            GgufArray::U16(_) => type_id::U16,
            GgufArray::I16(_) => type_id::I16,
            GgufArray::U32(_) => type_id::U32,
            GgufArray::I32(_) => type_id::I32,
            GgufArray::F32(_) => type_id::F32,
            GgufArray::Bool(_) => type_id::BOOL,
            GgufArray::Str(_) => type_id::STRING,
            GgufArray::U64(_) => type_id::U64,
            GgufArray::I64(_) => type_id::I64,
            GgufArray::F64(_) => type_id::F64,
            GgufArray::Array(_) => type_id::ARRAY,
        }
    }

    /// `"u32"`, `"string"`, ... naming the element type.
    pub fn elem_type_name(&self) -> &'static str {
        type_id_name(self.elem_type_id()).unwrap_or("?")
    }

    pub fn as_str_slice(&self) -> Option<&[String]> {
        match self {
            GgufArray::Str(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_f32_slice(&self) -> Option<&[f32]> {
        match self {
            GgufArray::F32(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_i32_slice(&self) -> Option<&[i32]> {
        match self {
            GgufArray::I32(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_u8_slice(&self) -> Option<&[u8]> {
        match self {
            GgufArray::U8(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_bool_slice(&self) -> Option<&[bool]> {
        match self {
            GgufArray::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// Every element of a numeric array as `f64` (`None` for strings, bools and nested arrays).
    pub fn to_f64_vec(&self) -> Option<Vec<f64>> {
        Some(match self {
            GgufArray::U8(v) => v.iter().map(|&x| x.into()).collect(),
            GgufArray::I8(v) => v.iter().map(|&x| x.into()).collect(),
            GgufArray::U16(v) => v.iter().map(|&x| x.into()).collect(),
            GgufArray::I16(v) => v.iter().map(|&x| x.into()).collect(),
            GgufArray::U32(v) => v.iter().map(|&x| x.into()).collect(),
            GgufArray::I32(v) => v.iter().map(|&x| x.into()).collect(),
            GgufArray::F32(v) => v.iter().map(|&x| x.into()).collect(),
            GgufArray::U64(v) => v.iter().map(|&x| x as f64).collect(),
            GgufArray::I64(v) => v.iter().map(|&x| x as f64).collect(),
            GgufArray::F64(v) => v.clone(),
            GgufArray::Bool(v) => v.iter().map(|&b| f64::from(u8::from(b))).collect(),
            GgufArray::Str(_) | GgufArray::Array(_) => return None,
        })
    }

    /// Every element of an integer array as `i64` (`None` for other arrays or a `u64` > i64::MAX).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        Some(match self {
            GgufArray::U8(v) => v.iter().map(|&x| x.into()).collect(),
            GgufArray::I8(v) => v.iter().map(|&x| x.into()).collect(),
            GgufArray::U16(v) => v.iter().map(|&x| x.into()).collect(),
            GgufArray::I16(v) => v.iter().map(|&x| x.into()).collect(),
            GgufArray::U32(v) => v.iter().map(|&x| x.into()).collect(),
            GgufArray::I32(v) => v.iter().map(|&x| x.into()).collect(),
            GgufArray::I64(v) => v.clone(),
            GgufArray::U64(v) => v.iter().map(|&x| i64::try_from(x).ok()).collect::<Option<_>>()?,
            _ => return None,
        })
    }

    /// Every element of an integer array as `u64` (`None` for other arrays or a negative value).
    pub fn to_u64_vec(&self) -> Option<Vec<u64>> {
        match self {
            GgufArray::U64(v) => Some(v.clone()),
            _ => self.to_i64_vec()?.into_iter().map(|x| u64::try_from(x).ok()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_integer_accessors() {
        assert_eq!(GgufValue::I32(5).as_u64(), Some(5));
        assert_eq!(GgufValue::I32(-5).as_u64(), None);
        assert_eq!(GgufValue::U64(u64::MAX).as_i64(), None);
        assert_eq!(GgufValue::U16(7).as_f64(), Some(7.0));
        assert_eq!(GgufValue::F32(1.5).as_u64(), None);
        assert_eq!(GgufValue::Bool(true).as_u64(), None);
        assert_eq!(GgufValue::Str("x".into()).type_name(), "string");
    }

    #[test]
    fn array_conversions() {
        let a = GgufArray::I32(vec![-1, 2]);
        assert_eq!(a.to_i64_vec(), Some(vec![-1, 2]));
        assert_eq!(a.to_u64_vec(), None);
        assert_eq!(a.to_f64_vec(), Some(vec![-1.0, 2.0]));
        assert_eq!(GgufArray::Str(vec![]).to_f64_vec(), None);
        assert_eq!(GgufArray::U64(vec![u64::MAX]).to_i64_vec(), None);
        assert_eq!(GgufArray::U64(vec![u64::MAX]).to_u64_vec(), Some(vec![u64::MAX]));
    }
}
