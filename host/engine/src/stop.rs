//! Stop sequences (Ollama's `stop` option, OpenAI's `stop`, llama-server's `stop`): generation
//! ends at the first occurrence of any of them in the generated text, and the text from that
//! occurrence on is not returned.
//!
//! Streaming: text that might be the beginning of a stop sequence is held back until the next
//! token decides it, so a client never sees half of a stop string. `check` works on the whole
//! generated text so far (callers decode incrementally and pass the growing string); the result
//! says how many bytes are safe to emit. Positions are byte offsets on char boundaries.

/// A set of stop strings (empty strings are ignored).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopSequences {
    stops: Vec<String>,
}

/// What the generated text so far allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCheck {
    /// No stop sequence yet; the first `n` bytes may be emitted (the rest could still start one).
    Emit(usize),
    /// A stop sequence begins at byte `n`: emit `text[..n]` and end the generation.
    Stop(usize),
}

impl StopSequences {
    pub fn new<S: Into<String>>(stops: impl IntoIterator<Item = S>) -> Self {
        let mut out = StopSequences::default();
        out.extend(stops);
        out
    }

    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    pub fn as_slice(&self) -> &[String] {
        &self.stops
    }

    /// Add more stop strings (e.g. a template's end-of-turn marker to the user's own).
    pub fn extend<S: Into<String>>(&mut self, more: impl IntoIterator<Item = S>) {
        for s in more.into_iter().map(Into::into) {
            if !s.is_empty() && !self.stops.contains(&s) {
                self.stops.push(s);
            }
        }
    }

    /// Decide on `text`, the whole generated text so far (see the module header).
    pub fn check(&self, text: &str) -> StopCheck {
        self.check_from(text, 0)
    }

    /// Bytes of the longest stop string.
    pub fn max_len(&self) -> usize {
        self.stops.iter().map(|s| s.len()).max().unwrap_or(0)
    }

    /// [`check`](Self::check) for a caller that already checked `text[..checked]` (no stop
    /// string inside it): only matches that end after `checked` are searched for, so streaming
    /// costs O(new text + longest stop) per token instead of rescanning the whole text.
    pub fn check_from(&self, text: &str, checked: usize) -> StopCheck {
        let mut from = checked.saturating_sub(self.max_len().saturating_sub(1)).min(text.len());
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        if let Some(at) = self.stops.iter().filter_map(|s| text[from..].find(s.as_str())).min() {
            return StopCheck::Stop(from + at);
        }
        // Hold back the longest tail of `text` that is a proper prefix of some stop string.
        let held = self
            .stops
            .iter()
            .map(|s| (1..s.len().min(text.len() + 1)).rev().find(|&k| s.is_char_boundary(k) && text.ends_with(&s[..k])).unwrap_or(0))
            .max()
            .unwrap_or(0);
        StopCheck::Emit(text.len() - held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `pieces` one by one like a streaming decoder; return what a client would see and
    /// whether generation stopped. Cross-checked against the non-streaming answer
    /// (`full.find(stop)`), the reference definition.
    fn stream(stops: &StopSequences, pieces: &[&str]) -> (String, bool) {
        let mut text = String::new();
        let mut shown = 0;
        let mut seen = String::new();
        for p in pieces {
            let checked = text.len();
            text.push_str(p);
            match stops.check_from(&text, checked) {
                StopCheck::Emit(n) => {
                    assert!(n >= shown, "emitted text never shrinks");
                    seen.push_str(&text[shown..n]);
                    shown = n;
                }
                StopCheck::Stop(n) => {
                    seen.push_str(&text[shown..n]);
                    return (seen, true);
                }
            }
        }
        seen.push_str(&text[shown..]);
        (seen, false)
    }

    #[test]
    fn split_stop_is_never_shown_and_matches_the_batch_answer() {
        let stops = StopSequences::new(["<|im_end|>", "\nUser:"]);
        let cases: &[&[&str]] = &[
            &["Hello", " world", "<|im", "_end", "|>", "more"],
            &["a<", "b<|", "im_end|> tail"],
            &["line\n", "Us", "er: hi"],
            &["line\n", "Use", "less"],
            &["<", "<", "|im_end|>"],
            &["日本", "語<|im_", "end|>"],
        ];
        for pieces in cases {
            let full: String = pieces.concat();
            let want_stop = stops.as_slice().iter().filter_map(|s| full.find(s.as_str())).min();
            let (seen, stopped) = stream(&stops, pieces);
            assert_eq!(stopped, want_stop.is_some(), "{pieces:?}");
            assert_eq!(seen, &full[..want_stop.unwrap_or(full.len())], "{pieces:?}");
        }
    }

    /// Random texts over a small alphabet cut into random pieces: the incremental check equals
    /// the whole-text reference (`find` of every stop on the finished text) every time.
    #[test]
    fn incremental_check_matches_reference_on_random_streams() {
        let stops = StopSequences::new(["ab<", "<|b", "bb", "a|a|a"]);
        let alphabet = ['a', 'b', '<', '|', 'é'];
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut rnd = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for _ in 0..2000 {
            let len = 1 + rnd(24);
            let full: String = (0..len).map(|_| alphabet[rnd(alphabet.len())]).collect();
            let chars: Vec<char> = full.chars().collect();
            let mut pieces = Vec::new();
            let mut i = 0;
            while i < chars.len() {
                let n = 1 + rnd(4).min(chars.len() - i - 1);
                pieces.push(chars[i..i + n].iter().collect::<String>());
                i += n;
            }
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            let want_stop = stops.as_slice().iter().filter_map(|s| full.find(s.as_str())).min();
            let (seen, stopped) = stream(&stops, &refs);
            assert_eq!(stopped, want_stop.is_some(), "{refs:?}");
            assert_eq!(seen, &full[..want_stop.unwrap_or(full.len())], "{refs:?}");
        }
    }

    #[test]
    fn holds_back_only_possible_prefixes() {
        let stops = StopSequences::new(["END", ""]);
        assert_eq!(stops.as_slice(), ["END"]);
        assert_eq!(stops.check("the E"), StopCheck::Emit(4));
        assert_eq!(stops.check("the EN"), StopCheck::Emit(4));
        assert_eq!(stops.check("the EX"), StopCheck::Emit(6));
        assert_eq!(stops.check("the END."), StopCheck::Stop(4));
        assert_eq!(StopSequences::default().check("x"), StopCheck::Emit(1));
    }
}
