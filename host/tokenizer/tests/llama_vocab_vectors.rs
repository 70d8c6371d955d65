//! llama.cpp's tokenizer test vectors: every `.cache/llama.cpp/models/ggml-vocab-*.gguf` that has
//! `.gguf.inp` / `.gguf.out` files. The inputs are separated by "\n__ggml_vocab_test__\n", the
//! outputs are one line of space-separated ids per input, produced by llama.cpp's
//! `tests/test-tokenizer-0` (which tokenizes with add_special = false, parse_special = false).
//! Expected ids come from llama.cpp; our tokenizer must reproduce them exactly, and the GGUF is
//! read through rocmforge-model's reader.

mod common;

use std::fs;

fn cases(name: &str) -> Vec<(String, Vec<u32>)> {
    let base = format!(".cache/llama.cpp/models/ggml-vocab-{name}.gguf");
    let inp = fs::read_to_string(common::data(&format!("{base}.inp"))).expect("read .inp");
    let out = fs::read_to_string(common::data(&format!("{base}.out"))).expect("read .out");
    let sep = "\n__ggml_vocab_test__\n";
    let mut inputs = Vec::new();
    let mut pos = 0;
    while pos < inp.len() {
        match inp[pos..].find(sep) {
            Some(i) => {
                inputs.push(inp[pos..pos + i].to_string());
                pos += i + sep.len();
            }
            None => {
                inputs.push(inp[pos..].to_string());
                break;
            }
        }
    }
    let outputs: Vec<Vec<u32>> = out.lines().map(|l| l.split_whitespace().map(|t| t.parse().expect("id")).collect()).collect();
    assert_eq!(inputs.len(), outputs.len(), "{name}: .inp and .out disagree on the number of tests");
    inputs.into_iter().zip(outputs).collect()
}

fn check(name: &str) {
    let tok = common::load_gguf(&format!(".cache/llama.cpp/models/ggml-vocab-{name}.gguf"));
    let mut failures = Vec::new();
    let all = cases(name);
    for (text, want) in &all {
        let got = tok.encode(text, false, false).expect("encode");
        if &got != want {
            failures.push(format!("  {text:?}\n    want {want:?}\n    got  {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{name} ({}): {} of {} cases differ:\n{}", tok.kind(), failures.len(), all.len(), failures.join("\n"));
}

macro_rules! vocab_tests {
    ($($fn_name:ident => $name:literal,)*) => {
        $( #[test] fn $fn_name() { check($name); } )*
    };
}

vocab_tests! {
    bert_bge => "bert-bge",
    command_r => "command-r",
    deepseek_coder => "deepseek-coder",
    deepseek_llm => "deepseek-llm",
    falcon => "falcon",
    gemma_4 => "gemma-4",
    gpt_2 => "gpt-2",
    llama_bpe => "llama-bpe",
    llama_spm => "llama-spm",
    mpt => "mpt",
    phi_3 => "phi-3",
    qwen2 => "qwen2",
    qwen35 => "qwen35",
    refact => "refact",
    starcoder => "starcoder",
}

/// Every vocab file with test vectors is covered above (a new upstream file must be added).
#[test]
fn all_vector_files_are_covered() {
    let covered = [
        "bert-bge",
        "command-r",
        "deepseek-coder",
        "deepseek-llm",
        "falcon",
        "gemma-4",
        "gpt-2",
        "llama-bpe",
        "llama-spm",
        "mpt",
        "phi-3",
        "qwen2",
        "qwen35",
        "refact",
        "starcoder",
    ];
    let dir = common::data(".cache/llama.cpp/models");
    for e in fs::read_dir(dir).expect("read dir") {
        let name = e.expect("entry").file_name().to_string_lossy().to_string();
        if let Some(stem) = name.strip_prefix("ggml-vocab-").and_then(|s| s.strip_suffix(".gguf.out")) {
            assert!(covered.contains(&stem), "vocab test file {name} has no test");
        }
    }
}
