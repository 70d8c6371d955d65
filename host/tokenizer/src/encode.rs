//! Text → ids for GGUF vocabularies, following llama.cpp's `llama_vocab::impl::tokenize`:
//! 1. special tokens are cut out of the text first (`partition`, llama.cpp's
//!    `tokenizer_st_partition`): CONTROL/UNKNOWN tokens only when `parse_special`,
//!    USER_DEFINED tokens always, longest token first, with lstrip/rstrip of ASCII whitespace;
//! 2. each remaining text fragment goes through the model's algorithm:
//!    - SPM (`llm_tokenizer_spm`): ' ' → U+2581, a space prefix before a fragment that follows
//!      a special token (or starts the text), then score-driven bigram merging over UTF-8
//!      characters with `<0xXX>` byte fallback (not the Unigram Viterbi);
//!    - BPE (`llm_tokenizer_bpe`): pre-tokenizer pieces, then rank-driven merges per piece;
//!    - WPM (`llm_tokenizer_wpm`): BERT-style normalisation, then greedy longest-match over
//!      the phantom-space vocabulary (`▁word`, continuation pieces without `##`).
//!
//! Modelled on llama.cpp `src/llama-vocab.cpp` (algorithms re-implemented, not copied).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::unicode;
use crate::vocab::{Vocab, VocabType, ATTR_CONTROL, ATTR_LSTRIP, ATTR_RSTRIP, ATTR_UNKNOWN};
use crate::TokenizerError;

/// A piece of the input after special-token partitioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// Byte range of the input.
    Text(usize, usize),
    Token(u32),
}

fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

/// Cuts special tokens out of `text` (llama.cpp `tokenizer_st_partition`).
pub(crate) fn partition(vocab: &Vocab, text: &str, parse_special: bool) -> Vec<Fragment> {
    let bytes = text.as_bytes();
    let mut frags = if text.is_empty() { Vec::new() } else { vec![Fragment::Text(0, text.len())] };
    for &id in &vocab.special_cache {
        let attr = vocab.attr(id);
        if !parse_special && attr & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
            continue;
        }
        let needle = vocab.tokens[id as usize].as_str();
        if !frags.iter().any(|f| matches!(f, Fragment::Text(s, l) if text[*s..*s + *l].contains(needle))) {
            continue;
        }
        let mut out = Vec::with_capacity(frags.len() + 2);
        for f in frags {
            let Fragment::Text(mut off, mut len) = f else {
                out.push(f);
                continue;
            };
            loop {
                let Some(rel) = text[off..off + len].find(needle) else {
                    if len > 0 {
                        out.push(Fragment::Text(off, len));
                    }
                    break;
                };
                let m = off + rel;
                if m > off {
                    let mut left_len = m - off;
                    if attr & ATTR_LSTRIP != 0 {
                        while left_len > 0 && is_c_space(bytes[off + left_len - 1]) {
                            left_len -= 1;
                        }
                    }
                    if left_len > 0 {
                        out.push(Fragment::Text(off, left_len));
                    }
                }
                out.push(Fragment::Token(id));
                let mut r_off = m + needle.len();
                let mut r_len = off + len - r_off;
                if attr & ATTR_RSTRIP != 0 {
                    while r_len > 0 && is_c_space(bytes[r_off]) {
                        r_off += 1;
                        r_len -= 1;
                    }
                }
                off = r_off;
                len = r_len;
                if len == 0 {
                    break;
                }
            }
        }
        frags = out;
    }
    frags
}

/// Full tokenization of `text` (llama.cpp `tokenize(raw_text, add_special, parse_special)`).
pub(crate) fn tokenize(vocab: &Vocab, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
    let frags = partition(vocab, text, parse_special);
    let mut out = Vec::new();
    match vocab.ty {
        VocabType::Spm => {
            if add_special && vocab.add_bos {
                out.push(vocab.bos.ok_or(TokenizerError::MissingSpecial { what: "bos" })?);
            }
            let mut prev_special = true;
            for f in frags {
                match f {
                    Fragment::Text(s, l) => {
                        let mut t = String::with_capacity(l + 1);
                        if vocab.add_space_prefix && prev_special {
                            t.push(' ');
                        }
                        t.push_str(&text[s..s + l]);
                        spm_tokenize(vocab, &t.replace(' ', "\u{2581}"), &mut out)?;
                        prev_special = false;
                    }
                    Fragment::Token(id) => {
                        out.push(id);
                        prev_special = true;
                    }
                }
            }
            if add_special && vocab.add_eos {
                out.push(vocab.eos.ok_or(TokenizerError::MissingSpecial { what: "eos" })?);
            }
        }
        VocabType::Bpe => {
            if add_special && vocab.add_bos {
                out.push(vocab.bos.ok_or(TokenizerError::MissingSpecial { what: "bos" })?);
            }
            for f in frags {
                match f {
                    Fragment::Text(s, l) => {
                        let t = &text[s..s + l];
                        if vocab.escape_whitespaces {
                            bpe_tokenize(vocab, &t.replace(' ', "\u{2581}"), &mut out);
                        } else {
                            bpe_tokenize(vocab, t, &mut out);
                        }
                    }
                    Fragment::Token(id) => out.push(id),
                }
            }
            if add_special && vocab.add_eos {
                out.push(vocab.eos.ok_or(TokenizerError::MissingSpecial { what: "eos" })?);
            }
        }
        VocabType::Wpm => {
            // llama.cpp adds [CLS] ... [SEP] whenever add_special, regardless of add_bos.
            if add_special {
                out.push(vocab.bos.ok_or(TokenizerError::MissingSpecial { what: "bos ([CLS])" })?);
            }
            for f in frags {
                match f {
                    Fragment::Text(s, l) => wpm_tokenize(vocab, &text[s..s + l], &mut out)?,
                    Fragment::Token(id) => out.push(id),
                }
            }
            if add_special {
                out.push(vocab.sep.ok_or(TokenizerError::MissingSpecial { what: "sep ([SEP])" })?);
            }
        }
    }
    Ok(out)
}

/// A linked-list symbol: a byte range of the word being merged.
#[derive(Debug, Clone, Copy)]
struct Sym {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

fn utf8_symbols(text: &str) -> Vec<Sym> {
    let n = text.chars().count();
    text.char_indices()
        .enumerate()
        .map(|(i, (s, c))| Sym { start: s, len: c.len_utf8(), prev: i.checked_sub(1), next: if i + 1 < n { Some(i + 1) } else { None } })
        .collect()
}

/// SPM bigram candidate: highest score first, then leftmost.
#[derive(Debug, PartialEq)]
struct SpmBigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}
impl Eq for SpmBigram {}
impl Ord for SpmBigram {
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.total_cmp(&o.score).then_with(|| o.left.cmp(&self.left))
    }
}
impl PartialOrd for SpmBigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

fn spm_tokenize(vocab: &Vocab, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
    let mut syms = utf8_symbols(text);
    let mut heap = BinaryHeap::new();
    let try_add = |syms: &[Sym], heap: &mut BinaryHeap<SpmBigram>, l: Option<usize>, r: Option<usize>| {
        let (Some(l), Some(r)) = (l, r) else { return };
        let (a, b) = (syms[l], syms[r]);
        let piece = &text[a.start..b.start + b.len];
        if let Some(id) = vocab.text_to_token(piece) {
            heap.push(SpmBigram { score: vocab.scores[id as usize], left: l, right: r, size: piece.len() });
        }
    };
    for i in 1..syms.len() {
        try_add(&syms, &mut heap, Some(i - 1), Some(i));
    }
    while let Some(bg) = heap.pop() {
        let (l, r) = (syms[bg.left], syms[bg.right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != bg.size {
            continue;
        }
        syms[bg.left].len += r.len;
        syms[bg.right].len = 0;
        syms[bg.left].next = r.next;
        if let Some(nx) = r.next {
            syms[nx].prev = Some(bg.left);
        }
        let left_prev = syms[bg.left].prev;
        let left_next = syms[bg.left].next;
        try_add(&syms, &mut heap, left_prev, Some(bg.left));
        try_add(&syms, &mut heap, Some(bg.left), left_next);
    }
    let mut i = if syms.is_empty() { None } else { Some(0) };
    while let Some(k) = i {
        let s = syms[k];
        let piece = &text[s.start..s.start + s.len];
        match vocab.text_to_token(piece) {
            Some(id) => out.push(id),
            None => {
                for &b in piece.as_bytes() {
                    out.push(spm_byte_token(vocab, b)?);
                }
            }
        }
        i = s.next;
    }
    Ok(())
}

/// `<0xXX>`, else the byte itself as a one-character token (llama.cpp `byte_to_token`).
fn spm_byte_token(vocab: &Vocab, b: u8) -> Result<u32, TokenizerError> {
    if let Some(id) = vocab.text_to_token(&format!("<0x{b:02X}>")) {
        return Ok(id);
    }
    if b.is_ascii() {
        if let Some(id) = vocab.text_to_token(&(b as char).to_string()) {
            return Ok(id);
        }
    }
    Err(TokenizerError::MissingByteToken { byte: b })
}

/// Queued BPE merge: (rank, left, right, left_len, right_len), popped smallest rank then leftmost.
type BpeQueue = BinaryHeap<Reverse<(u32, usize, usize, usize, usize)>>;

fn bpe_tokenize(vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
    let Some(pretok) = &vocab.pretok else { return };
    let byte_encode = vocab.pre.as_ref().is_none_or(|p| p.byte_encode);
    let is_gemma4 = vocab.pre.as_ref().is_some_and(|p| p.name == "gemma4");
    for word in pretok.split(text) {
        let whole = (vocab.ignore_merges || (is_gemma4 && !word.is_empty() && word.bytes().all(|b| b == b'\n')))
            && vocab.text_to_token(&word).is_some();
        let mut syms = if whole { vec![Sym { start: 0, len: word.len(), prev: None, next: None }] } else { utf8_symbols(&word) };
        let mut heap = BpeQueue::new();
        let try_add = |syms: &[Sym], heap: &mut BpeQueue, l: Option<usize>, r: Option<usize>| {
            let (Some(l), Some(r)) = (l, r) else { return };
            let (a, b) = (syms[l], syms[r]);
            let (lt, rt) = (&word[a.start..a.start + a.len], &word[b.start..b.start + b.len]);
            if let Some(rank) = vocab.merges.get(lt, rt) {
                heap.push(Reverse((rank, l, r, a.len, b.len)));
            }
        };
        for i in 1..syms.len() {
            try_add(&syms, &mut heap, Some(i - 1), Some(i));
        }
        while let Some(Reverse((_, li, ri, llen, rlen))) = heap.pop() {
            let (l, r) = (syms[li], syms[ri]);
            // stale: either side changed since the pair was queued (starts never move)
            if l.len == 0 || r.len == 0 || l.len != llen || r.len != rlen {
                continue;
            }
            syms[li].len += r.len;
            syms[ri].len = 0;
            syms[li].next = r.next;
            if let Some(nx) = r.next {
                syms[nx].prev = Some(li);
            }
            let (lp, ln) = (syms[li].prev, syms[li].next);
            try_add(&syms, &mut heap, lp, Some(li));
            try_add(&syms, &mut heap, Some(li), ln);
        }
        for s in syms.iter().filter(|s| s.len > 0) {
            let piece = &word[s.start..s.start + s.len];
            if let Some(id) = vocab.text_to_token(piece) {
                out.push(id);
                continue;
            }
            // llama.cpp falls back per byte of the piece and silently drops bytes without a token.
            for &b in piece.as_bytes() {
                let id = if byte_encode {
                    if b.is_ascii() {
                        vocab.text_to_token(&(b as char).to_string())
                    } else {
                        None
                    }
                } else {
                    vocab.text_to_token(&format!("<0x{b:02X}>"))
                };
                if let Some(id) = id {
                    out.push(id);
                }
            }
        }
    }
}

fn is_chinese_char(c: u32) -> bool {
    (0x4E00..=0x9FFF).contains(&c)
        || (0x3400..=0x4DBF).contains(&c)
        || (0x20000..=0x2A6DF).contains(&c)
        || (0x2A700..=0x2B73F).contains(&c)
        || (0x2B740..=0x2B81F).contains(&c)
        || (0x2B920..=0x2CEAF).contains(&c)
        || (0xF900..=0xFAFF).contains(&c)
        || (0x2F800..=0x2FA1F).contains(&c)
}

/// BERT pre-processing as llama.cpp does it: optional NFD-first + accent stripping,
/// lowercase, whitespace split, punctuation / ASCII symbols / CJK as one-character words.
fn wpm_preprocess(vocab: &Vocab, text: &str) -> Vec<String> {
    let mut words = vec![String::new()];
    for c0 in text.chars() {
        let c = if vocab.strip_accents { unicode::nfd_first(c0) } else { c0 };
        let f = unicode::flags(c);
        if f.is_whitespace() {
            if !words.last().is_some_and(String::is_empty) {
                words.push(String::new());
            }
            continue;
        }
        if c == '\0' || c == '\u{FFFD}' || f.is_control() {
            continue;
        }
        if vocab.strip_accents && f.is_accent_mark() {
            continue;
        }
        let single = f.is_punctuation() || ((c as u32) < 0x7F && f.is_symbol()) || is_chinese_char(c as u32);
        let c = if vocab.lowercase { unicode::to_lower(c) } else { c };
        if single {
            if !words.last().is_some_and(String::is_empty) {
                words.push(String::new());
            }
            if let Some(w) = words.last_mut() {
                w.push(c);
            }
            words.push(String::new());
        } else if let Some(w) = words.last_mut() {
            w.push(c);
        }
    }
    if words.last().is_some_and(String::is_empty) {
        words.pop();
    }
    words
}

fn wpm_tokenize(vocab: &Vocab, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
    for word in wpm_preprocess(vocab, text) {
        if word.is_empty() {
            continue;
        }
        let w = format!("\u{2581}{word}");
        let wb = w.as_bytes();
        let n = wb.len();
        let before = out.len();
        let mut i = 0;
        while i < n {
            let mut matched = false;
            let mut j = n.min(i + vocab.max_token_len + 1);
            while j > i {
                if let Some(id) = std::str::from_utf8(&wb[i..j]).ok().and_then(|s| vocab.text_to_token(s)) {
                    out.push(id);
                    matched = true;
                    i = j - 1;
                    break;
                }
                j -= 1;
            }
            if !matched {
                out.truncate(before);
                break;
            }
            i += 1;
        }
        if out.len() == before {
            out.push(vocab.unk.ok_or(TokenizerError::MissingSpecial { what: "unk" })?);
        }
    }
    Ok(())
}
