//! `rocmforge show` on real models prints what `ollama show` prints. Expected values come from
//! gguf-py / safetensors (`scripts/fixtures/show_refs.py`, command inside the fixture).

mod common;

use std::process::Command;

use common::{model, repo};

fn show(path: &std::path::Path, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rocmforge")).arg("show").arg(path).args(extra).output().expect("run rocmforge");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The value printed on the `    key   value` line.
fn value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.trim_start().strip_prefix(key).filter(|r| r.starts_with("  ")).map(str::trim))
}

#[test]
fn show_matches_reference_fields() {
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(repo().join("tests/fixtures/show_refs.json")).unwrap()).unwrap();
    for (name, want) in j["models"].as_object().unwrap() {
        let (ok, out, err) = show(&model(name), &[]);
        assert!(ok, "show {name} failed: {err}");
        for (k, v) in want.as_object().unwrap() {
            let key = if k == "tensors" { "count" } else { k.as_str() };
            assert_eq!(value(&out, key), v.as_str(), "{name}: field '{k}' in\n{out}");
        }
    }
}

#[test]
fn show_template_and_tensor_list() {
    let (ok, out, _) = show(&model("SmolLM2-135M-Instruct.Q4_1.gguf"), &["--template"]);
    assert!(ok);
    assert!(out.contains("<|im_start|>"), "SmolLM2's template is ChatML-style: {out}");
    // Gemma-3 270M (base) has no template: the ChatML fallback is shown and said so.
    let (ok, out, _) = show(&model("gemma-3-270m-q4_k_m.gguf"), &["--template"]);
    assert!(ok);
    assert!(out.starts_with("(no chat template"), "{out}");
    let (ok, out, _) = show(&model("SmolLM2-135M-Instruct.Q4_1.gguf"), &["--verbose"]);
    assert!(ok);
    assert!(out.lines().any(|l| l.contains("blk.29.ffn_down.weight") && l.contains("Q4_1")), "{out}");
}

#[test]
fn show_bad_input_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("rf-show-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let (ok, _, err) = show(&bad, &[]);
    assert!(!ok);
    assert!(err.contains("bad.gguf") && err.starts_with("Error:"), "{err}");
    let (ok, _, err) = show(&dir.join("missing.gguf"), &[]);
    assert!(!ok);
    assert!(err.contains("missing.gguf"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
