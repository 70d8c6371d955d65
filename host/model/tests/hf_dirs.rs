//! Hugging Face directories built in temp dirs: a 2-shard split of the real MiniLM weights (shards
//! written by the official `safetensors` crate) with an index, dtype conversion (FP8 without a
//! scale is a plain cast; scaled FP8 is in `fp8_safetensors.rs`) and the unsupported-dtype
//! error, chat-template sources, directory-level errors, and malformed safetensors headers.

use std::path::{Path, PathBuf};

use rocmforge_model::hf::{parse_safetensors_header, HfDtype, HfModelDir};
use rocmforge_model::ModelError;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;

fn minilm_dir() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models/all-MiniLM-L6-v2");
    assert!(p.join("model.safetensors").exists(), "{} missing: run scripts/fetch-test-data.sh", p.display());
    p
}

fn dtype_of(d: &HfDtype) -> Dtype {
    match d {
        HfDtype::F32 => Dtype::F32,
        HfDtype::I64 => Dtype::I64,
        other => panic!("unexpected dtype {other}"),
    }
}

fn write_json(path: &Path, v: serde_json::Value) {
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// A safetensors file written by the official crate.
fn st_file(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize(views, None).unwrap()
}

fn tiny_dir(files: &[(&str, Vec<u8>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_json(&dir.path().join("config.json"), json!({"architectures": ["LlamaForCausalLM"]}));
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    dir
}

#[test]
fn sharded_minilm_equals_single_file() {
    let src = HfModelDir::open(minilm_dir()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(minilm_dir().join("config.json"), dir.path().join("config.json")).unwrap();
    let names: Vec<&str> = src.tensors().iter().map(|t| t.name.as_str()).collect();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in [("model-00001-of-00002.safetensors", first), ("model-00002-of-00002.safetensors", second)] {
        let views: Vec<(String, TensorView)> = part
            .iter()
            .map(|&n| {
                let t = src.tensor(n).unwrap();
                let shape = t.shape.iter().map(|&d| d as usize).collect();
                (n.to_string(), TensorView::new(dtype_of(&t.dtype), shape, src.tensor_bytes(n).unwrap()).unwrap())
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.path().join(shard)).unwrap();
        for &n in part {
            weight_map.insert(n.to_string(), json!(shard));
        }
    }
    write_json(&dir.path().join("model.safetensors.index.json"), json!({"metadata": {"total_size": 0}, "weight_map": weight_map}));

    let m = HfModelDir::open(dir.path()).unwrap();
    assert_eq!(m.shard_paths().len(), 2);
    assert_eq!(m.tensors(), src.tensors());
    for n in &names {
        assert_eq!(m.tensor_bytes(n).unwrap(), src.tensor_bytes(n).unwrap(), "{n}");
    }
    assert_eq!(m.tensor_f32(first[0]).ok(), src.tensor_f32(first[0]).ok());
    assert_eq!(m.architectures(), ["BertModel"]);

    // The index names a tensor its shard does not hold.
    let mut bad_map = weight_map.clone();
    bad_map.insert(first[0].to_string(), json!("model-00002-of-00002.safetensors"));
    write_json(&dir.path().join("model.safetensors.index.json"), json!({"weight_map": bad_map}));
    let e = HfModelDir::open(dir.path()).unwrap_err();
    assert!(matches!(&e, ModelError::Malformed { what, .. } if what.contains(first[0])), "{e}");

    // A shard outside the directory.
    let mut escape = weight_map.clone();
    escape.insert(first[0].to_string(), json!("../model.safetensors"));
    write_json(&dir.path().join("model.safetensors.index.json"), json!({"weight_map": escape}));
    let e = HfModelDir::open(dir.path()).unwrap_err();
    assert!(e.to_string().contains("not a relative path inside"), "{e}");

    // No weight_map at all.
    write_json(&dir.path().join("model.safetensors.index.json"), json!({"metadata": {}}));
    assert!(HfModelDir::open(dir.path()).unwrap_err().to_string().contains("weight_map"));
}

#[test]
fn tensor_in_two_shards_is_an_error() {
    let a = st_file(&[("x", Dtype::F32, vec![1], vec![0; 4])]);
    let dir = tiny_dir(&[("a.safetensors", a.clone()), ("b.safetensors", a)]);
    write_json(&dir.path().join("model.safetensors.index.json"), json!({"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}));
    let e = HfModelDir::open(dir.path()).unwrap_err();
    assert!(matches!(&e, ModelError::BadTensor { tensor, what, .. } if tensor == "x" && what.contains("also present")), "{e}");
}

#[test]
fn f16_bf16_fp8_conversion_and_dtype_error() {
    // IEEE 754 binary16 / bfloat16 encodings of 1.0, -2.5, 65504 (f16 max) and 2^-24 (f16
    // smallest subnormal; 2^-126 for bf16's 0x0080).
    let f16: Vec<u8> = [0x3C00u16, 0xC100, 0x7BFF, 0x0001].iter().flat_map(|b| b.to_le_bytes()).collect();
    let bf16: Vec<u8> = [0x3F80u16, 0xC020, 0x0080].iter().flat_map(|b| b.to_le_bytes()).collect();
    let f32: Vec<u8> = [0.5f32, -0.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let file = st_file(&[
        ("h", Dtype::F16, vec![2, 2], f16),
        ("b", Dtype::BF16, vec![3], bf16),
        ("f", Dtype::F32, vec![2], f32),
        ("q", Dtype::F8_E4M3, vec![4], vec![0x38, 0, 1, 2]),
        ("e", Dtype::F8_E5M2, vec![1], vec![0x3C]),
        ("u", Dtype::U16, vec![1], vec![1, 2]),
    ]);
    let dir = tiny_dir(&[("model.safetensors", file)]);
    let m = HfModelDir::open(dir.path()).unwrap();
    assert_eq!(m.tensor_f32("h").unwrap(), [1.0, -2.5, 65504.0, 2f32.powi(-24)]);
    assert_eq!(m.tensor_f32("b").unwrap(), [1.0, -2.5, 2f32.powi(-126)]);
    assert_eq!(m.tensor_f32("f").unwrap(), [0.5, -0.0]);
    assert_eq!(m.tensor("q").unwrap().dtype, HfDtype::F8E4M3);
    assert_eq!(m.tensor("u").unwrap().dtype, HfDtype::Other("U16".into()));
    assert_eq!(m.tensor_bytes("q").unwrap(), [0x38, 0, 1, 2]);
    // E4M3: 1.0, 0, 2^-9 and 2^-8 (subnormals); E5M2 0x3C = 1.0 (the top byte of f16 1.0).
    assert_eq!(m.tensor_f32("q").unwrap(), [1.0, 0.0, 2f32.powi(-9), 2f32.powi(-8)]);
    assert_eq!(m.tensor_f32("e").unwrap(), [1.0]);
    for (name, dtype) in [("u", "U16")] {
        match m.tensor_f32(name) {
            Err(ModelError::UnsupportedDtype { tensor, dtype: d, path }) => {
                assert_eq!((tensor.as_str(), d.as_str()), (name, dtype));
                assert_eq!(path, dir.path().join("model.safetensors"));
            }
            other => panic!("{name}: expected UnsupportedDtype, got {other:?}"),
        }
    }
    let names: Vec<&str> = m.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["b", "e", "f", "h", "q", "u"]);
}

#[test]
fn chat_template_sources() {
    let w = st_file(&[]);
    let dir = tiny_dir(&[("model.safetensors", w)]);
    let p = dir.path();
    assert_eq!(HfModelDir::open(p).unwrap().chat_template(), None);
    write_json(&p.join("tokenizer_config.json"), json!({"chat_template": "{{ messages }}"}));
    assert_eq!(HfModelDir::open(p).unwrap().chat_template().as_deref(), Some("{{ messages }}"));
    write_json(
        &p.join("tokenizer_config.json"),
        json!({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}),
    );
    assert_eq!(HfModelDir::open(p).unwrap().chat_template().as_deref(), Some("D"));
    std::fs::write(p.join("chat_template.jinja"), "J").unwrap();
    assert_eq!(HfModelDir::open(p).unwrap().chat_template().as_deref(), Some("J"));
    write_json(&p.join("generation_config.json"), json!({"eos_token_id": [1, 2]}));
    let m = HfModelDir::open(p).unwrap();
    assert_eq!(m.generation_config().unwrap()["eos_token_id"], json!([1, 2]));
    assert_eq!(m.architectures(), ["LlamaForCausalLM"]);
    assert!(m.tokenizer_json_path().is_none());
}

#[test]
fn directory_errors() {
    let empty = tempfile::tempdir().unwrap();
    let e = HfModelDir::open(empty.path()).unwrap_err();
    assert!(matches!(&e, ModelError::Io { path, .. } if path.ends_with("config.json")), "{e}");
    std::fs::write(empty.path().join("config.json"), "{not json").unwrap();
    assert!(matches!(HfModelDir::open(empty.path()).unwrap_err(), ModelError::Json { .. }));
    write_json(&empty.path().join("config.json"), json!({}));
    let e = HfModelDir::open(empty.path()).unwrap_err();
    assert!(e.to_string().contains("no model.safetensors"), "{e}");
    std::fs::write(empty.path().join("tokenizer_config.json"), "[1,").unwrap();
    assert!(
        matches!(HfModelDir::open(empty.path()).unwrap_err(), ModelError::Json { path, .. } if path.ends_with("tokenizer_config.json"))
    );
}

/// A safetensors file assembled by hand: header JSON text + data bytes.
fn raw(header: &str, data_len: usize) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend(std::iter::repeat_n(0u8, data_len));
    v
}

fn parse_err(bytes: &[u8]) -> ModelError {
    match parse_safetensors_header(Path::new("bad.safetensors"), bytes) {
        Ok(h) => panic!("malformed header accepted: {h:?}"),
        Err(e) => {
            assert!(e.to_string().contains("bad.safetensors"), "error does not name the file: {e}");
            e
        }
    }
}

fn assert_msg(e: &ModelError, needle: &str) {
    assert!(e.to_string().contains(needle), "expected '{needle}' in: {e}");
}

#[test]
fn malformed_safetensors_headers() {
    let ok = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"}}"#;
    let h = parse_safetensors_header(Path::new("x"), &raw(ok, 8)).unwrap();
    assert_eq!(h.metadata, [("format".to_string(), "pt".to_string())]);
    assert_eq!(h.tensors[0].1, h.data_start..h.data_start + 8);

    // Truncated: shorter than the length field; header longer than the file; data cut short.
    assert!(matches!(parse_err(&[1, 0, 0]), ModelError::Truncated { .. }));
    let full = raw(ok, 8);
    assert!(matches!(parse_err(&full[..20]), ModelError::Truncated { .. }));
    assert_msg(&parse_err(&full[..full.len() - 1]), "do not fit");
    // Every prefix is an error, never a panic.
    for len in 0..full.len() {
        parse_err(&full[..len]);
    }
    // Absurd header lengths.
    for n in [u64::MAX, 1 << 40, 100_000_001] {
        let mut b = full.clone();
        b[..8].copy_from_slice(&n.to_le_bytes());
        assert_msg(&parse_err(&b), "exceeds the limit");
    }
    // Bad JSON, or JSON of the wrong shape.
    assert!(matches!(parse_err(&raw("{\"a\":", 0)), ModelError::Json { .. }));
    assert!(matches!(parse_err(&raw("\u{FFFD}", 0)), ModelError::Json { .. }));
    assert_msg(&parse_err(&raw("[1,2]", 0)), "not a JSON object");
    let cases = [
        (r#"{"a":{"shape":[2],"data_offsets":[0,8]}}"#, "dtype"),
        (r#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#, "shape"),
        (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}}"#, "data_offsets"),
        (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,1.5]}}"#, "data_offsets"),
        (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#, "do not fit"),
        (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#, "do not fit"),
        (r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, "needs 96 bits"),
        (r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#, "needs 12 bits"),
        (r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#, "overflows"),
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[2],"data_offsets":[6,8]}}"#,
            "overlaps tensor 'a'",
        ),
        (r#"{"__metadata__":{"k":1}}"#, "not a string"),
        (r#"{"__metadata__":[]}"#, "not an object"),
    ];
    for (header, needle) in cases {
        assert_msg(&parse_err(&raw(header, 8)), needle);
    }
    // Unknown dtypes are kept (only their range is checked); gaps are allowed.
    let lenient =
        r#"{"z":{"dtype":"Q9","shape":[5],"data_offsets":[0,3]},"y":{"dtype":"U8","shape":[1],"data_offsets":[6,7]},"__metadata__":null}"#;
    let h = parse_safetensors_header(Path::new("x"), &raw(lenient, 8)).unwrap();
    assert_eq!(h.tensors[1].0.dtype, HfDtype::Other("Q9".into()));
    assert_eq!(h.tensors.iter().map(|t| t.0.name.as_str()).collect::<Vec<_>>(), ["y", "z"]);
}

#[test]
fn malformed_shard_in_a_directory_names_the_file() {
    let dir = tiny_dir(&[("model.safetensors", raw(r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, 8))]);
    let e = HfModelDir::open(dir.path()).unwrap_err();
    assert!(matches!(&e, ModelError::BadTensor { path, tensor, .. } if tensor == "a" && path.ends_with("model.safetensors")), "{e}");
}
