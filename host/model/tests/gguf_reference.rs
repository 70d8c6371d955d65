//! Our GGUF reader against gguf-py's `GGUFReader` on real llama.cpp files: metadata (order, exact
//! on-disk types, values; every element of every array through a SHA-256 of its canonical
//! encoding), tensor tables (dims, types, absolute offsets, sizes) and the whole data of every
//! tensor (SHA-256). Fixtures: `tests/fixtures/gguf_ref_*.json`, produced by
//! `PYTHONPATH=.cache/llama.cpp/gguf-py python3 scripts/fixtures/gguf_reference.py`.
//! Also byte-exact re-serialisation of the real files through `GgufWriter`.

use std::path::PathBuf;

use rocmforge_model::gguf::{GgufArray, GgufFile, GgufValue, GgufWriter};
use rocmforge_model::ModelError;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of every element of a flat array, encoded like `array_digest` in
/// `scripts/fixtures/gguf_reference.py`: strings as u64 LE byte length + UTF-8, bools as one
/// byte, numbers as little-endian bytes of the element type.
fn array_digest(a: &GgufArray) -> String {
    let mut h = Sha256::new();
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                h.update(x.to_le_bytes());
            }
        };
    }
    match a {
        GgufArray::Str(v) => {
            for s in v {
                h.update((s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
        }
        GgufArray::Bool(v) => {
            for &b in v {
                h.update([u8::from(b)]);
            }
        }
        GgufArray::U8(v) => le!(v),
        GgufArray::I8(v) => le!(v),
        GgufArray::U16(v) => le!(v),
        GgufArray::I16(v) => le!(v),
        GgufArray::U32(v) => le!(v),
        GgufArray::I32(v) => le!(v),
        GgufArray::F32(v) => le!(v),
        GgufArray::U64(v) => le!(v),
        GgufArray::I64(v) => le!(v),
        GgufArray::F64(v) => le!(v),
        GgufArray::Array(_) => panic!("nested arrays are not in these files"),
    }
    hex(h.finalize())
}

fn repo_path(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel);
    assert!(p.exists(), "{} is missing: run scripts/fetch-test-data.sh", p.display());
    p
}

fn fixture(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// Compare one scalar metadata value with gguf-py's JSON rendering of it.
fn same_scalar(v: &GgufValue, want: &Value) -> bool {
    match v {
        GgufValue::Str(s) => want.as_str() == Some(s.as_str()),
        GgufValue::Bool(b) => want.as_bool() == Some(*b),
        // serde_json's default float parsing may be 1 ulp off, hence the f64-ulp-sized tolerance.
        GgufValue::F32(_) | GgufValue::F64(_) => match (v.as_f64(), want.as_f64()) {
            (Some(a), Some(w)) => a == w || (a - w).abs() <= 4.0 * f64::EPSILON * a.abs().max(w.abs()),
            _ => false,
        },
        _ => v.as_i64() == want.as_i64() || (v.as_u64().is_some() && v.as_u64() == want.as_u64()),
    }
}

fn check_against_fixture(fixture_name: &str) {
    let fx = fixture(fixture_name);
    let f = GgufFile::open(repo_path(fx["file"].as_str().unwrap())).unwrap();
    assert_eq!(f.as_bytes().len() as u64, fx["file_size"].as_u64().unwrap());
    assert_eq!(u64::from(f.version()), fx["version"].as_u64().unwrap());
    assert_eq!(f.alignment(), fx["alignment"].as_u64().unwrap());
    assert_eq!(f.data_offset(), fx["data_offset"].as_u64().unwrap());

    let kv = fx["kv"].as_array().unwrap();
    assert_eq!(f.metadata().len(), kv.len(), "metadata count");
    for ((key, v), want) in f.metadata().iter().zip(kv) {
        assert_eq!(key, want["key"].as_str().unwrap(), "metadata order");
        assert_eq!(v.type_name(), want["type"].as_str().unwrap(), "type of {key}");
        if let Some(a) = v.as_array() {
            assert_eq!(a.elem_type_name(), want["elem_type"].as_str().unwrap(), "elem type of {key}");
            assert_eq!(a.len() as u64, want["len"].as_u64().unwrap(), "len of {key}");
            let head = want["head"].as_array().unwrap();
            let elems: Vec<GgufValue> = match (a.as_str_slice(), a.as_bool_slice(), a.to_f64_vec()) {
                (Some(s), _, _) => s.iter().map(|x| GgufValue::Str(x.clone())).collect(),
                (_, Some(b), _) => b.iter().map(|&x| GgufValue::Bool(x)).collect(),
                (_, _, Some(n)) => n.into_iter().map(GgufValue::F64).collect(),
                _ => panic!("unexpected nested array in {key}"),
            };
            for (i, w) in head.iter().enumerate() {
                assert!(same_scalar(&elems[i], w), "{key}[{i}]: {:?} vs {w}", elems[i]);
            }
            if let Some(last) = elems.last() {
                assert!(same_scalar(last, &want["last"]), "{key}[last]: {last:?}");
            }
            assert_eq!(array_digest(a), want["sha256"].as_str().unwrap(), "{key}: the whole array differs from gguf-py's");
        } else {
            assert!(same_scalar(v, &want["value"]), "{key}: {v:?} vs {}", want["value"]);
        }
    }

    let tensors = fx["tensors"].as_array().unwrap();
    assert_eq!(f.tensors().len(), tensors.len());
    for (t, want) in f.tensors().iter().zip(tensors) {
        assert_eq!(t.name, want["name"].as_str().unwrap());
        let dims: Vec<u64> = want["dims"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert_eq!(t.dims, dims, "{}", t.name);
        assert_eq!(t.ty.name(), want["type"].as_str().unwrap(), "{}", t.name);
        assert_eq!(f.data_offset() + t.offset, want["data_offset"].as_u64().unwrap(), "{}", t.name);
        assert_eq!(t.n_bytes, want["n_bytes"].as_u64().unwrap(), "{}", t.name);
        let data = f.tensor_data(t);
        assert_eq!(data.len() as u64, t.n_bytes);
        let head: String = data.iter().take(16).map(|b| format!("{b:02x}")).collect();
        assert_eq!(head, want["head_hex"].as_str().unwrap(), "{}", t.name);
        let sum: u64 = data.iter().map(|&b| u64::from(b)).sum();
        assert_eq!(sum, want["byte_sum"].as_u64().unwrap(), "{}", t.name);
        assert_eq!(hex(Sha256::digest(data)), want["sha256"].as_str().unwrap(), "{}: whole tensor data", t.name);
        assert_eq!(f.tensor(&t.name), Some(t));
    }
}

#[test]
fn smollm2_matches_gguf_py() {
    check_against_fixture("gguf_ref_smollm2.json");
}

#[test]
fn gemma3_matches_gguf_py() {
    check_against_fixture("gguf_ref_gemma3.json");
}

#[test]
fn minilm_f16_matches_gguf_py() {
    check_against_fixture("gguf_ref_minilm_f16.json");
}

#[test]
fn typed_accessors_on_real_file() {
    let path = repo_path(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.architecture().unwrap(), "llama");
    let fx = fixture("gguf_ref_smollm2.json");
    let want_blocks = fx["kv"].as_array().unwrap().iter().find(|k| k["key"] == "llama.block_count").unwrap();
    assert_eq!(f.get_u64("llama.block_count").unwrap(), want_blocks["value"].as_u64().unwrap());
    assert_eq!(f.opt_u64("llama.no_such_key").unwrap(), None);
    match f.get_u64("llama.no_such_key") {
        Err(ModelError::MissingKey { path: p, key }) => {
            assert_eq!(p, path);
            assert_eq!(key, "llama.no_such_key");
        }
        other => panic!("expected MissingKey, got {other:?}"),
    }
    match f.get_str("llama.block_count") {
        Err(ModelError::WrongType { got, want, .. }) => assert_eq!((got, want), ("u32", "string")),
        other => panic!("expected WrongType, got {other:?}"),
    }
    assert!(matches!(f.opt_bool("general.architecture"), Err(ModelError::WrongType { .. })));
    assert!(f.get_f64("llama.attention.layer_norm_rms_epsilon").unwrap() > 0.0);
    let tokens = f.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
    assert_eq!(tokens.as_str_slice().unwrap().len(), tokens.len());
}

/// Re-serialise a real file (same metadata order, same tensors, same alignment) and compare every
/// byte with the original: checks our writer uses llama.cpp's padding convention.
fn rewrite_is_byte_exact(rel: &str) {
    let f = GgufFile::open(repo_path(rel)).unwrap();
    let w = GgufWriter::from_file(&f).unwrap();
    assert_eq!(w.tensor_infos().unwrap(), f.tensors(), "offsets are assigned like the original");
    let out = w.to_bytes(|i| Ok(f.tensor_data(&f.tensors()[i]))).unwrap();
    let orig = f.as_bytes();
    if out != orig {
        let first = out.iter().zip(orig).position(|(a, b)| a != b);
        panic!("{rel}: rewrite differs (len {} vs {}), first differing byte {first:?}", out.len(), orig.len());
    }
}

#[test]
fn smollm2_rewrite_is_byte_exact() {
    rewrite_is_byte_exact(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn gemma3_rewrite_is_byte_exact() {
    rewrite_is_byte_exact(".cache/models/gemma-3-270m-q4_k_m.gguf");
}

#[test]
fn minilm_q8_rewrite_is_byte_exact() {
    rewrite_is_byte_exact(".cache/models/all-MiniLM-L6-v2-q8_0.gguf");
}
