//! Which plugin serves a GGUF `llama` file, decided by data in the file (conditional claims):
//! Mixtral (`llama.expert_count > 0`) and Mistral with a sliding window
//! (`llama.attention.sliding_window > 0`) go to the mistral plugin, every other llama file to the
//! LLaMA plugin. Accuracy against transformers is checked by tests/hf_tiny.rs (fixtures
//! `tests/fixtures/hf-tiny/{mistral,mixtral}`); here only the ownership rule.

mod common;

use std::path::{Path, PathBuf};

use common::{model, registry, repo};
use rocmforge_runtime::ModelSource;

/// `rocmforge quantize DIR OUT.gguf F32`: the GGUF conversion of a tiny HF fixture.
fn convert(variant: &str) -> PathBuf {
    let dir = repo().join("tests/fixtures/hf-tiny").join(variant);
    let out = std::env::temp_dir().join(format!("rf-mistral-{}-{variant}.gguf", std::process::id()));
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_rocmforge")).arg("quantize").arg(&dir).arg(&out).arg("F32").output().unwrap();
    assert!(st.status.success(), "{variant}: {}", String::from_utf8_lossy(&st.stderr));
    out
}

fn served_by(path: &Path) -> (String, String) {
    let reg = registry();
    let src = ModelSource::open(path, &reg).expect("open");
    let p = reg.for_source(&src).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (src.arch().to_string(), p.name.clone())
}

#[test]
fn llama_gguf_files_are_owned_by_their_metadata() {
    // An ordinary llama file stays with the LLaMA plugin, also through for_gguf_arch.
    assert_eq!(served_by(&model("SmolLM2-135M-Instruct.Q4_1.gguf")), ("llama".into(), "llama".into()));
    assert_eq!(registry().for_gguf_arch("llama").expect("llama").name, "llama");
    for (variant, key) in [("mixtral", "llama.expert_count"), ("mistral", "llama.attention.sliding_window")] {
        let gguf = convert(variant);
        let reg = registry();
        let src = ModelSource::open(&gguf, &reg).expect("open");
        assert!(src.meta(key).and_then(|v| v.as_u64()).is_some_and(|v| v > 0), "{variant}: conversion lacks {key}");
        drop(src);
        assert_eq!(served_by(&gguf), ("llama".into(), "mistral".into()), "{variant}");
        let _ = std::fs::remove_file(&gguf);
        // The HF directory is served by the plugin whose claim opened it.
        assert_eq!(served_by(&repo().join("tests/fixtures/hf-tiny").join(variant)), ("llama".into(), "mistral".into()));
    }
}

#[test]
fn mixtral_experts_are_stacked_in_gguf_layout() {
    let reg = registry();
    let src = ModelSource::open(&repo().join("tests/fixtures/hf-tiny/mixtral"), &reg).expect("open");
    // config: hidden 64, intermediate 128, 4 local experts; router [n_embd, n_expert].
    assert_eq!(src.tensor_info("blk.0.ffn_gate_exps.weight").map(|t| t.1), Some(vec![64, 128, 4]));
    assert_eq!(src.tensor_info("blk.3.ffn_up_exps.weight").map(|t| t.1), Some(vec![64, 128, 4]));
    assert_eq!(src.tensor_info("blk.0.ffn_down_exps.weight").map(|t| t.1), Some(vec![128, 64, 4]));
    assert_eq!(src.tensor_info("blk.0.ffn_gate_inp.weight").map(|t| t.1), Some(vec![64, 4]));
    let w = src.weight("blk.0.ffn_down_exps.weight").expect("load");
    assert_eq!(w.dims, vec![128, 64, 4]);
    // Expert 2 is the third contiguous slice, equal to the HF tensor of expert 2.
    let all = w.to_f32().expect("f32");
    let hf = src.hf().expect("hf dir").tensor_f32("model.layers.0.block_sparse_moe.experts.2.w2.weight").expect("expert 2");
    assert_eq!(&all[2 * 128 * 64..3 * 128 * 64], &hf[..]);
}
