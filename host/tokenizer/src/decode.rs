//! Ids → bytes for GGUF vocabularies, as llama.cpp's `token_to_piece` and `detokenize` do it,
//! plus the byte-level core of the streaming detokenizer.
//!
//! - `token_to_piece`: CONTROL/UNKNOWN tokens render as their text only when `special`;
//!   SPM/WPM normal tokens turn U+2581 into ' '; byte tokens `<0xXX>` give one raw byte;
//!   byte-level BPE tokens are mapped back through GPT-2's byte table.
//! - `detokenize`: concatenated pieces, one leading space dropped when the vocab adds a space
//!   prefix (unless the text starts with BOS), then llama.cpp's `clean_spaces` passes
//!   (" ?" → "?", " ' " → "'", " 's" → "'s", ...) for vocabs that have that flag.
//! - [`ByteStream`]: pieces arrive one id at a time; it emits text only up to a point where
//!   (a) the bytes so far are complete UTF-8 and (b) `clean_spaces` of the rest can no longer
//!   change what was emitted. The passes only ever delete a ' ' next to one of ?!.,'sm etc., so
//!   `clean(A ++ B) == clean(A) ++ clean(B)` whenever A's last three bytes are none of
//!   ` '?!.,` (`safe_cut`, checked exhaustively on short strings); cutting only there makes the
//!   concatenated stream equal `detokenize` byte for byte.
//!
//! Modelled on llama.cpp `llama_vocab::impl::token_to_piece` / `detokenize`, and on the
//! hold-back idea of HF `DecodeStream` / vLLM's incremental detokenizer.

use crate::unicode;
use crate::vocab::{Vocab, VocabType, ATTR_BYTE, ATTR_CONTROL, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_USER_DEFINED};

fn token_to_byte(text: &str) -> u8 {
    text.get(3..5).and_then(|h| u8::from_str_radix(h, 16).ok()).unwrap_or(0)
}

/// The bytes of one token (llama.cpp `token_to_piece` with `lstrip = 0`).
pub(crate) fn token_to_piece(vocab: &Vocab, id: u32, special: bool) -> Vec<u8> {
    let Some(text) = vocab.tokens.get(id as usize) else {
        return Vec::new();
    };
    let attr = vocab.attr(id);
    let attr_special = ATTR_UNKNOWN | ATTR_CONTROL;
    if !special && attr & attr_special != 0 {
        return Vec::new();
    }
    if attr & (attr_special | ATTR_USER_DEFINED) != 0 {
        return text.as_bytes().to_vec();
    }
    if attr & ATTR_NORMAL != 0 {
        if vocab.ty != VocabType::Bpe || vocab.escape_whitespaces {
            return text.replace('\u{2581}', " ").into_bytes();
        }
        let map = unicode::unicode_to_byte();
        let mut out = Vec::with_capacity(text.len());
        for c in text.chars() {
            match map.get(&c) {
                Some(&b) => out.push(b),
                None => {
                    // llama.cpp's marker for a character outside the byte table
                    out.extend_from_slice(b"[UNK_BYTE_0x");
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.extend_from_slice(format!("{b:02x}").as_bytes());
                    }
                    out.extend_from_slice(text.as_bytes());
                    out.push(b']');
                }
            }
        }
        return out;
    }
    if attr & ATTR_BYTE != 0 && vocab.ty != VocabType::Wpm {
        return vec![token_to_byte(text)];
    }
    Vec::new()
}

/// llama.cpp's `clean_spaces` post-processing, done in place with the same index arithmetic
/// (pass 2 writes a NUL over the space it removes, which later comparisons see).
pub(crate) fn clean_spaces(t: &mut Vec<u8>) {
    // pass 1: " ?", " !", " .", " ,"
    let n = t.len();
    let mut total = usize::from(n > 0);
    for i in 1..n {
        let x = t[i];
        if t[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        t[total] = x;
        total += 1;
    }
    t.truncate(total);
    // pass 2: " ' " → "'"
    let n = t.len();
    let mut total = usize::from(n > 0);
    let mut i = 1;
    while i < n {
        let x = t[i];
        if x == b'\'' && i + 1 < n && t[i - 1] == b' ' && t[i + 1] == b' ' {
            total -= 1;
            i += 1;
            t[i] = 0;
        }
        t[total] = x;
        total += 1;
        i += 1;
    }
    t.truncate(total);
    // pass 3: " 's", " 'm", " 're", " 've"
    let n = t.len();
    let mut total = usize::from(n > 0);
    for i in 1..n {
        let x = t[i];
        if t[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = t[i + 1];
            if matches!(x1, b's' | b'm') {
                total -= 1;
            } else if !matches!(x1, b't' | b'd') && i + 2 < n {
                let x2 = t[i + 2];
                if matches!((x1, x2), (b'r' | b'v', b'e')) {
                    total -= 1;
                }
            }
        }
        t[total] = x;
        total += 1;
    }
    t.truncate(total);
}

/// llama.cpp `detokenize(tokens, remove_special, unparse_special)` as bytes.
pub(crate) fn detokenize(vocab: &Vocab, ids: &[u32], remove_special: bool, unparse_special: bool) -> Vec<u8> {
    let mut ids = ids;
    let mut remove_space = vocab.add_space_prefix;
    if remove_special && vocab.add_bos && !ids.is_empty() && Some(ids[0]) == vocab.bos {
        remove_space = false;
        ids = &ids[1..];
    }
    if remove_special && vocab.add_eos && !ids.is_empty() && Some(ids[ids.len() - 1]) == vocab.eos {
        ids = &ids[..ids.len() - 1];
    }
    let mut out = Vec::new();
    for &id in ids {
        let piece = token_to_piece(vocab, id, unparse_special);
        let skip = usize::from(remove_space && piece.first() == Some(&b' '));
        out.extend_from_slice(&piece[skip..]);
        remove_space = false;
    }
    if vocab.clean_spaces {
        clean_spaces(&mut out);
    }
    out
}

/// Can `clean_spaces` be applied separately to `b[..k]` and `b[k..]`? Its passes only delete
/// spaces, deciding by at most one byte back and two bytes ahead of an apostrophe or one of
/// `?!.,`. If the last three bytes before the cut are none of ` '?!.,` nothing near the cut can
/// be deleted, and no decision on either side reads across it.
fn safe_cut(b: &[u8], k: usize) -> bool {
    b[k.saturating_sub(3)..k].iter().all(|c| !matches!(c, b' ' | b'\'' | b'?' | b'!' | b'.' | b','))
}

/// Number of trailing bytes that start a UTF-8 sequence still waiting for continuation bytes.
fn incomplete_tail(b: &[u8]) -> usize {
    for k in 1..=b.len().min(3) {
        let c = b[b.len() - k];
        if c & 0xC0 == 0x80 {
            continue;
        }
        let need = match c {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => 1,
        };
        return if need > k { k } else { 0 };
    }
    0
}

/// Streaming detokenization over a GGUF vocab (see the module docs for the invariant).
#[derive(Debug)]
pub(crate) struct ByteStream {
    remove_special: bool,
    unparse_special: bool,
    first: bool,
    pending: Vec<u8>,
}

impl ByteStream {
    pub(crate) fn new(skip_special: bool) -> Self {
        ByteStream { remove_special: skip_special, unparse_special: !skip_special, first: true, pending: Vec::new() }
    }

    pub(crate) fn push(&mut self, vocab: &Vocab, id: u32) -> String {
        let mut remove_space = false;
        if self.first {
            self.first = false;
            remove_space = vocab.add_space_prefix;
            if self.remove_special && vocab.add_bos && Some(id) == vocab.bos {
                return String::new();
            }
        }
        let piece = token_to_piece(vocab, id, self.unparse_special);
        let skip = usize::from(remove_space && piece.first() == Some(&b' '));
        self.pending.extend_from_slice(&piece[skip..]);
        self.emit(vocab, false)
    }

    pub(crate) fn flush(&mut self, vocab: &Vocab) -> String {
        self.emit(vocab, true)
    }

    fn emit(&mut self, vocab: &Vocab, all: bool) -> String {
        let complete = self.pending.len() - incomplete_tail(&self.pending);
        let cut = if all {
            self.pending.len()
        } else if !vocab.clean_spaces {
            complete
        } else {
            let p = &self.pending;
            (1..=complete).rev().find(|&k| (k == complete || p[k - 1].is_ascii()) && safe_cut(p, k)).unwrap_or(0)
        };
        if cut == 0 {
            return String::new();
        }
        let mut chunk: Vec<u8> = self.pending.drain(..cut).collect();
        if vocab.clean_spaces {
            clean_spaces(&mut chunk);
        }
        String::from_utf8_lossy(&chunk).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(s: &str) -> String {
        let mut v = s.as_bytes().to_vec();
        clean_spaces(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }

    #[test]
    fn clean_spaces_passes() {
        assert_eq!(clean("Hello , world !"), "Hello, world!");
        assert_eq!(clean("a ' b"), "a'b");
        assert_eq!(clean("it 's I 'm we 're they 've"), "it's I'm we're they've");
        assert_eq!(clean("don 't you 'd"), "don 't you 'd");
    }

    #[test]
    fn clean_is_chunkable_at_safe_cuts() {
        // every string over a small alphabet, every safe cut
        let alphabet = [b' ', b'\'', b's', b'r', b'e', b'v', b',', b'x', b'?'];
        let mut buf = Vec::new();
        for n in 1..=7u32 {
            for code in 0..alphabet.len().pow(n) {
                buf.clear();
                let mut c = code;
                for _ in 0..n {
                    buf.push(alphabet[c % alphabet.len()]);
                    c /= alphabet.len();
                }
                let text = std::str::from_utf8(&buf).expect("ascii");
                let full = clean(text);
                for cut in 1..buf.len() {
                    if safe_cut(&buf, cut) {
                        assert_eq!(clean(&text[..cut]) + &clean(&text[cut..]), full, "{text:?} cut at {cut}");
                    }
                }
            }
        }
    }

    #[test]
    fn incomplete_tails() {
        assert_eq!(incomplete_tail("a€".as_bytes()), 0);
        assert_eq!(incomplete_tail(&"€".as_bytes()[..2]), 2);
        assert_eq!(incomplete_tail(&"🦙".as_bytes()[..3]), 3);
        assert_eq!(incomplete_tail(&[b'a', 0x80]), 0);
    }
}
