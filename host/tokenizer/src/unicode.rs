//! Per-codepoint Unicode facts the llama.cpp tokenizers depend on: a coarse general category
//! (`\p{L}`, `\p{N}`, `\p{M}`, `\p{P}`, `\p{S}`, `\p{Z}`, `\p{C}`, unassigned), the White_Space
//! property, simple lowercase, the first codepoint of the NFD decomposition, and GPT-2's
//! byte-to-unicode table.
//!
//! Invariants:
//! - `flags(cpt)` has exactly one category bit for every `cpt < 0x110000` (UNDEFINED for
//!   unassigned codepoints), so "flags != 0" means "a real codepoint"; `CptFlags::NONE` (0) is
//!   what the splitters see outside the current chunk, as llama.cpp's `_get_flags` does.
//! - The category tables come from `regex-syntax`'s Unicode tables (no hand-written data), the
//!   whitespace bit from `char::is_whitespace` (the White_Space property, the same 25 codepoints
//!   llama.cpp lists).
//!
//! Modelled on llama.cpp's `unicode.h` flag layout (`unicode_cpt_flags`) and
//! `unicode_byte_to_utf8_map`, re-derived from the Unicode data rather than copied.

use std::collections::HashMap;
use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

pub(crate) const UNDEFINED: u16 = 0x0001;
pub(crate) const NUMBER: u16 = 0x0002;
pub(crate) const LETTER: u16 = 0x0004;
pub(crate) const SEPARATOR: u16 = 0x0008;
pub(crate) const ACCENT_MARK: u16 = 0x0010;
pub(crate) const PUNCTUATION: u16 = 0x0020;
pub(crate) const SYMBOL: u16 = 0x0040;
pub(crate) const CONTROL: u16 = 0x0080;
pub(crate) const MASK_CATEGORIES: u16 = 0x00FF;
pub(crate) const WHITESPACE: u16 = 0x0100;

const MAX_CODEPOINTS: usize = 0x110000;

/// Category and whitespace bits of one codepoint (llama.cpp's `unicode_cpt_flags` layout).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CptFlags(pub u16);

impl CptFlags {
    /// What a position outside the current chunk reads as.
    pub(crate) const NONE: CptFlags = CptFlags(0);

    pub(crate) fn is_number(self) -> bool {
        self.0 & NUMBER != 0
    }
    pub(crate) fn is_letter(self) -> bool {
        self.0 & LETTER != 0
    }
    pub(crate) fn is_accent_mark(self) -> bool {
        self.0 & ACCENT_MARK != 0
    }
    pub(crate) fn is_punctuation(self) -> bool {
        self.0 & PUNCTUATION != 0
    }
    pub(crate) fn is_symbol(self) -> bool {
        self.0 & SYMBOL != 0
    }
    pub(crate) fn is_control(self) -> bool {
        self.0 & CONTROL != 0
    }
    pub(crate) fn is_whitespace(self) -> bool {
        self.0 & WHITESPACE != 0
    }
    /// The category bits alone (one of the constants above, or 0 for `NONE`).
    pub(crate) fn category(self) -> u16 {
        self.0 & MASK_CATEGORIES
    }
    /// llama.cpp's `as_uint() != 0`: true for every real codepoint.
    pub(crate) fn any(self) -> bool {
        self.0 != 0
    }
}

/// Ranges of a Unicode general category, read from regex-syntax's tables.
fn class_ranges(name: &str) -> Vec<(u32, u32)> {
    let pattern = format!(r"\p{{{name}}}");
    let Ok(hir) = regex_syntax::ParserBuilder::new().build().parse(&pattern) else {
        return Vec::new();
    };
    match hir.kind() {
        HirKind::Class(Class::Unicode(cls)) => cls.ranges().iter().map(|r| (r.start() as u32, r.end() as u32)).collect(),
        _ => Vec::new(),
    }
}

fn table() -> &'static [u16] {
    static TABLE: OnceLock<Vec<u16>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = vec![UNDEFINED; MAX_CODEPOINTS];
        // Cs (surrogates) cannot occur in a Rust `str`; Cn stays UNDEFINED.
        let classes = [
            ("L", LETTER),
            ("N", NUMBER),
            ("M", ACCENT_MARK),
            ("P", PUNCTUATION),
            ("S", SYMBOL),
            ("Z", SEPARATOR),
            ("Cc", CONTROL),
            ("Cf", CONTROL),
            ("Co", CONTROL),
        ];
        for (name, flag) in classes {
            for (lo, hi) in class_ranges(name) {
                for cpt in lo..=hi.min(MAX_CODEPOINTS as u32 - 1) {
                    t[cpt as usize] = flag;
                }
            }
        }
        for (cpt, slot) in t.iter_mut().enumerate() {
            if char::from_u32(cpt as u32).is_some_and(char::is_whitespace) {
                *slot |= WHITESPACE;
            }
        }
        t
    })
}

/// Flags of a codepoint; codepoints past U+10FFFF read as UNDEFINED, as in llama.cpp.
pub(crate) fn flags(cpt: char) -> CptFlags {
    CptFlags(table().get(cpt as usize).copied().unwrap_or(UNDEFINED))
}

/// Simple (one-codepoint) lowercase mapping, like `unicode_tolower`: the full mapping's first
/// codepoint, which equals the UnicodeData simple mapping (only U+0130 has a longer one).
pub(crate) fn to_lower(c: char) -> char {
    c.to_lowercase().next().unwrap_or(c)
}

/// First codepoint of the canonical decomposition (`unicode_cpts_normalize_nfd` keeps only
/// that one, which drops combining accents from precomposed letters).
pub(crate) fn nfd_first(c: char) -> char {
    if c.is_ascii() {
        return c;
    }
    let mut n = tokenizers::NormalizedString::from(c.to_string().as_str());
    n.nfd();
    n.get().chars().next().unwrap_or(c)
}

/// GPT-2's reversible byte-to-unicode table: printable Latin-1 bytes map to themselves, the
/// remaining 68 bytes to U+0100.. in byte order.
pub(crate) fn byte_to_unicode() -> &'static [char; 256] {
    static MAP: OnceLock<[char; 256]> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut map = ['\0'; 256];
        let mut n = 0u32;
        for (b, slot) in map.iter_mut().enumerate() {
            let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
            *slot = if printable {
                char::from_u32(b as u32).unwrap_or('\0')
            } else {
                let c = char::from_u32(256 + n).unwrap_or('\0');
                n += 1;
                c
            };
        }
        map
    })
}

/// Inverse of [`byte_to_unicode`].
pub(crate) fn unicode_to_byte() -> &'static HashMap<char, u8> {
    static MAP: OnceLock<HashMap<char, u8>> = OnceLock::new();
    MAP.get_or_init(|| byte_to_unicode().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect())
}

/// GPT-2 byte-level encoding of a UTF-8 string.
pub(crate) fn byte_encode(s: &str) -> String {
    let map = byte_to_unicode();
    s.bytes().map(|b| map[b as usize]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_of_known_codepoints() {
        assert_eq!(flags('a').category(), LETTER);
        assert_eq!(flags('é').category(), LETTER);
        assert_eq!(flags('7').category(), NUMBER);
        assert_eq!(flags('½').category(), NUMBER);
        assert_eq!(flags('\u{0301}').category(), ACCENT_MARK);
        assert_eq!(flags('!').category(), PUNCTUATION);
        assert_eq!(flags('$').category(), SYMBOL);
        assert_eq!(flags('🦙').category(), SYMBOL);
        assert_eq!(flags('\n').category(), CONTROL);
        assert!(flags('\n').is_whitespace());
        assert_eq!(flags(' ').category(), SEPARATOR);
        assert!(flags('\u{3000}').is_whitespace());
        assert!(!flags('\u{200B}').is_whitespace());
        assert_eq!(flags('\u{0378}').category(), UNDEFINED);
        assert_eq!(flags('\u{E000}').category(), CONTROL);
    }

    #[test]
    fn byte_table_is_a_bijection() {
        let m = byte_to_unicode();
        assert_eq!(m[b' ' as usize], 'Ġ');
        assert_eq!(m[b'\n' as usize], 'Ċ');
        assert_eq!(m[b'a' as usize], 'a');
        assert_eq!(unicode_to_byte().len(), 256);
    }

    #[test]
    fn lower_and_nfd() {
        assert_eq!(to_lower('A'), 'a');
        assert_eq!(to_lower('\u{0130}'), 'i');
        assert_eq!(nfd_first('é'), 'e');
        assert_eq!(nfd_first('a'), 'a');
    }
}
