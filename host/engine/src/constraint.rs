//! Structured output: the allowed-token mask for the next token of a request whose text must
//! match a JSON Schema, be any JSON object, or follow a grammar, computed by `llguidance`
//! (DESIGN.md §2.8) over the model's vocabulary.
//!
//! - [`ConstraintVocab`] is built once per model from every token's bytes and the
//!   end-of-generation ids: llguidance's token trie plus its parser factory (the costly part,
//!   a pass over the vocabulary).
//! - [`ConstraintState`] is one request's parser: `mask()` for the next token (the sampler applies
//!   it before every other stage), `commit(token)` for the token actually emitted,
//!   `is_finished()` once the grammar is complete and only end-of-generation can follow.
//!
//! Invariants: after `commit` of every sampled token, the committed text is a prefix of a string
//! of the language, so the finished output always parses (and validates, for a schema);
//! end-of-generation tokens are never part of the text (they are llguidance "special" tokens,
//! marked with its 0xFF prefix) and are allowed exactly when the grammar accepts.
//!
//! Constraint kinds:
//! - `Json`: any JSON object (OpenAI `json_object`; Ollama `format: "json"`, whose llama.cpp
//!   grammar also roots at an object).
//! - `JsonSchema(text)`: llguidance's JSON Schema compiler. Whitespace between JSON tokens is
//!   bounded ([`JSON_WHITESPACE`]) unless the schema sets its own `x-guidance` options, so a
//!   model cannot loop on blank lines forever (the unbounded default lets it).
//! - `Grammar(text)`: a llama.cpp GBNF grammar (llama-server `grammar`), converted here to
//!   llguidance's Lark dialect (llguidance's own converter is Python only); text that starts
//!   with `%llguidance` is taken as Lark as it is, as llama.cpp does.
//!
//! Modelled on llama.cpp's `llama-grammar.cpp` parser (for what GBNF accepts) and its llguidance
//! sampler; the conversion code is our own.

use std::fmt::Write as _;
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};

use crate::request::Constraint;

/// Whitespace allowed between two JSON tokens: at most 20 blanks / newlines, like llama.cpp's
/// JSON grammars (`ws ::= | " " | "\n" [ \t]{0,20}`), but any mix of them.
pub const JSON_WHITESPACE: &str = r"[\x20\x0A\x0D\x09]{1,20}";

/// The byte llguidance puts in front of special tokens' text (they never match grammar text).
pub const SPECIAL_TOKEN_MARKER: u8 = TokTrie::SPECIAL_TOKEN_MARKER;

/// Errors of structured output.
#[derive(Debug, thiserror::Error)]
pub enum ConstraintError {
    #[error("constraint vocabulary: {0}")]
    Vocab(String),
    #[error("invalid JSON schema: {0}")]
    InvalidSchema(String),
    #[error("invalid grammar at line {line}, column {column}: {reason}")]
    GrammarSyntax { line: usize, column: usize, reason: String },
    #[error("invalid grammar: {0}")]
    InvalidGrammar(String),
    #[error("token {token} is not allowed by the constraint here: {reason}")]
    Rejected { token: u32, reason: String },
    #[error("constraint failed: {0}")]
    Internal(String),
}

/// llguidance's view of one model's vocabulary. Build once per model, share with `Arc`.
pub struct ConstraintVocab {
    factory: ParserFactory,
    n_vocab: usize,
    eos: Vec<u32>,
}

impl std::fmt::Debug for ConstraintVocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintVocab").field("n_vocab", &self.n_vocab).field("eos", &self.eos).finish()
    }
}

impl ConstraintVocab {
    /// `token_bytes[t]`: the bytes token t decodes to. `eos`: every end-of-generation id (the
    /// first is llguidance's primary EOS). End-of-generation tokens are marked special here;
    /// other special/control tokens (e.g. `<|im_start|>`) should be passed with their bytes
    /// prefixed by [`SPECIAL_TOKEN_MARKER`] (or empty), or a grammar that allows free text could
    /// emit them as text.
    pub fn new(mut token_bytes: Vec<Vec<u8>>, eos: &[u32]) -> Result<Arc<ConstraintVocab>, ConstraintError> {
        let n_vocab = token_bytes.len();
        if n_vocab == 0 || n_vocab > u32::MAX as usize {
            return Err(ConstraintError::Vocab(format!("{n_vocab} tokens")));
        }
        if eos.is_empty() {
            return Err(ConstraintError::Vocab("no end-of-generation token".into()));
        }
        if let Some(&bad) = eos.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(ConstraintError::Vocab(format!("end-of-generation id {bad} outside the vocabulary of {n_vocab}")));
        }
        for &t in eos {
            let b = &mut token_bytes[t as usize];
            if b.first() != Some(&SPECIAL_TOKEN_MARKER) {
                b.insert(0, SPECIAL_TOKEN_MARKER);
            }
        }
        // toktrie asserts on malformed input; keep a panic there from taking down the engine.
        let built = std::panic::catch_unwind(|| {
            let info = TokRxInfo::new(n_vocab as u32, eos[0]);
            TokTrie::from(&info, &token_bytes).with_eos_tokens(eos)
        });
        let trie = built.map_err(|_| ConstraintError::Vocab("building the token trie failed".into()))?;
        // Not canonical: our tokenizers are not llguidance's, so it must never force tokens.
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| ConstraintError::Vocab(e.to_string()))?;
        factory.quiet();
        Ok(Arc::new(ConstraintVocab { factory, n_vocab, eos: eos.to_vec() }))
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    pub fn eos(&self) -> &[u32] {
        &self.eos
    }
}

/// One request's constraint: the parser state after the tokens committed so far.
pub struct ConstraintState {
    matcher: Matcher,
    vocab: Arc<ConstraintVocab>,
    mask: SimpleVob,
    mask_fresh: bool,
}

impl std::fmt::Debug for ConstraintState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintState").field("finished", &self.is_finished()).finish()
    }
}

impl ConstraintState {
    /// Compiles the constraint; a bad schema or grammar is an error naming what is wrong.
    pub fn new(c: &Constraint, vocab: &Arc<ConstraintVocab>) -> Result<Self, ConstraintError> {
        let (grammar, is_schema) = match c {
            Constraint::Json => (json_grammar(serde_json::json!({ "type": "object" })), true),
            Constraint::JsonSchema(text) => {
                let schema: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| ConstraintError::InvalidSchema(format!("not valid JSON: {e}")))?;
                if !(schema.is_object() || schema.is_boolean()) {
                    return Err(ConstraintError::InvalidSchema(format!("a schema is an object or a boolean, not `{schema}`")));
                }
                (json_grammar(schema), true)
            }
            Constraint::Grammar(text) => {
                let lark = if text.trim_start().starts_with("%llguidance") { text.clone() } else { gbnf_to_lark(text)? };
                (TopLevelGrammar::from_lark(lark), false)
            }
        };
        let parser = vocab.factory.create_parser(grammar).map_err(|e| {
            let msg = e.to_string();
            if is_schema {
                ConstraintError::InvalidSchema(msg)
            } else {
                ConstraintError::InvalidGrammar(msg)
            }
        })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(if is_schema { ConstraintError::InvalidSchema(e) } else { ConstraintError::InvalidGrammar(e) });
        }
        Ok(ConstraintState { matcher, vocab: vocab.clone(), mask: SimpleVob::new(), mask_fresh: false })
    }

    /// Allowed-token bitmask for the next token (bit t of word t/32). Once the grammar is
    /// complete it allows only the end-of-generation tokens.
    pub fn mask(&mut self) -> Result<&[u32], ConstraintError> {
        if !self.mask_fresh {
            self.mask = self.matcher.compute_mask_or_eos().map_err(|e| ConstraintError::Internal(e.to_string()))?;
            self.mask_fresh = true;
        }
        Ok(self.mask.as_slice())
    }

    /// Advances the parser by the token that was emitted.
    pub fn commit(&mut self, token: u32) -> Result<(), ConstraintError> {
        self.mask_fresh = false;
        if self.matcher.is_stopped() && !self.matcher.is_error() {
            // Complete: end-of-generation is the one thing that may follow.
            return if self.vocab.eos.contains(&token) {
                Ok(())
            } else {
                Err(ConstraintError::Rejected { token, reason: "the constrained output is already complete".into() })
            };
        }
        self.matcher.consume_token(token).map_err(|e| ConstraintError::Rejected { token, reason: e.to_string() })
    }

    /// The grammar is complete and only end-of-generation can follow (the engine stops).
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped() && !self.matcher.is_error()
    }
}

fn json_grammar(mut schema: serde_json::Value) -> TopLevelGrammar {
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(|| serde_json::json!({ "whitespace_pattern": JSON_WHITESPACE }));
    }
    TopLevelGrammar::from_json_schema(schema)
}

// ---------------------------------------------------------------------------------------------
// GBNF -> Lark
//
// GBNF (llama.cpp grammars/README.md):   name ::= alternatives      (one rule per line; newlines
// are allowed inside parentheses and after `|` / `::=`), literals "..." with \n \t \r \\ \" \[ \]
// \xHH \uHHHH \UHHHHHHHH escapes, classes [a-z] [^"\\], `.` (any character), groups ( ... ),
// postfix * + ? {m} {m,} {m,n} {,n}, `#` comments, entry rule `root`.
//
// Lark output: one line per rule, `start: r<i>_root`; rules are renamed `r<i>_<name>` (lowercase,
// unique); literals become JSON-escaped strings, classes and `.` become regexes whose characters
// are all written as \x{...}, so nothing in them needs Lark or regex quoting.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Lit(String),
    Class { negated: bool, ranges: Vec<(char, char)> },
    Any,
    Ref(String),
    Seq(Vec<Node>),
    Alt(Vec<Node>),
    Rep(Box<Node>, u32, Option<u32>),
}

struct GbnfParser<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> GbnfParser<'a> {
    fn err(&self, reason: impl Into<String>) -> ConstraintError {
        let before = &self.src[..self.pos];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConstraintError::GrammarSyntax { line, column, reason: reason.into() }
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_space(&mut self, newline_ok: bool) {
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' => self.pos += 1,
                '\r' | '\n' if newline_ok => self.pos += 1,
                '#' => {
                    while self.peek().is_some_and(|c| c != '\n' && c != '\r') {
                        self.bump();
                    }
                }
                _ => break,
            }
        }
    }

    fn is_word(c: char) -> bool {
        c.is_ascii_alphanumeric() || c == '-' || c == '_'
    }

    fn name(&mut self) -> Result<String, ConstraintError> {
        let start = self.pos;
        while self.peek().is_some_and(Self::is_word) {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(self.err("expected a rule name"));
        }
        Ok(self.src[start..self.pos].to_string())
    }

    fn hex(&mut self, digits: usize) -> Result<char, ConstraintError> {
        let start = self.pos;
        let s = self.src.get(start..start + digits).filter(|s| s.chars().all(|c| c.is_ascii_hexdigit()));
        let Some(s) = s else { return Err(self.err(format!("expected {digits} hex digits"))) };
        self.pos += digits;
        let v = u32::from_str_radix(s, 16).map_err(|e| self.err(e.to_string()))?;
        char::from_u32(v).ok_or_else(|| self.err(format!("U+{v:X} is not a character")))
    }

    /// One character of a literal or class, escapes resolved.
    fn char_(&mut self) -> Result<char, ConstraintError> {
        match self.bump() {
            None => Err(self.err("unexpected end of grammar")),
            Some('\\') => match self.bump() {
                Some('x') => self.hex(2),
                Some('u') => self.hex(4),
                Some('U') => self.hex(8),
                Some('n') => Ok('\n'),
                Some('t') => Ok('\t'),
                Some('r') => Ok('\r'),
                Some(c) if c.is_ascii_punctuation() => Ok(c),
                Some(c) => Err(self.err(format!("unknown escape \\{c}"))),
                None => Err(self.err("unexpected end of grammar")),
            },
            Some(c) => Ok(c),
        }
    }

    fn int(&mut self) -> Result<u32, ConstraintError> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        self.src[start..self.pos].parse().map_err(|_| self.err("expected a number"))
    }

    fn alternates(&mut self, nested: bool) -> Result<Node, ConstraintError> {
        let mut alts = vec![self.sequence(nested)?];
        while self.peek() == Some('|') {
            self.pos += 1;
            self.skip_space(true);
            alts.push(self.sequence(nested)?);
        }
        Ok(if alts.len() == 1 { alts.pop().unwrap_or(Node::Seq(Vec::new())) } else { Node::Alt(alts) })
    }

    fn sequence(&mut self, nested: bool) -> Result<Node, ConstraintError> {
        let mut items: Vec<Node> = Vec::new();
        while let Some(c) = self.peek() {
            match c {
                '"' => {
                    let open = self.pos;
                    self.pos += 1;
                    let mut s = String::new();
                    while self.peek() != Some('"') {
                        if self.peek().is_none() {
                            self.pos = open;
                            return Err(self.err("unterminated string literal"));
                        }
                        s.push(self.char_()?);
                    }
                    self.pos += 1;
                    items.push(Node::Lit(s));
                }
                '[' => {
                    let open = self.pos;
                    self.pos += 1;
                    let negated = self.peek() == Some('^');
                    if negated {
                        self.pos += 1;
                    }
                    let mut ranges = Vec::new();
                    while self.peek() != Some(']') {
                        if self.peek().is_none() {
                            self.pos = open;
                            return Err(self.err("unterminated character class"));
                        }
                        let lo = self.char_()?;
                        let mut hi = lo;
                        if self.peek() == Some('-') && self.src[self.pos + 1..].chars().next().is_some_and(|c| c != ']') {
                            self.pos += 1;
                            hi = self.char_()?;
                        }
                        if hi < lo {
                            return Err(self.err(format!("empty range {lo:?}-{hi:?}")));
                        }
                        ranges.push((lo, hi));
                    }
                    self.pos += 1;
                    if ranges.is_empty() && !negated {
                        return Err(self.err("empty character class"));
                    }
                    items.push(Node::Class { negated, ranges });
                }
                '(' => {
                    self.pos += 1;
                    self.skip_space(true);
                    let inner = self.alternates(true)?;
                    if self.peek() != Some(')') {
                        return Err(self.err("expected `)`"));
                    }
                    self.pos += 1;
                    items.push(inner);
                }
                '.' => {
                    self.pos += 1;
                    items.push(Node::Any);
                }
                '*' | '+' | '?' | '{' => {
                    let Some(last) = items.pop() else { return Err(self.err(format!("`{c}` with nothing to repeat"))) };
                    self.pos += 1;
                    let (min, max) = match c {
                        '*' => (0, None),
                        '+' => (1, None),
                        '?' => (0, Some(1)),
                        _ => {
                            self.skip_space(true);
                            let min = if self.peek() == Some(',') { 0 } else { self.int()? };
                            self.skip_space(true);
                            let max = if self.peek() == Some(',') {
                                self.pos += 1;
                                self.skip_space(true);
                                if self.peek() == Some('}') {
                                    None
                                } else {
                                    Some(self.int()?)
                                }
                            } else {
                                Some(min)
                            };
                            self.skip_space(true);
                            if self.peek() != Some('}') {
                                return Err(self.err("expected `}`"));
                            }
                            self.pos += 1;
                            if max.is_some_and(|m| m < min) {
                                return Err(self.err(format!("repetition {{{min},{max:?}}} has max < min")));
                            }
                            (min, max)
                        }
                    };
                    items.push(Node::Rep(Box::new(last), min, max));
                }
                c if Self::is_word(c) => items.push(Node::Ref(self.name()?)),
                _ => break,
            }
            self.skip_space(nested);
        }
        Ok(if items.len() == 1 { items.pop().unwrap_or(Node::Seq(Vec::new())) } else { Node::Seq(items) })
    }

    fn rules(mut self) -> Result<Vec<(String, Node, usize)>, ConstraintError> {
        let mut rules: Vec<(String, Node, usize)> = Vec::new();
        self.skip_space(true);
        while self.peek().is_some() {
            let at = self.pos;
            let name = self.name()?;
            self.skip_space(false);
            if !self.src[self.pos..].starts_with("::=") {
                return Err(self.err(format!("expected `::=` after rule name `{name}`")));
            }
            self.pos += 3;
            self.skip_space(true);
            let body = self.alternates(false)?;
            match self.peek() {
                None | Some('\n') | Some('\r') => {}
                Some(c) => return Err(self.err(format!("unexpected `{c}` (expected the end of rule `{name}`)"))),
            }
            if rules.iter().any(|r| r.0 == name) {
                self.pos = at;
                return Err(self.err(format!("rule `{name}` is defined twice")));
            }
            rules.push((name, body, at));
            self.skip_space(true);
        }
        Ok(rules)
    }
}

/// Converts a GBNF grammar to llguidance's Lark dialect (see the section comment above).
pub fn gbnf_to_lark(gbnf: &str) -> Result<String, ConstraintError> {
    let rules = GbnfParser { src: gbnf, pos: 0 }.rules()?;
    let lark_name = |name: &str| -> Option<String> {
        let i = rules.iter().position(|r| r.0 == name)?;
        let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
        Some(format!("r{i}_{clean}"))
    };
    let Some(root) = lark_name("root") else {
        return Err(ConstraintError::InvalidGrammar("no `root` rule (the grammar's entry point)".into()));
    };
    let mut out = format!("start: {root}\n");
    for (name, body, _) in &rules {
        let mut line = String::new();
        emit(body, &lark_name, &mut line, true)
            .map_err(|missing| ConstraintError::InvalidGrammar(format!("rule `{name}` uses undefined rule `{missing}`")))?;
        let _ = writeln!(out, "{}: {line}", lark_name(name).unwrap_or_default());
    }
    Ok(out)
}

/// Writes `n` as Lark; Err(name) for a reference to an undefined rule.
fn emit(n: &Node, name: &dyn Fn(&str) -> Option<String>, out: &mut String, top: bool) -> Result<(), String> {
    match n {
        Node::Lit(s) if s.is_empty() => out.push_str("\"\""),
        Node::Lit(s) => {
            out.push('"');
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                        let _ = write!(out, "\\u{:04x}", c as u32);
                    }
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        // `[^]`: any character.
        Node::Class { negated: true, ranges } if ranges.is_empty() => out.push_str("/(?s:.)/"),
        Node::Class { negated, ranges } => {
            out.push_str(if *negated { "/[^" } else { "/[" });
            for &(lo, hi) in ranges {
                let _ = write!(out, "\\x{{{:x}}}", lo as u32);
                if hi != lo {
                    let _ = write!(out, "-\\x{{{:x}}}", hi as u32);
                }
            }
            out.push_str("]/");
        }
        Node::Any => out.push_str("/(?s:.)/"),
        Node::Ref(r) => out.push_str(&name(r).ok_or_else(|| r.clone())?),
        Node::Seq(items) if items.is_empty() => out.push_str("\"\""),
        Node::Seq(items) => {
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                emit(it, name, out, false)?;
            }
        }
        Node::Alt(alts) => {
            if !top {
                out.push('(');
            }
            for (i, a) in alts.iter().enumerate() {
                if i > 0 {
                    out.push_str(" | ");
                }
                emit(a, name, out, false)?;
            }
            if !top {
                out.push(')');
            }
        }
        Node::Rep(inner, min, max) => {
            out.push('(');
            emit(inner, name, out, true)?;
            out.push(')');
            match (min, max) {
                (0, None) => out.push('*'),
                (1, None) => out.push('+'),
                (0, Some(1)) => out.push('?'),
                (m, None) => {
                    let _ = write!(out, "{{{m},}}");
                }
                (m, Some(x)) if m == x => {
                    let _ = write!(out, "{{{m}}}");
                }
                (m, Some(x)) => {
                    let _ = write!(out, "{{{m},{x}}}");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::SamplingParams;
    use crate::sampler::{Rng, Sampler};
    use serde_json::{json, Value};

    /// A small byte-level vocabulary: every byte, some multi-byte pieces, then EOS.
    fn vocab() -> (Arc<ConstraintVocab>, Vec<Vec<u8>>, u32) {
        let mut words: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for w in
            ["{\"", "\":", "\": ", "\",", ", \"", "\"}", "true", "false", "null", "name", "age", "color", "  ", "\n", "12", "red", "ab"]
        {
            words.push(w.as_bytes().to_vec());
        }
        words.push(b"</s>".to_vec());
        let eos = words.len() as u32 - 1;
        (ConstraintVocab::new(words.clone(), &[eos]).expect("vocabulary builds"), words, eos)
    }

    /// Samples under the mask with random logits (structural bytes favoured so outputs stay
    /// short) until the constraint finishes or EOS; returns the text.
    fn generate(c: &Constraint, seed: u64) -> String {
        let (v, words, eos) = vocab();
        let mut st = ConstraintState::new(c, &v).expect("constraint compiles");
        let mut sampler = Sampler::new(&SamplingParams { temperature: 1.0, ..SamplingParams::neutral() }, seed, &[], None);
        let mut rng = Rng::new(seed ^ 0xabc);
        let mut out = Vec::new();
        for _ in 0..4000 {
            let mut logits: Vec<f32> = (0..words.len()).map(|_| rng.next_f64() as f32 * 2.0).collect();
            for &b in b"\"}],0123456789" {
                logits[b as usize] += 3.0;
            }
            logits[eos as usize] += 3.0;
            let mask = st.mask().expect("mask").to_vec();
            let t = sampler.sample(&logits, Some(&mask)).token;
            st.commit(t).expect("a sampled token is accepted");
            if t == eos {
                break;
            }
            out.extend_from_slice(&words[t as usize]);
            if st.is_finished() {
                // Only EOS may follow now.
                let mask = st.mask().expect("mask").to_vec();
                let allowed: Vec<usize> = (0..words.len()).filter(|&t| mask[t / 32] >> (t % 32) & 1 == 1).collect();
                assert_eq!(allowed, vec![eos as usize]);
                break;
            }
        }
        String::from_utf8(out).expect("constrained output is UTF-8")
    }

    /// A validator for the JSON Schema subset these tests use.
    fn validate(v: &Value, s: &Value) -> Result<(), String> {
        if let Some(t) = s.get("type").and_then(Value::as_str) {
            let ok = match t {
                "object" => v.is_object(),
                "array" => v.is_array(),
                "string" => v.is_string(),
                // Integers past u64 parse as f64 in serde_json; JSON text has no fraction there.
                "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|x| x.fract() == 0.0),
                "number" => v.is_number(),
                "boolean" => v.is_boolean(),
                "null" => v.is_null(),
                _ => false,
            };
            if !ok {
                return Err(format!("{v} is not {t}"));
            }
        }
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            if !e.contains(v) {
                return Err(format!("{v} not in {e:?}"));
            }
        }
        if let (Some(o), Some(props)) = (v.as_object(), s.get("properties").and_then(Value::as_object)) {
            for r in s.get("required").and_then(Value::as_array).into_iter().flatten() {
                let r = r.as_str().unwrap_or_default();
                if !o.contains_key(r) {
                    return Err(format!("missing required {r}"));
                }
            }
            for (k, x) in o {
                match props.get(k) {
                    Some(ps) => validate(x, ps)?,
                    None if s.get("additionalProperties") == Some(&json!(false)) => return Err(format!("extra property {k}")),
                    None => {}
                }
            }
        }
        if let Some(a) = v.as_array() {
            if let Some(items) = s.get("items") {
                a.iter().try_for_each(|x| validate(x, items))?;
            }
            if s.get("minItems").and_then(Value::as_u64).is_some_and(|m| (a.len() as u64) < m) {
                return Err(format!("too few items in {v}"));
            }
            if s.get("maxItems").and_then(Value::as_u64).is_some_and(|m| (a.len() as u64) > m) {
                return Err(format!("too many items in {v}"));
            }
        }
        if let Some(st) = v.as_str() {
            let n = st.chars().count() as u64;
            if s.get("maxLength").and_then(Value::as_u64).is_some_and(|m| n > m)
                || s.get("minLength").and_then(Value::as_u64).is_some_and(|m| n < m)
            {
                return Err(format!("bad length of {v}"));
            }
        }
        if let Some(x) = v.as_f64() {
            if s.get("minimum").and_then(Value::as_f64).is_some_and(|m| x < m)
                || s.get("maximum").and_then(Value::as_f64).is_some_and(|m| x > m)
            {
                return Err(format!("{v} out of range"));
            }
        }
        Ok(())
    }

    #[test]
    fn sampled_outputs_parse_and_validate_against_their_schemas() {
        let schemas = [
            json!({"type": "object", "additionalProperties": false,
                   "properties": {"name": {"type": "string", "maxLength": 10},
                                  "age": {"type": "integer", "minimum": 0, "maximum": 1000},
                                  "color": {"enum": ["red", "green", "blue"]}},
                   "required": ["name", "age", "color"]}),
            json!({"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 5}),
            json!({"type": "object", "additionalProperties": false,
                   "properties": {"user": {"type": "object", "additionalProperties": false,
                                           "properties": {"name": {"type": "string", "maxLength": 6},
                                                          "tags": {"type": "array", "maxItems": 3,
                                                                   "items": {"type": "string", "maxLength": 5}}},
                                           "required": ["name", "tags"]},
                                  "ok": {"type": "boolean"}},
                   "required": ["user", "ok"]}),
        ];
        for schema in &schemas {
            for seed in 0..6 {
                let text = generate(&Constraint::JsonSchema(schema.to_string()), seed);
                let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
                validate(&v, schema).unwrap_or_else(|e| panic!("{e}: {text:?}"));
            }
        }
        // Free-form JSON may hold numbers like 1E2953416783345, valid JSON that serde_json cannot
        // hold in an f64: check the syntax without converting numbers.
        for seed in 0..6 {
            let text = generate(&Constraint::Json, seed);
            serde_json::from_str::<serde::de::IgnoredAny>(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
            assert!(text.starts_with('{') && text.ends_with('}'), "not an object: {text:?}");
        }
    }

    #[test]
    fn gbnf_grammars_constrain_the_output() {
        let record = r#"
# a record, written the way llama.cpp grammars usually are
root ::= "{" ws "\"name\":" ws name "," ws "\"n\":" ws num ws "}"
name ::= "\"" [a-z]{1,8} "\""
num  ::= "-"? [1-9] [0-9]{0,3}
ws   ::= [ \t\n]{0,2}
"#;
        for seed in 0..6 {
            let text = generate(&Constraint::Grammar(record.into()), seed);
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
            let name = v["name"].as_str().unwrap_or_default();
            assert!((1..=8).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase()), "{text:?}");
            assert!(v["n"].as_i64().is_some_and(|n| n != 0 && n.abs() < 10_000), "{text:?}");
        }
        let arith = "root ::= expr\nexpr ::= term ((\"+\" | \"-\") term)*\nterm ::= [0-9]+ | \"(\" expr \")\"\n";
        // expr := term (op term)*, term := digits | "(" expr ")"
        fn expr(s: &[u8], i: &mut usize) -> bool {
            if !term(s, i) {
                return false;
            }
            while *i < s.len() && (s[*i] == b'+' || s[*i] == b'-') {
                *i += 1;
                if !term(s, i) {
                    return false;
                }
            }
            true
        }
        fn term(s: &[u8], i: &mut usize) -> bool {
            if *i < s.len() && s[*i] == b'(' {
                *i += 1;
                let ok = expr(s, i) && *i < s.len() && s[*i] == b')';
                *i += 1;
                return ok;
            }
            let start = *i;
            while *i < s.len() && s[*i].is_ascii_digit() {
                *i += 1;
            }
            *i > start
        }
        for seed in 0..8 {
            let text = generate(&Constraint::Grammar(arith.into()), seed);
            let mut i = 0;
            assert!(expr(text.as_bytes(), &mut i) && i == text.len(), "not an expression: {text:?}");
        }
    }

    #[test]
    fn gbnf_converts_to_lark() {
        let g = "root ::= \"a\\n\" [^\"\\\\x] . (b | \"\")? b{2,}\nb ::= [0-9a-f]+ # hex\n";
        let lark = gbnf_to_lark(g).expect("converts");
        assert_eq!(
            lark,
            "start: r0_root\nr0_root: \"a\\u000a\" /[^\\x{22}\\x{5c}\\x{78}]/ /(?s:.)/ (r1_b | \"\")? (r1_b){2,}\nr1_b: (/[\\x{30}-\\x{39}\\x{61}-\\x{66}]/)+\n"
        );
    }

    #[test]
    fn bad_schemas_and_grammars_are_clear_errors() {
        let (v, _, _) = vocab();
        let err = |c: Constraint| ConstraintState::new(&c, &v).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(Constraint::JsonSchema("{\"type\": ".into())).contains("not valid JSON"));
        assert!(err(Constraint::JsonSchema("[1]".into())).contains("invalid JSON schema"));
        let e = err(Constraint::JsonSchema(r#"{"type": "bogus"}"#.into()));
        assert!(e.contains("invalid JSON schema") && e.contains("bogus"), "{e}");
        let e = err(Constraint::Grammar("rot ::= \"a\"\n".into()));
        assert!(e.contains("no `root` rule"), "{e}");
        let e = err(Constraint::Grammar("root ::= value\n".into()));
        assert!(e.contains("undefined rule `value`"), "{e}");
        let e = err(Constraint::Grammar("root ::= \"a\"\nx ::= \"b\n".into()));
        assert!(e.contains("line 2, column 7") && e.contains("unterminated"), "{e}");
        let e = err(Constraint::Grammar("%llguidance {}\nstart: foo\n".into()));
        assert!(e.contains("invalid grammar") && e.contains("foo"), "{e}");
        assert!(ConstraintVocab::new(vec![b"a".to_vec()], &[3]).is_err());
    }

    #[test]
    fn a_disallowed_token_is_rejected_and_eos_ends_a_finished_output() {
        let (v, words, eos) = vocab();
        let mut st = ConstraintState::new(&Constraint::Grammar("root ::= \"ab\"\n".into()), &v).expect("compiles");
        assert!(st.commit(b'x' as u32).is_err());
        let mut st = ConstraintState::new(&Constraint::Grammar("root ::= \"ab\"\n".into()), &v).expect("compiles");
        let ab = words.iter().position(|w| w == b"ab").expect("piece") as u32;
        let mask = st.mask().expect("mask").to_vec();
        assert!(mask[ab as usize / 32] >> (ab % 32) & 1 == 1 && mask[eos as usize / 32] >> (eos % 32) & 1 == 0);
        st.commit(ab).expect("allowed");
        assert!(st.is_finished());
        assert!(st.commit(b'a' as u32).is_err());
        st.commit(eos).expect("EOS after a finished output");
    }

    #[test]
    fn vocabulary_and_state_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<ConstraintVocab>();
        send::<ConstraintState>();
    }
}
