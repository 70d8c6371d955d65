//! The quantizer's per-tensor type choices against llama.cpp's: for the real SmolLM2-135M
//! (llama, 30 layers, 576-wide rows: k-quant fallbacks, tied embeddings) and Gemma-3-270M
//! (gemma3, 18 layers, 640-wide rows, GQA 4) and each file type in the fixture, the output
//! tensor order and every tensor's type equal what llama.cpp's quantizer wrote.
//! Fixture: `tests/fixtures/quantize_types.json`, produced by
//! `/work/venv/bin/python scripts/fixtures/quantize_reference.py types`.

use std::path::PathBuf;

use rocmforge_model::gguf::GgufFile;
use rocmforge_model::quantize::{plan_model, FileType, QuantizeOptions};
use serde_json::Value;

fn repo_path(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel);
    assert!(p.exists(), "{} is missing: run scripts/fetch-test-data.sh", p.display());
    p
}

fn fixture() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quantize_types.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

fn check_model(key: &str) {
    let fx = fixture();
    let model = &fx["models"][key];
    let file = GgufFile::open(repo_path(model["file"].as_str().unwrap())).unwrap();
    let want_names: Vec<&str> = model["tensors"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let ftypes = model["ftypes"].as_object().unwrap();
    assert!(ftypes.len() >= 7, "fixture lists {} file types", ftypes.len());
    let mut failures = Vec::new();
    for (ft_name, want) in ftypes {
        let ftype = FileType::from_name(ft_name).unwrap();
        assert_eq!(u64::from(ftype.id()), want["file_type"].as_u64().unwrap(), "{ft_name}: general.file_type id");
        let mut opts = QuantizeOptions::new(ftype);
        opts.allow_requantize = true;
        let plan = plan_model(&file, &opts).unwrap();
        let got_names: Vec<&str> = plan.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(got_names, want_names, "{key} {ft_name}: tensor order");
        let want_types = want["types"].as_array().unwrap();
        let mut matching = 0;
        for (p, w) in plan.iter().zip(want_types) {
            let w = w.as_str().unwrap();
            if p.to.name() == w {
                matching += 1;
            } else {
                failures.push(format!("{key} {ft_name} {}: ours {} llama.cpp {w}", p.name, p.to));
            }
        }
        eprintln!("{key} {ft_name}: {matching}/{} tensor types match llama.cpp", plan.len());
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn smollm2_types_match_llama_cpp() {
    check_model("smollm2");
}

#[test]
fn gemma3_types_match_llama_cpp() {
    check_model("gemma3");
}
