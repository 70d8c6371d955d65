//! The `ggml_type` enumeration: ids, names, block sizes and byte sizes.

/// Errors of the quant layer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("unknown GGML tensor type id {0}")]
    UnknownTypeId(u32),
    #[error("unknown tensor type name '{0}'")]
    UnknownTypeName(String),
    #[error("tensor type {ty} is not supported for {op} yet")]
    Unsupported { ty: &'static str, op: &'static str },
    #[error("{ty}: {n} elements is not a multiple of the block size {block}")]
    NotBlockAligned { ty: &'static str, n: usize, block: usize },
    #[error("{ty}: buffer of {got} bytes, expected {want}")]
    BadLength { ty: &'static str, got: usize, want: usize },
    #[error("{ty}: block data is not {align}-byte aligned")]
    Misaligned { ty: &'static str, align: usize },
}

macro_rules! ggml_types {
    ($( $var:ident = $id:literal, $name:literal, $block:literal, $size:literal; )*) => {
        /// A GGML tensor type (GGUF `ggml_type`). Ids are GGUF's on-disk values.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)]
        pub enum GgmlType { $( $var, )* }

        impl GgmlType {
            /// Every type this crate knows the layout of.
            pub const ALL: &'static [GgmlType] = &[ $( GgmlType::$var, )* ];

            /// The type for a GGUF `ggml_type` id.
            pub fn from_id(id: u32) -> Result<Self, QuantError> {
                match id { $( $id => Ok(GgmlType::$var), )* _ => Err(QuantError::UnknownTypeId(id)) }
            }
            /// GGUF's numeric id.
            pub fn id(self) -> u32 { match self { $( GgmlType::$var => $id, )* } }
            /// llama.cpp's name (`"Q4_K"`, `"F16"`).
            pub fn name(self) -> &'static str { match self { $( GgmlType::$var => $name, )* } }
            /// Elements per block (1 for plain types).
            pub fn block_size(self) -> usize { match self { $( GgmlType::$var => $block, )* } }
            /// Bytes per block.
            pub fn type_size(self) -> usize { match self { $( GgmlType::$var => $size, )* } }
        }
    };
}

ggml_types! {
    F32 = 0, "F32", 1, 4;
    F16 = 1, "F16", 1, 2;
    Q4_0 = 2, "Q4_0", 32, 18;
    Q4_1 = 3, "Q4_1", 32, 20;
    Q5_0 = 6, "Q5_0", 32, 22;
    Q5_1 = 7, "Q5_1", 32, 24;
    Q8_0 = 8, "Q8_0", 32, 34;
    Q8_1 = 9, "Q8_1", 32, 36;
    Q2_K = 10, "Q2_K", 256, 84;
    Q3_K = 11, "Q3_K", 256, 110;
    Q4_K = 12, "Q4_K", 256, 144;
    Q5_K = 13, "Q5_K", 256, 176;
    Q6_K = 14, "Q6_K", 256, 210;
    Q8_K = 15, "Q8_K", 256, 292;
    IQ2_XXS = 16, "IQ2_XXS", 256, 66;
    IQ2_XS = 17, "IQ2_XS", 256, 74;
    IQ3_XXS = 18, "IQ3_XXS", 256, 98;
    IQ1_S = 19, "IQ1_S", 256, 50;
    IQ4_NL = 20, "IQ4_NL", 32, 18;
    IQ3_S = 21, "IQ3_S", 256, 110;
    IQ2_S = 22, "IQ2_S", 256, 82;
    IQ4_XS = 23, "IQ4_XS", 256, 136;
    I8 = 24, "I8", 1, 1;
    I16 = 25, "I16", 1, 2;
    I32 = 26, "I32", 1, 4;
    I64 = 27, "I64", 1, 8;
    F64 = 28, "F64", 1, 8;
    IQ1_M = 29, "IQ1_M", 256, 56;
    BF16 = 30, "BF16", 1, 2;
    TQ1_0 = 34, "TQ1_0", 256, 54;
    TQ2_0 = 35, "TQ2_0", 256, 66;
    MXFP4 = 39, "MXFP4", 32, 17;
}

impl GgmlType {
    /// Parse a type name, case-insensitively (`q4_k`, `Q8_0`, `bf16`).
    pub fn from_name(name: &str) -> Result<Self, QuantError> {
        Self::ALL.iter().copied().find(|t| t.name().eq_ignore_ascii_case(name)).ok_or_else(|| QuantError::UnknownTypeName(name.to_string()))
    }

    /// True for block-quantized types (anything with more than one element per block).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes needed for `n` elements, or `None` if `n` is not a whole number of blocks or the
    /// size overflows. Callers validating file headers rely on the overflow check.
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if !n.is_multiple_of(bs) {
            return None;
        }
        (n / bs).checked_mul(self.type_size() as u64)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_names_parse() {
        for &t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()).unwrap(), t);
            assert_eq!(GgmlType::from_name(&t.name().to_lowercase()).unwrap(), t);
        }
        assert_eq!(GgmlType::from_id(4), Err(QuantError::UnknownTypeId(4)));
    }

    #[test]
    fn row_bytes_checks_blocks_and_overflow() {
        assert_eq!(GgmlType::Q4_K.row_bytes(512), Some(288));
        assert_eq!(GgmlType::Q4_K.row_bytes(100), None);
        assert_eq!(GgmlType::F32.row_bytes(u64::MAX), None);
    }
}
