//! Malformed GGUF files give typed errors that name the file and what is wrong, never a panic
//! and never a huge allocation. Files are assembled by hand from the GGUF spec (`Raw`) so each
//! case mutates exactly one field of an otherwise valid file; a truncation sweep also cuts a
//! valid file and a real file's header at every length.

use std::path::{Path, PathBuf};

use rocmforge_model::gguf::{GgufFile, GgufValue};
use rocmforge_model::ModelError;

const PATH: &str = "bad.gguf";

/// Little-endian GGUF assembler.
#[derive(Default, Clone)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw::default();
        r.0.extend_from_slice(b"GGUF");
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }
    /// A tensor info.
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pad to `align` and append `n` data bytes.
    fn data(&mut self, align: usize, n: usize) -> &mut Self {
        while !self.0.len().is_multiple_of(align) {
            self.0.push(0);
        }
        self.0.extend(std::iter::repeat_n(0xAB, n));
        self
    }
    fn parse(&self) -> Result<GgufFile, ModelError> {
        GgufFile::from_bytes(Path::new(PATH), self.0.clone())
    }
}

/// A valid file: one u32 kv, two F32 tensors of 4 elements at offsets 0 and 32.
fn valid() -> Raw {
    let mut r = Raw::header(3, 2, 1);
    r.str("general.architecture").u32(8).str("llama");
    r.tensor("a", &[4], 0, 0).tensor("b", &[4], 0, 32).data(32, 48);
    r
}

fn err_of(r: &Raw) -> ModelError {
    match r.parse() {
        Ok(_) => panic!("malformed file accepted"),
        Err(e) => {
            assert!(e.to_string().contains(PATH), "error does not name the file: {e}");
            e
        }
    }
}

fn assert_msg(e: &ModelError, needle: &str) {
    assert!(e.to_string().contains(needle), "expected '{needle}' in: {e}");
}

#[test]
fn valid_file_parses() {
    let f = valid().parse().unwrap();
    assert_eq!(f.tensors().len(), 2);
    assert_eq!(f.tensor_data(f.tensor("b").unwrap()), &[0xAB; 16]);
}

#[test]
fn bad_magic_and_version() {
    let mut r = valid();
    r.0[..4].copy_from_slice(b"GGML");
    assert!(matches!(err_of(&r), ModelError::BadMagic { magic, .. } if &magic == b"GGML"));
    for v in [1u32, 4, 0x0300_0000] {
        let mut r = valid();
        r.0[4..8].copy_from_slice(&v.to_le_bytes());
        assert!(matches!(err_of(&r), ModelError::UnsupportedVersion { version, .. } if version == v));
    }
    let mut v2 = valid();
    v2.0[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(v2.parse().unwrap().version(), 2);
}

#[test]
fn every_truncation_is_a_typed_error() {
    let full = valid();
    // The last tensor's data ends at the end of the file: every shorter prefix must fail.
    let data_end = full.0.len();
    for len in 0..data_end {
        let r = Raw(full.0[..len].to_vec());
        match r.parse() {
            Err(ModelError::Truncated { offset, .. }) => assert!(offset <= len as u64),
            Err(ModelError::BadTensor { what, .. }) => {
                assert!(what.contains("past the end"), "{what}")
            }
            // The up-front count check notices a short file before the reads do.
            Err(ModelError::Malformed { what, .. }) if what.contains("cannot fit") => {}
            Err(other) => panic!("len {len}: unexpected error {other}"),
            Ok(_) => panic!("len {len}: truncated file accepted"),
        }
    }
    let mut r = Raw::header(3, 0, 1);
    r.str("a.rather.long.metadata.key.name").u32(4).u32(7);
    let e = err_of(&Raw(r.0[..24 + 8 + 10].to_vec())); // inside the key
    assert!(matches!(&e, ModelError::Truncated { what, .. } if what.contains("key of metadata entry #0")), "{e}");
}

#[test]
fn truncated_real_header_never_panics() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} missing: run scripts/fetch-test-data.sh", p.display());
    let f = GgufFile::open(&p).unwrap();
    let header = &f.as_bytes()[..f.data_offset() as usize];
    // Cut at a spread of lengths through the header (every 4999th byte and the last few).
    let cuts = (0..header.len()).step_by(4999).chain(header.len() - 8..header.len());
    for len in cuts {
        match GgufFile::from_bytes(&p, header[..len].to_vec()) {
            Err(ModelError::Truncated { .. }) | Err(ModelError::BadTensor { .. }) => {}
            Err(ModelError::Malformed { what, .. }) if what.contains("cannot fit") => {}
            other => panic!("cut at {len}: {other:?}"),
        }
    }
}

#[test]
fn counts_that_cannot_fit_are_rejected_before_allocating() {
    for n_kv in [1u64 << 40, u64::MAX] {
        let mut r = valid();
        r.0[16..24].copy_from_slice(&n_kv.to_le_bytes());
        assert!(matches!(err_of(&r), ModelError::Malformed { what, .. } if what.contains("metadata entries")));
    }
    for n_t in [1u64 << 40, u64::MAX] {
        let mut r = valid();
        r.0[8..16].copy_from_slice(&n_t.to_le_bytes());
        assert!(matches!(err_of(&r), ModelError::Malformed { what, .. } if what.contains("tensor infos")));
    }
    // Array lengths: 2^61 u64s, u64::MAX strings (count * 8 overflows), 2^40 nested arrays.
    for (elem, count) in [(10u32, 1u64 << 61), (8, u64::MAX), (9, 1 << 40), (0, 1 << 40)] {
        let mut r = Raw::header(3, 0, 1);
        r.str("arr").u32(9).u32(elem).u64(count).data(32, 64);
        let e = err_of(&r);
        assert!(matches!(&e, ModelError::Malformed { what, .. } if what.contains("'arr'") && what.contains("remain")), "{e}");
    }
}

#[test]
fn string_lengths_past_the_end() {
    let mut r = Raw::header(3, 0, 1);
    r.u64(1 << 50).0.extend_from_slice(b"key and more bytes");
    assert!(matches!(err_of(&r), ModelError::Truncated { what, offset: 32, .. } if what.contains("key of metadata entry #0")));
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(8).u64(u64::MAX).u8(b'x');
    assert!(matches!(err_of(&r), ModelError::Truncated { what, .. } if what.contains("value of 'k'")));
}

#[test]
fn unknown_value_types() {
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(13).u64(0);
    let e = err_of(&r);
    assert!(matches!(&e, ModelError::Malformed { what, .. } if what.contains("unknown value type 13")), "{e}");
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(9).u32(77).u64(1).u64(0);
    let e = err_of(&r);
    assert!(matches!(&e, ModelError::Malformed { what, .. } if what.contains("unknown array element type 77")), "{e}");
}

#[test]
fn non_utf8_keys_and_values() {
    let mut r = Raw::header(3, 0, 1);
    r.bytes(b"ke\xffy").u32(4).u32(1);
    let e = err_of(&r);
    assert!(matches!(&e, ModelError::Malformed { what, .. } if what.contains("key of metadata entry #0") && what.contains("UTF-8")), "{e}");
    let mut r = Raw::header(3, 0, 1);
    r.str("tok").u32(9).u32(8).u64(2).str("ok").bytes(b"\xc3\x28");
    let e = err_of(&r);
    assert!(matches!(&e, ModelError::Malformed { what, .. } if what.contains("'tok'") && what.contains("UTF-8")), "{e}");
    let mut r = Raw::header(3, 1, 0);
    r.bytes(b"\x80").u32(1).u64(4).u32(0).u64(0).data(32, 16);
    assert_msg(&err_of(&r), "name of tensor info #0");
}

#[test]
fn bad_bool_duplicate_key_and_alignment() {
    let mut r = Raw::header(3, 0, 1);
    r.str("b").u32(7).u8(2);
    assert_msg(&err_of(&r), "bool must be 0 or 1");
    let mut r = Raw::header(3, 0, 2);
    r.str("k").u32(4).u32(1).str("k").u32(4).u32(2);
    assert_msg(&err_of(&r), "duplicate metadata key 'k'");
    for (ty, align) in [(4u32, 0u64), (4, 48), (6, 1065353216 /* f32 1.0 */)] {
        let mut r = Raw::header(3, 0, 1);
        r.str("general.alignment").u32(ty).u32(align as u32);
        assert_msg(&err_of(&r), "general.alignment");
    }
    // A valid custom alignment moves the data section.
    let mut r = Raw::header(3, 1, 1);
    r.str("general.alignment").u32(4).u32(64).tensor("t", &[2], 0, 0).data(64, 8);
    let f = r.parse().unwrap();
    assert_eq!((f.alignment(), f.data_offset() % 64), (64, 0));
    assert_eq!(f.get("general.alignment"), Some(&GgufValue::U32(64)));
}

#[test]
fn nesting_depth_limit() {
    let nest = |depth: usize| {
        let mut r = Raw::header(3, 0, 1);
        r.str("deep").u32(9);
        for _ in 0..depth - 1 {
            r.u32(9).u64(1);
        }
        r.u32(0).u64(1).u8(5);
        r
    };
    assert!(nest(8).parse().is_ok());
    assert_msg(&err_of(&nest(9)), "nested deeper than 8");
    assert_msg(&err_of(&nest(200)), "nested deeper than 8");
}

fn one_tensor(dims: &[u64], ty: u32, offset: u64, data: usize) -> Raw {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", dims, ty, offset).data(32, data);
    r
}

fn bad_tensor(r: &Raw, tensor: &str, needle: &str) {
    match err_of(r) {
        ModelError::BadTensor { tensor: t, what, .. } => {
            assert_eq!(t, tensor);
            assert!(what.contains(needle), "expected '{needle}' in: {what}");
        }
        other => panic!("expected BadTensor, got {other}"),
    }
}

#[test]
fn bad_tensor_infos() {
    assert!(one_tensor(&[32, 2], 2, 0, 36).parse().is_ok()); // Q4_0: 2 blocks of 18 bytes
    bad_tensor(&one_tensor(&[4], 4, 0, 16), "w", "unknown tensor type id 4");
    bad_tensor(&one_tensor(&[4], 1000, 0, 16), "w", "unknown tensor type id 1000");
    bad_tensor(&one_tensor(&[1 << 32, 1 << 32, 2], 0, 0, 16), "w", "overflows");
    bad_tensor(&one_tensor(&[u64::MAX], 1, 0, 16), "w", "overflows");
    bad_tensor(&one_tensor(&[33, 2], 2, 0, 64), "w", "not a multiple of the Q4_0 block size 32");
    bad_tensor(&one_tensor(&[1; 9], 0, 0, 16), "w", "9 dims");
    bad_tensor(&one_tensor(&[4], 0, 32, 16), "w", "past the end");
    bad_tensor(&one_tensor(&[4], 0, u64::MAX - 31, 16), "w", "past the end");
    bad_tensor(&one_tensor(&[4], 0, 8, 64), "w", "not a multiple of the alignment 32");
    // n_dims beyond the limit is rejected before reading (and allocating) the dims.
    let mut r = Raw::header(3, 1, 0);
    r.str("w").u32(u32::MAX).data(32, 64);
    bad_tensor(&r, "w", "dims");
}

#[test]
fn duplicate_and_overlapping_tensors() {
    let mut r = Raw::header(3, 2, 0);
    r.tensor("a", &[4], 0, 0).tensor("a", &[4], 0, 32).data(32, 48);
    bad_tensor(&r, "a", "duplicate tensor name");
    let mut r = Raw::header(3, 2, 0);
    r.tensor("a", &[16], 0, 0).tensor("b", &[4], 0, 32).data(32, 64);
    bad_tensor(&r, "b", "overlaps tensor 'a'");
    // Zero-sized tensors overlap nothing; tensors may be stored out of info order.
    let mut r = Raw::header(3, 3, 0);
    r.tensor("late", &[4], 0, 32).tensor("early", &[4], 0, 0).tensor("none", &[0], 0, 0).data(32, 48);
    let f = r.parse().unwrap();
    assert_eq!(f.tensor("late").unwrap().offset, 32);
}

#[test]
fn file_with_no_tensors_needs_no_data_padding() {
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(4).u32(1);
    let f = r.parse().unwrap();
    assert!(f.tensors().is_empty());
    assert_eq!(f.get_u64("k").unwrap(), 1);
}
