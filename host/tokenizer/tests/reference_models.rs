//! Our tokenizers against llama.cpp and Hugging Face on real model vocabularies.
//!
//! Expected values: `tests/fixtures/tok_refs.json`, produced by `scripts/fixtures/tok_refs.py`
//! (llama.cpp through llama-cpp-python 0.3.36 with vocab-only loads; HF `tokenizers` 0.22.2 for
//! the all-MiniLM-L6-v2 directory). Regenerate with
//! `/work/venv/bin/python scripts/fixtures/tok_refs.py` from the repository root.
//! GGUF files are read through rocmforge-model's reader.

mod common;

use rocmforge_tokenizer::Tokenizer;
use serde_json::Value;

fn fixture() -> Value {
    let p = common::repo_root().join("host/tokenizer/tests/fixtures/tok_refs.json");
    serde_json::from_str(&std::fs::read_to_string(&p).expect("read fixture")).expect("parse fixture")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn opt_id(v: &Value) -> Option<u32> {
    let i = v.as_i64().expect("int");
    (i >= 0).then_some(i as u32)
}

/// Streams `ids` one at a time; checks that nothing but complete characters is emitted and that
/// the pieces concatenate to `decode`.
fn check_stream(tok: &Tokenizer, ids: &[u32], skip_special: bool, ctx: &str) {
    let want = tok.decode(ids, skip_special);
    let mut s = tok.stream(skip_special);
    let mut got = String::new();
    for &id in ids {
        let piece = s.push(id);
        if !want.contains('\u{FFFD}') {
            assert!(!piece.contains('\u{FFFD}'), "{ctx}: stream emitted a broken character for id {id}");
        }
        got.push_str(&piece);
    }
    got.push_str(&s.flush());
    assert_eq!(got, want, "{ctx}: stream (skip_special={skip_special}) != decode");
}

fn check_model(name: &str) {
    let fx = fixture();
    let m = &fx["models"][name];
    let tok = common::load_gguf(m["path"].as_str().expect("path"));
    assert_eq!(tok.n_vocab() as u64, m["n_vocab"].as_u64().expect("n_vocab"), "{name}: n_vocab");
    assert_eq!(tok.bos(), opt_id(&m["bos"]), "{name}: bos");
    assert_eq!(tok.eos(), opt_id(&m["eos"]), "{name}: eos");
    assert_eq!(tok.add_bos(), m["add_bos"].as_bool().expect("add_bos"), "{name}: add_bos");
    assert_eq!(tok.add_eos(), m["add_eos"].as_bool().expect("add_eos"), "{name}: add_eos");
    assert_eq!(tok.eog_ids(), ids(&m["eog"]), "{name}: end-of-generation set");
    for id in ids(&m["eog"]) {
        assert!(tok.is_eog(id));
    }
    // With several EOT candidates llama.cpp's pick depends on hash-map order; SmolLM2 is such a
    // case (<|endoftext|> vs <|im_end|>), elsewhere the pick is stable.
    if name != "smollm2" {
        assert_eq!(tok.eot(), opt_id(&m["eot"]), "{name}: eot");
    }
    let mut failures = Vec::new();
    for case in m["cases"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text");
        for (key, add, parse) in
            [("add0_parse0", false, false), ("add0_parse1", false, true), ("add1_parse0", true, false), ("add1_parse1", true, true)]
        {
            let want = ids(&case["ids"][key]);
            let got = tok.encode(text, add, parse).expect("encode");
            if got != want {
                failures.push(format!("{text:?} {key}:\n    want {want:?}\n    got  {got:?}"));
            }
        }
        let full = ids(&case["ids"]["add1_parse1"]);
        let skip = String::from_utf8_lossy(&unhex(case["detok_skip_hex"].as_str().expect("hex"))).into_owned();
        let render = String::from_utf8_lossy(&unhex(case["detok_render_hex"].as_str().expect("hex"))).into_owned();
        if tok.decode(&full, true) != skip {
            failures.push(format!("{text:?} decode(skip): want {skip:?} got {:?}", tok.decode(&full, true)));
        }
        if tok.decode(&full, false) != render {
            failures.push(format!("{text:?} decode(render): want {render:?} got {:?}", tok.decode(&full, false)));
        }
        for (id, p) in full.iter().zip(case["pieces_hex"].as_array().expect("pieces")) {
            let want = unhex(p.as_str().expect("hex"));
            if tok.token_to_piece(*id) != want {
                failures.push(format!("piece of {id}: want {want:?} got {:?}", tok.token_to_piece(*id)));
            }
        }
        check_stream(&tok, &full, true, &format!("{name} {text:?}"));
        check_stream(&tok, &full, false, &format!("{name} {text:?}"));
    }
    assert!(failures.is_empty(), "{name} ({}):\n{}", tok.kind(), failures.join("\n"));
}

#[test]
fn smollm2_gpt2_smollm() {
    check_model("smollm2");
    assert_eq!(common::load_gguf(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf").kind(), "gpt2 (smollm)");
}

#[test]
fn gemma3_spm() {
    check_model("gemma3");
    assert_eq!(common::load_gguf(".cache/models/gemma-3-270m-q4_k_m.gguf").kind(), "llama (SPM)");
}

#[test]
fn minilm_gguf_wordpiece() {
    check_model("minilm");
}

#[test]
fn llama_spm_vocab() {
    check_model("llama-spm");
}

#[test]
fn qwen2_vocab() {
    check_model("qwen2");
}

#[test]
fn llama_bpe_vocab() {
    check_model("llama-bpe");
}

#[test]
fn phi3_vocab_rstrip() {
    check_model("phi-3");
}

#[test]
fn minilm_tokenizer_json_matches_hf_and_gguf() {
    let fx = fixture();
    let hf = &fx["hf"]["minilm"];
    let dir = common::data(hf["path"].as_str().expect("path"));
    let tok = Tokenizer::from_hf_dir(&dir).expect("load tokenizer.json");
    assert_eq!(tok.kind(), "tokenizer.json (WordPiece)");
    let gguf = common::load_gguf(".cache/models/all-MiniLM-L6-v2-f16.gguf");
    assert_eq!(tok.encode("Hello, world!", true, true).expect("encode"), [101, 7592, 1010, 2088, 999, 102]);
    for case in hf["cases"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text");
        let want = ids(&case["ids_special"]);
        assert_eq!(tok.encode(text, true, true).expect("encode"), want, "{text:?} (HF, add_special)");
        assert_eq!(tok.encode(text, false, true).expect("encode"), ids(&case["ids_plain"]), "{text:?} (HF)");
        assert_eq!(tok.decode(&want, true), case["decode_skip"].as_str().expect("decode"), "{text:?} decode");
        let from_gguf = gguf.encode(text, true, true).expect("encode");
        if text.chars().any(|c| ('\u{AC00}'..='\u{D7A3}').contains(&c)) {
            // llama.cpp's WPM keeps only the first codepoint of each NFD decomposition, so a
            // Hangul syllable loses its vowel/final jamo; HF BERT keeps them. We follow llama.cpp
            // (checked in minilm_gguf_wordpiece) and pin the known difference here.
            assert_ne!(from_gguf, want, "{text:?}: expected llama.cpp's Hangul NFD deviation");
        } else {
            assert_eq!(from_gguf, want, "{text:?}: GGUF conversion != tokenizer.json");
        }
        check_stream(&tok, &want, true, &format!("minilm HF {text:?}"));
    }
}

#[test]
fn stream_holds_back_split_characters() {
    // Llama 2's SPM vocab has no 🦙 token: it is four <0xXX> byte-fallback tokens.
    let tok = common::load_gguf(".cache/llama.cpp/models/ggml-vocab-llama-spm.gguf");
    let ids = tok.encode("a🦙b", false, false).expect("encode");
    let llama: Vec<u32> = "🦙".bytes().map(|b| tok.token_id(&format!("<0x{b:02X}>")).expect("byte token")).collect();
    assert!(ids.windows(4).any(|w| w == llama.as_slice()), "expected byte fallback, got {ids:?}");
    let mut s = tok.stream(true);
    let pieces: Vec<String> = ids.iter().map(|&id| s.push(id)).collect();
    let tail = s.flush();
    for p in &pieces {
        assert!(p.is_empty() || p.chars().all(|c| c != '\u{FFFD}'), "half a character emitted: {pieces:?}");
    }
    let pos = pieces.iter().position(|p| p.contains('🦙')).expect("llama emitted");
    assert!(pieces[pos - 3..pos].iter().all(String::is_empty), "bytes of 🦙 leaked early: {pieces:?}");
    assert_eq!(pieces.concat() + &tail, tok.decode(&ids, true));
    assert_eq!(pieces.concat() + &tail, "a🦙b");

    // An incomplete character at the end is replaced on flush, not emitted early.
    let mut s = tok.stream(true);
    assert_eq!(s.push(llama[0]), "");
    assert_eq!(s.push(llama[1]), "");
    assert_eq!(s.flush(), "\u{FFFD}");
}

#[test]
fn unknown_pre_tokenizer_is_an_error_naming_it() {
    let f = rocmforge_model::gguf::GgufFile::open(common::data(".cache/llama.cpp/models/ggml-vocab-gpt-2.gguf")).expect("open");
    let mut v = rocmforge_tokenizer::GgufVocab::from_gguf(&f).expect("vocab");
    v.pre = Some("made-up-pre".into());
    let err = Tokenizer::from_gguf_vocab(v).expect_err("must refuse");
    assert_eq!(err.to_string(), "unknown pre-tokenizer 'made-up-pre'");
}
