//! `/api/create` from uploaded blobs (Ollama's `files` and `adapters`) through the real server:
//! a Hugging Face model's files plus a PEFT LoRA adapter, uploaded with `POST /api/blobs/:digest`
//! as the `ollama` CLI does, become a model whose weights and converted adapter give PEFT's
//! logits (`tests/fixtures/lora-tiny`, see `tests/lora.rs`) and that the server then runs with
//! the adapter merged; a GGUF model with llama.cpp's GGUF adapter is stored as it is; and every
//! malformed request is a 400 naming the problem, leaving no model and no temporary files.

mod common;
mod server_util;

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value as Json};
use server_util::Server;
use sha2::Digest;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Upload a file as a blob; returns its digest.
fn upload(s: &Server, path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let d = format!("sha256:{:x}", sha2::Sha256::digest(&bytes));
    let (st, _, body) = s.post_raw(&format!("/api/blobs/{d}"), &bytes);
    assert!(st == 201 || st == 200, "upload {}: {st} {body}", path.display());
    d
}

fn files(s: &Server, dir: &Path, names: &[&str]) -> Map<String, Json> {
    names.iter().map(|n| (n.to_string(), json!(upload(s, &dir.join(n))))).collect()
}

fn create(s: &Server, body: Json) -> (u16, Json) {
    let mut body = body;
    body["stream"] = json!(false);
    s.json("/api/create", &body)
}

/// The manifest layers of a created model in the server's store: (mediaType, digest).
fn layers(s: &Server, model: &str) -> Vec<(String, String)> {
    let p = s.store.path().join("manifests/registry.ollama.ai/library").join(model).join("latest");
    let m: Json = serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["mediaType"].as_str().unwrap().to_string(), l["digest"].as_str().unwrap().to_string()))
        .collect()
}

fn blob(s: &Server, digest: &str) -> PathBuf {
    s.store.path().join("blobs").join(digest.replace(':', "-"))
}

fn layer(ls: &[(String, String)], kind: &str) -> Vec<String> {
    ls.iter().filter(|(m, _)| m == &format!("application/vnd.ollama.image.{kind}")).map(|(_, d)| d.clone()).collect()
}

/// No staging directory or temporary file left in the store's blobs/tmp.
fn assert_no_temporaries(s: &Server) {
    let tmp = s.store.path().join("blobs/tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
}

/// PEFT's logits of the adapted tiny LLaMA against ours for a GGUF model and adapter.
fn rel_err_vs_peft(model: &Path, adapter: &Path) -> f64 {
    use rocmforge_runtime::exec::{Executor, KvConfig, Logits, SeqChunk};
    let dir = repo().join("tests/fixtures/lora-tiny/plain");
    let r: Json = serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    let want: Vec<f32> =
        std::fs::read(dir.join("logits.f32")).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let reg = common::registry();
    let mut src = rocmforge_runtime::ModelSource::open(model, &reg).expect("open the created model");
    src.apply_adapters(&[adapter.to_path_buf()], &reg).expect("the stored adapter applies");
    let graph = rocmforge_runtime::build_graph(reg.for_source(&src).unwrap(), &src).unwrap();
    let mut exec = Executor::new(graph, &src, KvConfig { block_size: 16, n_blocks: 4 }).unwrap();
    let (mut num, mut den, mut off) = (0f64, 0f64, 0);
    for seq in r["sequences"].as_array().unwrap() {
        let toks: Vec<u32> = seq.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        let c = SeqChunk { tokens: &toks, pos_start: 0, block_table: &[0, 1, 2, 3], group_tables: &[], logits: Logits::All };
        let got = exec.forward(std::slice::from_ref(&c)).unwrap().to_vec();
        for (a, b) in got.iter().zip(&want[off..]) {
            num += (*a as f64 - *b as f64).powi(2);
            den += (*b as f64).powi(2);
        }
        off += got.len();
    }
    (num / den).sqrt()
}

/// [T-CREATE-04] A Hugging Face model and a PEFT adapter, uploaded.
#[test]
fn hf_files_with_a_peft_adapter() {
    let s = Server::start(&[]);
    let hf = repo().join("tests/fixtures/tiny-llama-hf");
    let model_files = files(&s, &hf, &["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
    let adapter_files = files(&s, &repo().join("tests/fixtures/lora-tiny/plain"), &["adapter_config.json", "adapter_model.safetensors"]);
    let (st, _, body) =
        s.post("/api/create", &json!({"model": "lora-tiny", "files": model_files, "adapters": adapter_files, "quantize": "F32"}));
    assert_eq!(st, 200, "{body}");
    let statuses: Vec<String> = server_util::ndjson_lines(&body).iter().map(|l| l["status"].as_str().unwrap_or("").to_string()).collect();
    for want in ["converting adapter", "converting model", "writing manifest", "success"] {
        assert!(statuses.iter().any(|x| x == want), "no {want:?} in {statuses:?}");
    }
    assert!(!body.contains("\"error\""), "{body}");
    let ls = layers(&s, "lora-tiny");
    let (model, adapters) = (layer(&ls, "model"), layer(&ls, "adapter"));
    assert_eq!((model.len(), adapters.len()), (1, 1), "{ls:?}");
    // The stored model and converted adapter are PEFT's adapted model.
    let e = rel_err_vs_peft(&blob(&s, &model[0]), &blob(&s, &adapters[0]));
    eprintln!("created model + converted adapter: rel. error vs PEFT {e:.2e}");
    assert!(e < 5e-3, "rel. error {e:.2e}");
    assert_no_temporaries(&s);

    // The server runs it with the adapter merged: its greedy next token is PEFT's argmax
    // (token-array prompts on llama-server's route go in as they are).
    let r: Json = serde_json::from_slice(&std::fs::read(repo().join("tests/fixtures/lora-tiny/plain/reference.json")).unwrap()).unwrap();
    let want: Vec<f32> = std::fs::read(repo().join("tests/fixtures/lora-tiny/plain/logits.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let n_vocab = r["shape"]["logits"][2].as_u64().unwrap() as usize;
    let n_tok = r["shape"]["logits"][1].as_u64().unwrap() as usize;
    let mut checked = 0;
    for (i, seq) in r["sequences"].as_array().unwrap().iter().enumerate() {
        let last = &want[(i * n_tok + n_tok - 1) * n_vocab..(i * n_tok + n_tok) * n_vocab];
        let mut order: Vec<usize> = (0..n_vocab).collect();
        order.sort_by(|a, b| last[*b].total_cmp(&last[*a]));
        if last[order[0]] - last[order[1]] < 0.05 {
            continue; // a near tie: f16 KV rounding may pick either
        }
        let (st, v) =
            s.json("/completion", &json!({"model": "lora-tiny", "prompt": seq, "n_predict": 1, "temperature": 0, "return_tokens": true}));
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["tokens"][0].as_u64(), Some(order[0] as u64), "sequence {i}: {v}");
        checked += 1;
    }
    assert!(checked > 0, "every reference sequence ends in a near tie: nothing was checked");
}

/// [T-CREATE-05] A GGUF model and llama.cpp's GGUF adapter, uploaded: stored as they are.
#[test]
fn gguf_files_with_a_gguf_adapter() {
    let s = Server::start(&[]);
    let model = upload(&s, &repo().join("tests/fixtures/tiny-llama.f32.gguf"));
    let adapter = upload(&s, &repo().join("tests/fixtures/lora-tiny/plain/adapter.gguf"));
    let (st, v) = create(&s, json!({"model": "lora-gguf", "files": {"tiny.gguf": model}, "adapters": {"adapter.gguf": adapter}}));
    assert_eq!(st, 200, "{v}");
    let ls = layers(&s, "lora-gguf");
    assert_eq!(layer(&ls, "model"), vec![model.clone()]);
    assert_eq!(layer(&ls, "adapter"), vec![adapter.clone()]);
    let e = rel_err_vs_peft(&blob(&s, &model), &blob(&s, &adapter));
    assert!(e < 5e-3, "rel. error {e:.2e}");
    // A model made from it keeps the adapter; `adapters` replaces it.
    let (st, v) = create(&s, json!({"model": "lora-gguf-2", "from": "lora-gguf", "system": "hi"}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(layer(&layers(&s, "lora-gguf-2"), "adapter"), vec![adapter.clone()]);
    // The adapter as the model: refused.
    let (st, v) = create(&s, json!({"model": "bad", "files": {"adapter.gguf": adapter}}));
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("LoRA adapter"), "{v}");
    assert_no_temporaries(&s);
}

/// [T-CREATE-06] Every malformed create is a 400 naming the problem; nothing is created.
#[test]
fn bad_uploads_are_400s() {
    let s = Server::start(&[]);
    let hf = repo().join("tests/fixtures/tiny-llama-hf");
    let weights = upload(&s, &hf.join("model.safetensors"));
    let tok = upload(&s, &hf.join("tokenizer.json"));
    let config = upload(&s, &hf.join("config.json"));
    let absent = format!("sha256:{}", "ab".repeat(32));
    let peft_cfg = upload(&s, &repo().join("tests/fixtures/lora-tiny/plain/adapter_config.json"));
    let gguf_adapter = upload(&s, &repo().join("tests/fixtures/lora-tiny/plain/adapter.gguf"));
    let cases = [
        (json!({"files": {"model.safetensors": weights, "tokenizer.json": tok}}), "no config.json"),
        (json!({"files": {"config.json": config, "tokenizer.json": tok}}), "no *.safetensors"),
        (json!({"files": {"config.json": config, "model.safetensors": weights}}), "no tokenizer.json"),
        (json!({"files": {"../config.json": config, "model.safetensors": weights, "tokenizer.json": tok}}), "not allowed"),
        (json!({"files": {"/etc/config.json": config}}), "not allowed"),
        (json!({"files": {"m.gguf": absent}}), "not found: upload it"),
        (json!({"files": {"m.gguf": "sha256:xyz"}}), "invalid digest"),
        (json!({"files": {"m.gguf": 5}}), "digest string"),
        (json!({"from": "smollm2", "adapters": {"adapter_config.json": peft_cfg}}), "no adapter_model.safetensors"),
        // An adapter of another model: the tensor is named.
        (json!({"from": "smollm2", "adapters": {"lora.gguf": gguf_adapter}}), "wrong base model"),
    ];
    for (mut body, want) in cases {
        body["model"] = json!("bad");
        let (st, v) = create(&s, body.clone());
        assert_eq!(st, 400, "{body} -> {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(want), "{body}: {msg:?} does not say {want:?}");
        assert!(!msg.contains("blobs/tmp"), "the error leaks a staging path: {msg}");
    }
    let tags = s.get_json("/api/tags");
    assert!(!tags["models"].as_array().unwrap().iter().any(|m| m["name"].as_str().unwrap_or("").starts_with("bad")), "{tags}");
    assert_no_temporaries(&s);
}

/// [T-CREATE-07] `rocmforge create -f Modelfile` with `ADAPTER` lines: the CLI uploads the GGUF
/// adapter file and the PEFT adapter directory as blobs and sends them as `adapters`.
#[test]
fn cli_modelfile_adapter_lines() {
    let s = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let fixtures = repo().join("tests/fixtures");
    for (model, adapter) in [("cli-gguf", fixtures.join("lora-tiny/plain/adapter.gguf")), ("cli-peft", fixtures.join("lora-tiny/plain"))] {
        let mf = dir.path().join(format!("{model}.Modelfile"));
        std::fs::write(&mf, format!("FROM {}\nADAPTER {}\n", fixtures.join("tiny-llama.f32.gguf").display(), adapter.display())).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rocmforge"))
            .args(["create", model, "-f"])
            .arg(&mf)
            .env("OLLAMA_HOST", &s.url)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{model}: {stderr}");
        assert!(stderr.contains("success"), "{model}: {stderr}");
        let ls = layers(&s, model);
        let adapters = layer(&ls, "adapter");
        assert_eq!(adapters.len(), 1, "{ls:?}");
        let e = rel_err_vs_peft(&blob(&s, &layer(&ls, "model")[0]), &blob(&s, &adapters[0]));
        assert!(e < 5e-3, "{model}: rel. error {e:.2e}");
    }
    // A directory that is not a PEFT adapter: the CLI says what is missing.
    let mf = dir.path().join("bad.Modelfile");
    std::fs::write(&mf, format!("FROM {}\nADAPTER {}\n", fixtures.join("tiny-llama.f32.gguf").display(), dir.path().display())).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rocmforge"))
        .args(["create", "bad", "-f"])
        .arg(&mf)
        .env("OLLAMA_HOST", &s.url)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("adapter_config.json"), "{}", String::from_utf8_lossy(&out.stderr));
}
