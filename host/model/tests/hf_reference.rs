//! `HfModelDir` on the real all-MiniLM-L6-v2 directory against the official `safetensors`
//! package: tensor names, dtypes, shapes and sampled values (head, last, f64 sum). Fixture:
//! `tests/fixtures/hf_ref_minilm.json`, produced by
//! `/work/venv/bin/python scripts/fixtures/hf_reference.py`.

use std::path::PathBuf;

use rocmforge_model::hf::{HfDtype, HfModelDir};
use rocmforge_model::ModelError;
use serde_json::Value;

fn minilm_dir() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models/all-MiniLM-L6-v2");
    assert!(p.join("model.safetensors").exists(), "{} missing: run scripts/fetch-test-data.sh", p.display());
    p
}

fn fixture() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_ref_minilm.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

#[test]
fn minilm_tensor_table_matches_safetensors_py() {
    let m = HfModelDir::open(minilm_dir()).unwrap();
    let fx = fixture();
    let want = fx["tensors"].as_array().unwrap();
    let got = m.tensors();
    assert_eq!(got.len(), want.len());
    for (t, w) in got.iter().zip(want) {
        assert_eq!(t.name, w["name"].as_str().unwrap(), "sorted by name");
        // safetensors-py reports dtypes by their safetensors names ("F32", "I64").
        assert_eq!(t.dtype.name(), w["dtype"].as_str().unwrap(), "{}", t.name);
        let shape: Vec<u64> = w["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert_eq!(t.shape, shape, "{}", t.name);
        assert_eq!(m.tensor(&t.name), Some(*t));
        let bits = t.dtype.bits().unwrap();
        assert_eq!(m.tensor_bytes(&t.name).unwrap().len() as u64 * 8, t.n_elements() * bits);
    }
}

#[test]
fn minilm_values_match_safetensors_py() {
    let m = HfModelDir::open(minilm_dir()).unwrap();
    let fx = fixture();
    for (name, s) in fx["samples"].as_object().unwrap() {
        let t = m.tensor(name).unwrap();
        let values: Vec<f64> = match t.dtype {
            HfDtype::I64 => {
                m.tensor_bytes(name).unwrap().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect()
            }
            _ => m.tensor_f32(name).unwrap().into_iter().map(f64::from).collect(),
        };
        assert_eq!(values.len() as u64, t.n_elements());
        // serde_json's default float parsing may be 1 ulp off in f64; every value here is an
        // f32 (or a small integer), so comparing after rounding to f32 is exact.
        for (i, w) in s["head"].as_array().unwrap().iter().enumerate() {
            assert_eq!(values[i] as f32, w.as_f64().unwrap() as f32, "{name}[{i}]");
        }
        assert_eq!(*values.last().unwrap() as f32, s["last"].as_f64().unwrap() as f32, "{name}[last]");
        let sum: f64 = values.iter().sum();
        let want = s["sum_f64"].as_f64().unwrap();
        let scale: f64 = values.iter().map(|v| v.abs()).sum::<f64>().max(1.0);
        assert!((sum - want).abs() <= 1e-12 * scale, "{name}: sum {sum} vs {want}");
    }
}

#[test]
fn minilm_dir_files_and_dtype_errors() {
    let dir = minilm_dir();
    let m = HfModelDir::open(&dir).unwrap();
    assert_eq!(m.path(), dir);
    assert_eq!(m.architectures(), ["BertModel"]);
    assert_eq!(m.config()["hidden_size"], 384);
    assert_eq!(m.tokenizer_json_path(), Some(dir.join("tokenizer.json").as_path()));
    assert_eq!(m.tokenizer_config().unwrap()["tokenizer_class"], "BertTokenizer");
    assert!(m.generation_config().is_none());
    assert!(m.chat_template().is_none());
    assert_eq!(m.shard_paths(), [dir.join("model.safetensors").as_path()]);
    match m.tensor_f32("embeddings.position_ids") {
        Err(ModelError::UnsupportedDtype { tensor, dtype, .. }) => {
            assert_eq!((tensor.as_str(), dtype.as_str()), ("embeddings.position_ids", "I64"));
        }
        other => panic!("expected UnsupportedDtype, got {other:?}"),
    }
    let e = m.tensor_bytes("no.such.tensor").unwrap_err();
    assert!(e.to_string().contains("no.such.tensor"), "{e}");
}
