//! The safetensors fuzz seed corpus (`fuzz/corpus/safetensors_parse/`): small files written by
//! the official `safetensors` crate (an independent writer) plus the header of the real MiniLM
//! file (without its data). Checks the committed seeds match and parse as expected.
//! Regenerate with: `ROCMFORGE_WRITE_FUZZ_SEEDS=1 cargo test -p rocmforge-model --test hf_fuzz_seeds`

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rocmforge_model::hf::parse_safetensors_header;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn file(tensors: &[(&str, Dtype, Vec<usize>, usize)], meta: bool) -> Vec<u8> {
    let data: Vec<Vec<u8>> = tensors.iter().map(|t| (0..t.3).map(|i| (i * 13 + 1) as u8).collect()).collect();
    let views: Vec<(String, TensorView)> =
        tensors.iter().zip(&data).map(|(t, d)| (t.0.to_string(), TensorView::new(t.1, t.2.clone(), d).unwrap())).collect();
    let info = meta.then(|| HashMap::from([("format".to_string(), "pt".to_string())]));
    safetensors::serialize(views, info).unwrap()
}

fn seeds() -> Vec<(&'static str, Vec<u8>, bool)> {
    let minilm = root().join(".cache/models/all-MiniLM-L6-v2/model.safetensors");
    assert!(minilm.exists(), "{} missing: run scripts/fetch-test-data.sh", minilm.display());
    let bytes = std::fs::read(&minilm).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    vec![
        (
            "mixed.safetensors",
            file(
                &[
                    ("w", Dtype::F32, vec![2, 3], 24),
                    ("ids", Dtype::I64, vec![4], 32),
                    ("h", Dtype::BF16, vec![3], 6),
                    ("f", Dtype::F16, vec![1, 2], 4),
                ],
                true,
            ),
            true,
        ),
        (
            "fp8_u8_bool.safetensors",
            file(&[("q", Dtype::F8_E4M3, vec![4], 4), ("b", Dtype::BOOL, vec![2], 2), ("u", Dtype::U8, vec![0], 0)], false),
            true,
        ),
        ("empty.safetensors", file(&[], false), true),
        ("minilm_header_only.safetensors", bytes[..8 + n].to_vec(), false),
    ]
}

#[test]
fn safetensors_fuzz_seeds_are_current_and_valid() {
    let dir = root().join("fuzz/corpus/safetensors_parse");
    let write_mode = std::env::var_os("ROCMFORGE_WRITE_FUZZ_SEEDS").is_some();
    for (name, bytes, valid) in seeds() {
        let parsed = parse_safetensors_header(Path::new(name), &bytes);
        assert_eq!(parsed.is_ok(), valid, "{name}: {:?}", parsed.err());
        let p = dir.join(name);
        if write_mode {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&p, &bytes).unwrap();
        }
        let on_disk = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (regenerate, see header)", p.display()));
        assert!(on_disk == bytes, "{} is stale: regenerate (see the header of this test)", p.display());
    }
}
