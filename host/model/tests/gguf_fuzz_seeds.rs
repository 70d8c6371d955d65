//! The GGUF fuzz seed corpus (`fuzz/corpus/gguf_parse/`): small valid files written by our
//! writer plus the first 64 KiB of the real SmolLM2 file. This test checks the committed seeds
//! are exactly what the generators below produce and that the valid ones parse.
//! Regenerate with: `ROCMFORGE_WRITE_FUZZ_SEEDS=1 cargo test -p rocmforge-model --test gguf_fuzz_seeds`

use std::path::{Path, PathBuf};

use rocmforge_model::gguf::{GgufArray, GgufFile, GgufValue, GgufWriter};
use rocmforge_quant::GgmlType;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fill(n: u64, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed)).collect()
}

fn write(w: &GgufWriter) -> Vec<u8> {
    let infos = w.tensor_infos().unwrap();
    w.to_bytes(|i| Ok(fill(infos[i].n_bytes, i as u8))).unwrap()
}

fn all_types() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set("general.architecture", GgufValue::Str("llama".into()));
    w.set("u8", GgufValue::U8(1));
    w.set("i8", GgufValue::I8(-1));
    w.set("u16", GgufValue::U16(2));
    w.set("i16", GgufValue::I16(-2));
    w.set("u32", GgufValue::U32(3));
    w.set("i32", GgufValue::I32(-3));
    w.set("f32", GgufValue::F32(0.5));
    w.set("bool", GgufValue::Bool(true));
    w.set("u64", GgufValue::U64(4));
    w.set("i64", GgufValue::I64(-4));
    w.set("f64", GgufValue::F64(0.25));
    w.set("arr.f32", GgufValue::Array(GgufArray::F32(vec![1.0, 2.0])));
    w.set("arr.bool", GgufValue::Array(GgufArray::Bool(vec![false, true])));
    w.set("arr.u64", GgufValue::Array(GgufArray::U64(vec![9])));
    w.set("arr.nested", GgufValue::Array(GgufArray::Array(vec![GgufArray::I16(vec![1, 2]), GgufArray::Str(vec!["s".into()])])));
    for (name, dims, ty) in [
        ("f32", vec![4, 2], GgmlType::F32),
        ("f16", vec![3], GgmlType::F16),
        ("bf16", vec![2, 1, 2], GgmlType::BF16),
        ("q4_0", vec![32], GgmlType::Q4_0),
        ("q8_0", vec![32, 2], GgmlType::Q8_0),
        ("q4_k", vec![256], GgmlType::Q4_K),
        ("i32", vec![0], GgmlType::I32),
    ] {
        w.add_tensor_info(name, dims, ty).unwrap();
    }
    write(&w)
}

fn v2_aligned() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set_version(2).unwrap();
    w.set("general.alignment", GgufValue::U32(64));
    w.set("general.name", GgufValue::Str("tiny".into()));
    w.add_tensor_info("a", vec![5], GgmlType::F32).unwrap();
    w.add_tensor_info("b", vec![7], GgmlType::I8).unwrap();
    write(&w)
}

fn tiny_llama() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set("general.architecture", GgufValue::Str("llama".into()));
    w.set("llama.block_count", GgufValue::U32(1));
    w.set("llama.embedding_length", GgufValue::U32(32));
    w.set("llama.attention.layer_norm_rms_epsilon", GgufValue::F32(1e-5));
    w.set("tokenizer.ggml.model", GgufValue::Str("gpt2".into()));
    let tokens: Vec<String> = ["<s>", "</s>", "a", "b", "ab", "Ġ", "Ġa"].iter().map(|s| s.to_string()).collect();
    w.set("tokenizer.ggml.tokens", GgufValue::Array(GgufArray::Str(tokens)));
    w.set("tokenizer.ggml.token_type", GgufValue::Array(GgufArray::I32(vec![3, 3, 1, 1, 1, 1, 1])));
    w.set("tokenizer.ggml.merges", GgufValue::Array(GgufArray::Str(vec!["a b".into(), "Ġ a".into()])));
    w.add_tensor_info("token_embd.weight", vec![32, 7], GgmlType::Q8_0).unwrap();
    w.add_tensor_info("blk.0.attn_norm.weight", vec![32], GgmlType::F32).unwrap();
    w.add_tensor_info("output_norm.weight", vec![32], GgmlType::F32).unwrap();
    write(&w)
}

fn seeds() -> Vec<(&'static str, Vec<u8>, bool)> {
    let smol = root().join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(smol.exists(), "{} missing: run scripts/fetch-test-data.sh", smol.display());
    let smol_head = std::fs::read(&smol).unwrap()[..64 * 1024].to_vec();
    vec![
        ("all_types.gguf", all_types(), true),
        ("v2_aligned.gguf", v2_aligned(), true),
        ("tiny_llama.gguf", tiny_llama(), true),
        ("smollm2_head_64k.gguf", smol_head, false),
    ]
}

#[test]
fn gguf_fuzz_seeds_are_current_and_valid() {
    let dir = root().join("fuzz/corpus/gguf_parse");
    let write_mode = std::env::var_os("ROCMFORGE_WRITE_FUZZ_SEEDS").is_some();
    for (name, bytes, valid) in seeds() {
        assert_eq!(GgufFile::from_bytes(Path::new(name), bytes.clone()).is_ok(), valid, "{name}");
        let p = dir.join(name);
        if write_mode {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&p, &bytes).unwrap();
        }
        let on_disk = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (regenerate, see header)", p.display()));
        assert!(on_disk == bytes, "{} is stale: regenerate (see the header of this test)", p.display());
    }
}
