//! The streaming detokenizer with stop strings: generated ids in, text a client may see out.
//! Text that could still be the start of a stop string is held back until the next token decides
//! it; a stop string and everything after it is never emitted. Checking is incremental
//! (`StopSequences::check_from`), so a long reply costs O(new text) per token.
//!
//! Invariant: the concatenation of every `push` result and `finish` equals the decoded text of
//! the ids cut at the first stop string (tested against that whole-text reference in stop.rs).

use rocmforge_tokenizer::{StreamDecoder, Tokenizer};

use crate::stop::{StopCheck, StopSequences};

pub struct TextOut<'a> {
    dec: StreamDecoder<'a>,
    stops: StopSequences,
    text: String,
    shown: usize,
    /// `text[..checked]` holds no stop string.
    checked: usize,
    stopped_by: Option<String>,
}

impl<'a> TextOut<'a> {
    pub fn new(tok: &'a Tokenizer, skip_special: bool, stops: StopSequences) -> Self {
        TextOut { dec: tok.stream(skip_special), stops, text: String::new(), shown: 0, checked: 0, stopped_by: None }
    }

    /// Add a token; returns the text that may be shown now and whether a stop string ended it.
    pub fn push(&mut self, id: u32) -> (&str, bool) {
        if self.stopped_by.is_some() {
            return ("", true);
        }
        let piece = self.dec.push(id);
        self.text.push_str(&piece);
        let from = self.shown;
        match self.stops.check_from(&self.text, self.checked) {
            StopCheck::Emit(n) => {
                self.shown = n.max(from);
                self.checked = self.text.len();
            }
            StopCheck::Stop(n) => {
                let stop = self.stops.as_slice().iter().find(|s| self.text[n..].starts_with(s.as_str())).cloned();
                self.stopped_by = Some(stop.unwrap_or_default());
                self.shown = n.max(from);
            }
        }
        (&self.text[from..self.shown], self.stopped_by.is_some())
    }

    /// Everything still held back, at the end of generation.
    pub fn finish(&mut self) -> &str {
        if self.stopped_by.is_some() {
            return "";
        }
        let piece = self.dec.flush();
        self.text.push_str(&piece);
        let from = self.shown;
        // The flushed bytes may complete a stop string too.
        if let StopCheck::Stop(n) = self.stops.check_from(&self.text, self.checked) {
            self.shown = n.max(from);
            return &self.text[from..self.shown];
        }
        self.shown = self.text.len();
        &self.text[from..]
    }

    /// The text shown so far (the reply, without any stop string).
    pub fn shown(&self) -> &str {
        &self.text[..self.shown]
    }

    /// The stop string that ended the text, if one did.
    pub fn stopped_by(&self) -> Option<&str> {
        self.stopped_by.as_deref()
    }
}
