//! Model file types (`general.file_type`): the "Q4_K_M"-style names users pick, llama.cpp's
//! `llama_ftype` ids written into the output, and the tensor type each one starts from before the
//! per-tensor mixing rules (`rules.rs`) adjust it.
//!
//! Invariant: ids and names are llama.cpp's (`include/llama.h` `LLAMA_FTYPE_*`, names as
//! `llama-quantize --help` prints them); an id never changes meaning. Only file types whose every
//! tensor type our quant crate can produce without an importance matrix are listed.
//!
//! Modelled on llama.cpp's `llama_ftype` enum, `llama_ftype_get_default_type` and the
//! `QUANT_OPTIONS` table of `tools/quantize/quantize.cpp`.

use rocmforge_quant::GgmlType;

use crate::ModelError;

macro_rules! file_types {
    ($( $var:ident = $id:literal, $name:literal, $base:ident, $desc:literal; )*) => {
        /// A model file type: what `rocmforge quantize IN OUT TYPE` produces.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[allow(non_camel_case_types)]
        pub enum FileType { $( $var, )* }

        impl FileType {
            /// Every file type, in llama-quantize's listing order.
            pub const ALL: &'static [FileType] = &[ $( FileType::$var, )* ];

            /// llama.cpp's `llama_ftype` id, written as `general.file_type`.
            pub fn id(self) -> u32 { match self { $( FileType::$var => $id, )* } }

            /// The canonical name (`"Q4_K_M"`).
            pub fn name(self) -> &'static str { match self { $( FileType::$var => $name, )* } }

            /// The tensor type most weights get (llama.cpp's `llama_ftype_get_default_type`).
            pub fn base_type(self) -> GgmlType { match self { $( FileType::$var => GgmlType::$base, )* } }

            /// A one-line description for `--help` listings.
            pub fn description(self) -> &'static str { match self { $( FileType::$var => $desc, )* } }

            /// The file type for a `general.file_type` id, if it is one we can write.
            pub fn from_id(id: u32) -> Option<Self> {
                match id { $( $id => Some(FileType::$var), )* _ => None }
            }
        }
    };
}

file_types! {
    Q4_0   = 2,  "Q4_0",   Q4_0,   "4.5 bpw, legacy";
    Q4_1   = 3,  "Q4_1",   Q4_1,   "5.0 bpw, legacy";
    Q5_0   = 8,  "Q5_0",   Q5_0,   "5.5 bpw, legacy";
    Q5_1   = 9,  "Q5_1",   Q5_1,   "6.0 bpw, legacy";
    IQ4_NL = 25, "IQ4_NL", IQ4_NL, "4.5 bpw, non-linear 4-bit";
    IQ4_XS = 30, "IQ4_XS", IQ4_XS, "4.25 bpw, non-linear 4-bit";
    Q2_K   = 10, "Q2_K",   Q2_K,   "2-bit k-quant mix (needs no imatrix)";
    Q2_K_S = 21, "Q2_K_S", Q2_K,   "2-bit k-quant, small (llama.cpp requires an imatrix)";
    Q3_K_S = 11, "Q3_K_S", Q3_K,   "3-bit k-quant, small";
    Q3_K_M = 12, "Q3_K_M", Q3_K,   "3-bit k-quant mix, medium";
    Q3_K_L = 13, "Q3_K_L", Q3_K,   "3-bit k-quant mix, large";
    Q4_K_S = 14, "Q4_K_S", Q4_K,   "4-bit k-quant, small";
    Q4_K_M = 15, "Q4_K_M", Q4_K,   "4-bit k-quant mix, medium (recommended)";
    Q5_K_S = 16, "Q5_K_S", Q5_K,   "5-bit k-quant, small";
    Q5_K_M = 17, "Q5_K_M", Q5_K,   "5-bit k-quant mix, medium";
    Q6_K   = 18, "Q6_K",   Q6_K,   "6-bit k-quant";
    Q8_0   = 7,  "Q8_0",   Q8_0,   "8.5 bpw, nearly lossless";
    F16    = 1,  "F16",    F16,    "16-bit float";
    BF16   = 32, "BF16",   BF16,   "16-bit bfloat";
    F32    = 0,  "F32",    F32,    "32-bit float";
}

/// llama-quantize's shorthands: a bare k-quant size means its `_M` mix.
const ALIASES: &[(&str, FileType)] = &[("Q3_K", FileType::Q3_K_M), ("Q4_K", FileType::Q4_K_M), ("Q5_K", FileType::Q5_K_M)];

impl FileType {
    /// Parse a name case-insensitively (`q4_k_m`, `Q8_0`, `f16`; `Q4_K` = `Q4_K_M` as in
    /// llama-quantize). The error lists every valid name.
    pub fn from_name(name: &str) -> Result<Self, ModelError> {
        let name = name.trim();
        if let Some(&t) = Self::ALL.iter().find(|t| t.name().eq_ignore_ascii_case(name)) {
            return Ok(t);
        }
        if let Some(&(_, t)) = ALIASES.iter().find(|(a, _)| a.eq_ignore_ascii_case(name)) {
            return Ok(t);
        }
        Err(ModelError::UnknownFileType { name: name.to_string(), valid: Self::valid_names() })
    }

    /// Every accepted name, comma-separated (for error messages and `--help`).
    pub fn valid_names() -> String {
        Self::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
    }

    /// True for the k-quant mixes, whose `output.weight` goes to Q6_K.
    pub fn is_k_quant(self) -> bool {
        matches!(self.base_type(), GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K)
    }
}

impl std::fmt::Display for FileType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for FileType {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_round_trip() {
        for &t in FileType::ALL {
            assert_eq!(FileType::from_id(t.id()), Some(t));
            assert_eq!(FileType::from_name(&t.name().to_lowercase()).ok(), Some(t));
        }
        assert_eq!(FileType::from_id(4), None);
        assert_eq!(FileType::from_name("q4_k").ok(), Some(FileType::Q4_K_M));
    }
}
