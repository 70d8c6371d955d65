//! The `rocmforge generate` / `run` commands end to end, through the real binary and plugins.
//! Expected tokens are llama.cpp's (tests/fixtures/smollm2-q4_1.greedy.json, see its command).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{model, repo};
use rocmforge_model::gguf::{GgufFile, GgufValue, GgufWriter};

fn rocmforge(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rocmforge"));
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = c.spawn().expect("spawn rocmforge");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn smol() -> String {
    model("SmolLM2-135M-Instruct.Q4_1.gguf").display().to_string()
}

/// `generate --temperature 0` prints exactly the text of llama.cpp's greedy tokens.
#[test]
fn generate_greedy_prints_llama_cpp_continuation() {
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo().join("tests/fixtures/smollm2-q4_1.greedy.json")).unwrap()).unwrap();
    let case = &j["cases"][0];
    let prompt = case["prompt"].as_str().unwrap();
    let want_ids: Vec<u32> = case["generated"].as_array().unwrap()[..24].iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let tok = rocmforge_tokenizer::Tokenizer::from_gguf(&GgufFile::open(smol()).unwrap()).unwrap();
    let prompt_ids: Vec<u32> = case["prompt_tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(tok.encode(prompt, tok.add_bos(), false).unwrap(), prompt_ids, "prompt tokenization differs from llama.cpp");
    let want = tok.decode(&want_ids, false);
    let (ok, out, err) = rocmforge(&["generate", &smol(), prompt, "--temperature", "0", "-n", "24", "--ignore-eos"], None);
    assert!(ok, "{err}");
    assert_eq!(out, want);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let args = ["generate", &smol(), "Once upon a time", "--temperature", "0.9", "-n", "16", "--seed", "1234", "--ignore-eos"];
    let (ok1, a, e1) = rocmforge(&args, None);
    let (ok2, b, e2) = rocmforge(&args, None);
    assert!(ok1 && ok2, "{e1}{e2}");
    assert_eq!(a, b);
    assert!(!a.is_empty());
}

/// `run` with a prompt answers once through the model's chat template (the same text llama.cpp
/// continues greedily: tests/fixtures/smollm2-chat.json) and exits; piped stdin is the prompt.
#[test]
fn run_one_shot_matches_llama_cpp_chat_and_piped_stdin() {
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(repo().join("tests/fixtures/smollm2-chat.json")).unwrap()).unwrap();
    let n = j["n_predict"].as_u64().unwrap().to_string();
    for case in j["cases"].as_array().unwrap() {
        let q = case["question"].as_str().unwrap();
        let want = format!("{}\n", case["text"].as_str().unwrap());
        let args = ["run", &smol(), q, "--temperature", "0", "--repeat-penalty", "1", "-n", &n];
        let (ok, out, err) = rocmforge(&args, None);
        assert!(ok, "{err}");
        assert_eq!(out, want, "question {q:?}");
        let (ok, out2, err) =
            rocmforge(&["run", &smol(), "--temperature", "0", "--repeat-penalty", "1", "-n", &n], Some(&format!("{q}\n")));
        assert!(ok, "{err}");
        assert_eq!(out2, want, "piped question {q:?}");
    }
}

#[test]
fn prompt_longer_than_context_names_both_numbers() {
    let long = "word ".repeat(100);
    let (ok, _, err) = rocmforge(&["generate", &smol(), &long, "-c", "32", "-n", "4"], None);
    assert!(!ok);
    // The count is the tokenizer's (100 words and BOS/spaces as the model's tokenizer says).
    let n: usize = err.split("prompt of ").nth(1).and_then(|r| r.split(' ').next()).and_then(|x| x.parse().ok()).unwrap_or(0);
    assert!(n >= 100 && err.contains(&format!("prompt of {n} tokens does not fit the context of 32 tokens")), "{err}");
}

/// A GGUF whose architecture no plugin serves, and one missing a tensor.
#[test]
fn unknown_architecture_and_missing_tensor_are_named() {
    let src = GgufFile::open(smol()).unwrap();
    let dir = std::env::temp_dir().join(format!("rf-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Same tensors, unknown architecture name.
    let mut w = GgufWriter::from_file(&src).unwrap();
    w.set("general.architecture", GgufValue::Str("frobnicator".into()));
    let p1 = dir.join("frob.gguf");
    w.write_file(&p1, |i| Ok(src.tensor_data(&src.tensors()[i]))).unwrap();
    let (ok, _, err) = rocmforge(&["generate", p1.to_str().unwrap(), "hi", "-n", "1"], None);
    assert!(!ok);
    assert!(err.contains("no plugin serves architecture 'frobnicator'") && err.contains("llama"), "{err}");
    // Drop one layer tensor.
    let mut w = GgufWriter::new();
    w.copy_metadata_from(&src);
    let kept: Vec<_> = src.tensors().iter().filter(|t| t.name != "blk.3.ffn_up.weight").collect();
    for t in &kept {
        w.add_tensor_info(t.name.clone(), t.dims.clone(), t.ty).unwrap();
    }
    let p2 = dir.join("missing.gguf");
    w.write_file(&p2, |i| Ok(src.tensor_data(kept[i]))).unwrap();
    let (ok, _, err) = rocmforge(&["generate", p2.to_str().unwrap(), "hi", "-n", "1"], None);
    assert!(!ok);
    assert!(err.contains("missing tensor 'blk.3.ffn_up.weight' required by architecture 'llama'"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn generate_refuses_an_embedding_model() {
    let m = model("all-MiniLM-L6-v2-f16.gguf").display().to_string();
    let (ok, _, err) = rocmforge(&["generate", &m, "hello", "-n", "4"], None);
    assert!(!ok);
    assert!(err.contains("is an embedding model") && err.contains("rocmforge embed"), "{err}");
}

/// `--stop TEXT` ends the output right before the first occurrence of TEXT: the stopped output
/// equals llama.cpp's greedy continuation cut at that point (the stop string is taken from the
/// middle of llama.cpp's text, so it spans token boundaries the way real stops do).
#[test]
fn stop_sequence_cuts_llama_cpp_continuation() {
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo().join("tests/fixtures/smollm2-q4_1.greedy.json")).unwrap()).unwrap();
    let case = &j["cases"][0];
    let prompt = case["prompt"].as_str().unwrap();
    let ids: Vec<u32> = case["generated"].as_array().unwrap()[..32].iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let tok = rocmforge_tokenizer::Tokenizer::from_gguf(&GgufFile::open(smol()).unwrap()).unwrap();
    let full = tok.decode(&ids, false);
    // A stop string of 4 characters starting at the middle character of llama.cpp's text.
    let chars: Vec<(usize, char)> = full.char_indices().collect();
    assert!(chars.len() > 12, "continuation too short: {full:?}");
    let at = chars[chars.len() / 2].0;
    let stop: String = full[at..].chars().take(4).collect();
    let want = &full[..full.find(&stop).unwrap()];
    let (ok, out, err) = rocmforge(&["generate", &smol(), prompt, "--temperature", "0", "-n", "32", "--ignore-eos", "--stop", &stop], None);
    assert!(ok, "{err}");
    assert_eq!(out, want, "stop {stop:?}");
}
