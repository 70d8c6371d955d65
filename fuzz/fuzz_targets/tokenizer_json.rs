//! Fuzz target: a Hugging Face `tokenizer.json` (the input, written into a scratch model
//! directory) through both ways ROCmForge reads one: `Tokenizer::from_hf_dir` (the `tokenizers`
//! crate) and `hf_tokenizer_gguf_metadata` (our conversion to `tokenizer.ggml.*`), whose
//! metadata must then build a GGUF tokenizer or fail with a typed error. Every tokenizer that
//! loads encodes and decodes a fixed text. For the GGUF-built tokenizer, streamed pieces must
//! concatenate to `decode` exactly; the `tokenizers` path streams with HF's prefix-window method
//! (`DecodeStream`), which is exact only for decoders that act within tokens (a hostile
//! `Strip { start: 2 }` makes it differ, as it does in HF), so there only the absence of panics
//! is checked.
//! Oracle: no panic, no hang (libFuzzer's -timeout), no runaway allocation (-rss_limit_mb).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rocmforge_tokenizer::{hf_tokenizer_gguf_metadata, GgufVocab, Tokenizer};

const TEXT: &str = "Hello world! <s> 1234 ünïcödé\n\t  spaces 你好 <|im_end|> ##ing";

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("rf-fuzz-tokjson-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    })
}

fn exercise(t: &Tokenizer, exact_stream: bool) {
    for (add, parse) in [(true, true), (false, false)] {
        let Ok(ids) = t.encode(TEXT, add, parse) else { continue };
        let ids: Vec<u32> = ids.into_iter().filter(|&i| (i as usize) < t.n_vocab()).collect();
        let whole = t.decode(&ids, false);
        let mut s = t.stream(false);
        let mut streamed: String = ids.iter().map(|&i| s.push(i)).collect();
        streamed.push_str(&s.flush());
        if exact_stream {
            assert_eq!(streamed, whole, "streamed pieces differ from decode");
        }
    }
    std::hint::black_box((t.bos(), t.eos(), t.eog_ids(), t.kind()));
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    std::fs::write(dir.join("tokenizer.json"), data).expect("write tokenizer.json");
    if let Ok(t) = Tokenizer::from_hf_dir(dir) {
        exercise(&t, false);
    }
    if let Ok(md) = hf_tokenizer_gguf_metadata(dir) {
        if let Ok(v) = GgufVocab::from_metadata(&md) {
            if let Ok(t) = Tokenizer::from_gguf_vocab(v) {
                exercise(&t, true);
            }
        }
    }
});
