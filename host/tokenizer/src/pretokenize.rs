//! Byte-level BPE pre-tokenization exactly as llama.cpp does it: `tokenizer.ggml.pre` picks a
//! list of regexes; each one splits every piece the previous one produced into matches *and*
//! the gaps between them (HF's `Split(..., Isolated)`), and the final pieces are byte-encoded.
//!
//! llama.cpp does not run these regexes with a Unicode regex engine:
//! - four exact regex strings (GPT-2, Llama-3, Qwen2, Qwen3.5) have hand-written matchers in
//!   `unicode.cpp`; their results differ from a real regex engine in corner cases (e.g. GPT-2's
//!   `\s+(?!\S)` at the end of a piece), so we re-implement those matchers ([`custom_split`]);
//! - any other regex that uses `\p{..}` runs on a "collapsed" text where each non-ASCII
//!   codepoint is replaced by one placeholder per category (whitespace by `\v`), and each `\p{X}`
//!   in the regex by `[placeholder + ASCII members of X]`;
//! - a regex without `\p{..}` runs on the codepoints with non-ASCII whitespace replaced by `\v`.
//!
//! We reproduce the last two with the `regex` crate on the same transformed text (its
//! leftmost-first semantics equal ECMAScript's for these lookaround-free patterns). Names whose
//! regexes need lookaround outside the hand-written matchers are not supported and give
//! `UnknownPre`, never a guess.
//!
//! Modelled on llama.cpp `llm_tokenizer_bpe` (regex table), `unicode_regex_split` and the
//! `unicode_regex_split_custom_*` functions (rewritten, not copied).

use crate::unicode::{self, CptFlags};
use crate::TokenizerError;

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const NEWLINES: &str = r"[^\n]+|[\n]+";
// Non-ASCII characters are written as escapes: some are canonical singletons (e.g. U+1FD3,
// U+2126) that an editor's NFC normalisation would silently change into other codepoints.
const DEEPSEEK_LLM_LETTERS: &str = "\\s?[A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}\u{295}-\u{2AF}\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}\u{1F5F}-\u{1F7D}\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}\u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}\u{2107}\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\u{212D}\u{212F}-\u{2134}\u{2139}\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}\u{A640}-\u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\u{1044F}\u{104B0}-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\u{118A0}-\u{118DF}\u{1E900}-\u{1E943}]+";
const DEEPSEEK_LLM_PUNCT: &str = "\\s?[!-/:-~\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF5E}\u{2018}-\u{201F}\u{3000}-\u{3002}]+";
const CJK_HANGUL: &str = "[\u{4E00}-\u{9FA5}\u{800}-\u{4E00}\u{AC00}-\u{D7FF}]+";
const BLOOM: &str = " ?[^(\\s|.,!?\u{2026}\u{3002}\u{FF0C}\u{3001}\u{964}\u{6D4}\u{60C})]+";

/// What a `tokenizer.ggml.pre` name means for the BPE tokenizer.
#[derive(Debug, Clone)]
pub(crate) struct PreSpec {
    /// Canonical name shown by `kind()`.
    pub name: &'static str,
    pub regexes: &'static [&'static str],
    /// GPT-2 byte encoding of each piece (false: raw UTF-8 with `<0xXX>` byte fallback).
    pub byte_encode: bool,
    /// Replace ' ' by U+2581 before splitting (SPM-style BPE, Gemma 4).
    pub escape_whitespaces: bool,
    /// llama.cpp's `clean_spaces` (detokenizer removes " ," etc.).
    pub clean_spaces: bool,
    /// Whole piece is one token if it is in the vocabulary (Llama-3 style).
    pub ignore_merges: bool,
    /// Forces `add_bos` before the GGUF key is applied.
    pub add_bos: Option<bool>,
    /// The name clears the default BOS (ChatGLM).
    pub no_bos: bool,
}

impl PreSpec {
    const fn new(name: &'static str, regexes: &'static [&'static str]) -> Self {
        PreSpec {
            name,
            regexes,
            byte_encode: true,
            escape_whitespaces: false,
            clean_spaces: true,
            ignore_merges: false,
            add_bos: None,
            no_bos: false,
        }
    }
    const fn no_clean(mut self) -> Self {
        self.clean_spaces = false;
        self
    }
}

const RE_DEFAULT: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"];
const RE_LLAMA3: &[&str] = &[LLAMA3];
const RE_DEEPSEEK_LLM: &[&str] = &["[\r\n]", DEEPSEEK_LLM_LETTERS, DEEPSEEK_LLM_PUNCT, r"\s+$", CJK_HANGUL, r"\p{N}+"];
const RE_DEEPSEEK_CODER: &[&str] = &["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK_HANGUL, r"\p{N}"];
const RE_FALCON: &[&str] = &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"];
const RE_STARCODER: &[&str] = &[r"\p{N}", GPT2];
const RE_GPT2: &[&str] = &[GPT2];
const RE_QWEN2: &[&str] = &[QWEN2];
const RE_QWEN35: &[&str] = &[QWEN35];
const RE_BLOOM: &[&str] = &[BLOOM];
const RE_VIKING: &[&str] = &[BLOOM, r"\p{N}"];
const RE_NEWLINES: &[&str] = &[NEWLINES];

/// The pre-tokenizer for a `tokenizer.ggml.pre` value (None: key absent, llama.cpp's
/// "default" with a warning). Names are llama.cpp's (`llama_vocab::impl::load`).
pub(crate) fn pre_spec(pre: Option<&str>) -> Result<PreSpec, TokenizerError> {
    let Some(pre) = pre else {
        tracing::warn!("GGUF has no tokenizer.ggml.pre; using llama.cpp's 'default' pre-tokenizer (quality may degrade)");
        return Ok(PreSpec::new("default", RE_DEFAULT));
    };
    let spec = match pre {
        "default" => PreSpec::new("default", RE_DEFAULT),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" | "jina-v5-nano" => {
            PreSpec { ignore_merges: true, add_bos: Some(true), ..PreSpec::new("llama3", RE_LLAMA3) }
        }
        "dbrx" => PreSpec::new("dbrx", RE_LLAMA3),
        "smaug-bpe" => PreSpec::new("smaug-bpe", RE_LLAMA3),
        "deepseek-llm" => PreSpec::new("deepseek-llm", RE_DEEPSEEK_LLM).no_clean(),
        "deepseek-coder" => PreSpec::new("deepseek-coder", RE_DEEPSEEK_CODER).no_clean(),
        "falcon" => PreSpec::new("falcon", RE_FALCON),
        "mpt" => PreSpec::new("mpt", RE_GPT2),
        "starcoder" => PreSpec::new("starcoder", RE_STARCODER),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert"
        | "exaone4" => PreSpec::new("gpt-2", RE_GPT2),
        "olmo" => PreSpec::new("olmo", RE_GPT2),
        "jais" => PreSpec::new("jais", RE_GPT2),
        "refact" => PreSpec::new("refact", RE_STARCODER),
        "command-r" => PreSpec::new("command-r", RE_STARCODER).no_clean(),
        "smollm" => PreSpec::new("smollm", RE_STARCODER).no_clean(),
        "codeshell" => PreSpec::new("codeshell", RE_STARCODER),
        "exaone" => PreSpec::new("exaone", RE_STARCODER),
        "minerva-7b" => PreSpec::new("minerva-7b", RE_STARCODER),
        "mellum2" => PreSpec::new("mellum2", RE_STARCODER),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" => PreSpec::new("qwen2", RE_QWEN2).no_clean(),
        "megrez" => PreSpec::new("megrez", RE_QWEN2),
        "stablelm2" => PreSpec::new("stablelm2", RE_QWEN2),
        "qwen35" => PreSpec::new("qwen35", RE_QWEN35).no_clean(),
        "poro-chat" => PreSpec::new("poro-chat", RE_BLOOM).no_clean(),
        "bloom" => PreSpec::new("bloom", RE_BLOOM),
        "gpt3-finnish" => PreSpec::new("gpt3-finnish", RE_BLOOM),
        "viking" => PreSpec::new("viking", RE_VIKING).no_clean(),
        "chatglm-bpe" => PreSpec { no_bos: true, ..PreSpec::new("chatglm-bpe", RE_LLAMA3) },
        "glm4" | "glm5" => PreSpec { no_bos: true, ignore_merges: true, ..PreSpec::new("glm4", RE_LLAMA3) },
        "gemma4" | "granite-embed-multi-311m" => {
            PreSpec { byte_encode: false, escape_whitespaces: true, add_bos: None, ..PreSpec::new("gemma4", RE_NEWLINES) }
        }
        other => return Err(TokenizerError::UnknownPre { pre: other.to_string() }),
    };
    Ok(spec)
}

/// One compiled split step.
#[derive(Debug)]
enum Step {
    Gpt2,
    Llama3,
    Qwen2,
    Qwen35,
    Newlines,
    /// A regex run on the collapsed text (`collapsed`) or on the codepoints with non-ASCII
    /// whitespace replaced by `\v`.
    Regex {
        re: regex::Regex,
        collapsed: bool,
    },
}

/// A compiled pre-tokenizer.
#[derive(Debug)]
pub(crate) struct PreTokenizer {
    steps: Vec<Step>,
    byte_encode: bool,
}

// Placeholders for non-ASCII codepoints in the collapsed text (llama.cpp uses bytes 0xD0..0xD5;
// any codepoints that never occur in the collapsed text work the same).
const PH_OTHER: char = '\u{E0D0}';
const PH_NUMBER: char = '\u{E0D1}';
const PH_LETTER: char = '\u{E0D2}';
const PH_PUNCT: char = '\u{E0D3}';
const PH_ACCENT: char = '\u{E0D4}';
const PH_SYMBOL: char = '\u{E0D5}';

/// `\p{X}` → (placeholder, ASCII members of X as a class body).
fn category_class(name: &str) -> Option<(char, &'static str)> {
    Some(match name {
        "N" => (PH_NUMBER, r"\x30-\x39"),
        "L" | "Lu" | "Ll" | "Lt" | "Lm" | "Lo" => (PH_LETTER, r"\x41-\x5A\x61-\x7A"),
        "P" => (PH_PUNCT, r"\x21-\x23\x25-\x2A\x2C-\x2F\x3A-\x3B\x3F-\x40\x5B-\x5D\x5F\x7B\x7D"),
        "M" => (PH_ACCENT, ""),
        "S" => (PH_SYMBOL, r"\x24\x2B\x3C-\x3E\x5E\x60\x7C\x7E"),
        _ => return None,
    })
}

/// Rewrites each `\p{X}` of `expr` for the collapsed text (llama.cpp tracks `[...]` the same way:
/// inside a class the members are spliced in, outside a new class is opened).
fn collapse_regex(expr: &str) -> String {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::new();
    let mut inside = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '[' && (i == 0 || chars[i - 1] != '\\') {
            out.push('[');
            inside = true;
            i += 1;
            continue;
        }
        if inside && c == ']' && chars[i - 1] != '\\' {
            out.push(']');
            inside = false;
            i += 1;
            continue;
        }
        if c == '\\' && i + 3 < chars.len() && chars[i + 1] == 'p' && chars[i + 2] == '{' {
            if let Some(close) = chars[i + 3..].iter().position(|&x| x == '}') {
                let name: String = chars[i + 3..i + 3 + close].iter().collect();
                if let Some((ph, ascii)) = category_class(&name) {
                    if !inside {
                        out.push('[');
                    }
                    out.push(ph);
                    out.push_str(ascii);
                    if !inside {
                        out.push(']');
                    }
                    i += 3 + close + 1;
                    continue;
                }
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

fn collapse_char(c: char) -> char {
    if c.is_ascii() {
        return c;
    }
    let f = unicode::flags(c);
    if f.is_whitespace() {
        return '\u{0B}';
    }
    match f.category() {
        unicode::NUMBER => PH_NUMBER,
        unicode::LETTER => PH_LETTER,
        unicode::PUNCTUATION => PH_PUNCT,
        unicode::ACCENT_MARK => PH_ACCENT,
        unicode::SYMBOL => PH_SYMBOL,
        _ => PH_OTHER,
    }
}

impl PreTokenizer {
    pub(crate) fn new(spec: &PreSpec) -> Result<Self, TokenizerError> {
        let mut steps = Vec::with_capacity(spec.regexes.len());
        for &expr in spec.regexes {
            let step = match expr {
                GPT2 => Step::Gpt2,
                LLAMA3 => Step::Llama3,
                QWEN2 => Step::Qwen2,
                QWEN35 => Step::Qwen35,
                NEWLINES => Step::Newlines,
                _ => {
                    let collapsed = expr.contains(r"\p{");
                    let src = if collapsed { collapse_regex(expr) } else { expr.to_string() };
                    let re = regex::Regex::new(&src).map_err(|e| TokenizerError::BadRegex { pre: spec.name, message: e.to_string() })?;
                    Step::Regex { re, collapsed }
                }
            };
            steps.push(step);
        }
        Ok(PreTokenizer { steps, byte_encode: spec.byte_encode })
    }

    /// Splits `text` into pieces (byte-encoded when the spec says so).
    pub(crate) fn split(&self, text: &str) -> Vec<String> {
        let cpts: Vec<char> = text.chars().collect();
        let mut offsets = vec![cpts.len()];
        for step in &self.steps {
            offsets = match step {
                Step::Regex { re, collapsed } => regex_split(&cpts, &offsets, re, *collapsed),
                Step::Newlines => newline_split(&cpts, &offsets),
                custom => custom_split(&cpts, &offsets, custom),
            };
        }
        let mut words = Vec::with_capacity(offsets.len());
        let mut start = 0;
        for len in offsets {
            let word: String = cpts[start..start + len].iter().collect();
            start += len;
            words.push(if self.byte_encode { unicode::byte_encode(&word) } else { word });
        }
        words
    }
}

fn regex_split(cpts: &[char], offsets: &[usize], re: &regex::Regex, collapsed: bool) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0;
    for &len in offsets {
        let chunk = &cpts[start..start + len];
        start += len;
        let mut hay = String::with_capacity(len);
        // byte offset in `hay` -> codepoint index in `chunk`
        let mut cp_at = Vec::with_capacity(len + 1);
        for &c in chunk {
            let m = if collapsed {
                collapse_char(c)
            } else if !c.is_ascii() && unicode::flags(c).is_whitespace() {
                '\u{0B}'
            } else {
                c
            };
            cp_at.push(hay.len());
            hay.push(m);
        }
        cp_at.push(hay.len());
        let to_cp = |byte: usize| cp_at.binary_search(&byte).unwrap_or_else(|i| i);
        let mut prev = 0usize;
        for m in re.find_iter(&hay) {
            let (s, e) = (to_cp(m.start()), to_cp(m.end()));
            if s > prev {
                out.push(s - prev);
            }
            out.push(e - s);
            prev = e;
        }
        if prev < len {
            out.push(len - prev);
        }
    }
    out
}

fn newline_split(cpts: &[char], offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0;
    for &len in offsets {
        let chunk = &cpts[start..start + len];
        start += len;
        let mut pos = 0;
        while pos < chunk.len() {
            let nl = chunk[pos] == '\n';
            let run = chunk[pos..].iter().take_while(|&&c| (c == '\n') == nl).count();
            out.push(run);
            pos += run;
        }
    }
    out
}

/// The hand-written matchers of llama.cpp for the GPT-2 / Llama-3 / Qwen2 / Qwen3.5 regexes.
/// Positions are codepoint indices; outside `[ini, end)` a codepoint reads as "none".
fn custom_split(cpts: &[char], offsets: &[usize], step: &Step) -> Vec<usize> {
    const OOR: Option<char> = None;
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0;
    for &len in offsets {
        let (ini, end) = (start, start + len);
        start = end;
        let cpt = |p: usize| {
            if p >= ini && p < end {
                Some(cpts[p])
            } else {
                OOR
            }
        };
        let fl = |p: usize| {
            if p >= ini && p < end {
                unicode::flags(cpts[p])
            } else {
                CptFlags::NONE
            }
        };
        let mut prev_end = ini;
        let mut add = |e: usize, out: &mut Vec<usize>| -> usize {
            let n = e - prev_end;
            if n > 0 {
                out.push(n);
            }
            prev_end = e;
            n
        };
        let mut pos = ini;
        while pos < end {
            let c = cpt(pos);
            let f = fl(pos);
            let is_gpt2 = matches!(step, Step::Gpt2);
            // contractions: 's 't 're 've 'm 'll 'd (case-insensitive except for GPT-2)
            if c == Some('\'') && pos + 1 < end {
                let lower = |x: Option<char>| if is_gpt2 { x } else { x.map(unicode::to_lower) };
                let n1 = lower(cpt(pos + 1));
                if matches!(n1, Some('s' | 't' | 'm' | 'd')) {
                    pos += add(pos + 2, &mut out);
                    continue;
                }
                if pos + 2 < end {
                    let n2 = lower(cpt(pos + 2));
                    if matches!((n1, n2), (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))) {
                        pos += add(pos + 3, &mut out);
                        continue;
                    }
                }
            }
            if is_gpt2 {
                let mut f2 = if c == Some(' ') { fl(pos + 1) } else { f };
                let sp = usize::from(c == Some(' '));
                // ` ?\p{L}+`
                if f2.is_letter() {
                    pos += sp;
                    while f2.is_letter() {
                        pos += 1;
                        f2 = fl(pos);
                    }
                    add(pos, &mut out);
                    continue;
                }
                // ` ?\p{N}+`
                if f2.is_number() {
                    pos += sp;
                    while f2.is_number() {
                        pos += 1;
                        f2 = fl(pos);
                    }
                    add(pos, &mut out);
                    continue;
                }
                // ` ?[^\s\p{L}\p{N}]+`
                let other = |g: CptFlags| !(g.is_whitespace() || g.is_letter() || g.is_number()) && g.any();
                if other(f2) {
                    pos += sp;
                    while other(f2) {
                        pos += 1;
                        f2 = fl(pos);
                    }
                    add(pos, &mut out);
                    continue;
                }
                let mut nws = 0;
                while fl(pos + nws).is_whitespace() {
                    nws += 1;
                }
                // `\s+(?!\S)`
                if nws > 1 && cpt(pos + nws).is_some() {
                    pos += nws - 1;
                    add(pos, &mut out);
                    continue;
                }
                // `\s+`
                if nws > 0 {
                    pos += nws;
                    add(pos, &mut out);
                    continue;
                }
                pos += 1;
                add(pos, &mut out);
                continue;
            }
            let qwen35 = matches!(step, Step::Qwen35);
            let wordish = |g: CptFlags| g.is_letter() || (qwen35 && g.is_accent_mark());
            // `[^\r\n\p{L}\p{N}]?\p{L}+` (Qwen3.5: `[\p{L}\p{M}]+`)
            if !(c == Some('\r') || c == Some('\n') || f.is_number()) && (wordish(f) || wordish(fl(pos + 1))) {
                pos += 1;
                while wordish(fl(pos)) {
                    pos += 1;
                }
                add(pos, &mut out);
                continue;
            }
            if f.is_number() {
                if matches!(step, Step::Llama3) {
                    // `\p{N}{1,3}`
                    let mut run_ini = pos;
                    while fl(pos).is_number() {
                        pos += 1;
                        if pos - run_ini >= 3 {
                            add(pos, &mut out);
                            run_ini = pos;
                        }
                    }
                    add(pos, &mut out);
                } else {
                    // `\p{N}`
                    pos += 1;
                    add(pos, &mut out);
                }
                continue;
            }
            // ` ?[^\s\p{L}\p{N}]+[\r\n]*` (Qwen3.5 also excludes \p{M})
            let other = |g: CptFlags| !(g.is_whitespace() || g.is_letter() || g.is_number() || (qwen35 && g.is_accent_mark()));
            let mut f2 = if c == Some(' ') { fl(pos + 1) } else { f };
            if other(f2) && f.any() {
                pos += usize::from(c == Some(' '));
                while other(f2) && f2.any() {
                    pos += 1;
                    f2 = fl(pos);
                }
                while matches!(cpt(pos), Some('\r' | '\n')) {
                    pos += 1;
                }
                add(pos, &mut out);
                continue;
            }
            let mut nws = 0;
            let mut last_rn_end = 0;
            while fl(pos + nws).is_whitespace() {
                if matches!(cpt(pos + nws), Some('\r' | '\n')) {
                    last_rn_end = pos + nws + 1;
                }
                nws += 1;
            }
            // `\s*[\r\n]+`
            if last_rn_end > 0 {
                pos = last_rn_end;
                add(pos, &mut out);
                continue;
            }
            // `\s+(?!\S)`
            if nws > 1 && cpt(pos + nws).is_some() {
                pos += nws - 1;
                add(pos, &mut out);
                continue;
            }
            // `\s+`
            if nws > 0 {
                pos += nws;
                add(pos, &mut out);
                continue;
            }
            pos += 1;
            add(pos, &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(pre: &str, text: &str) -> Vec<String> {
        let spec = pre_spec(Some(pre)).expect("known pre");
        let p = PreTokenizer::new(&PreSpec { byte_encode: false, ..spec }).expect("compiles");
        p.split(text)
    }

    #[test]
    fn every_supported_name_compiles() {
        for name in [
            "default",
            "llama-bpe",
            "dbrx",
            "deepseek-llm",
            "deepseek-coder",
            "falcon",
            "mpt",
            "starcoder",
            "gpt-2",
            "refact",
            "command-r",
            "smollm",
            "qwen2",
            "qwen35",
            "poro-chat",
            "viking",
            "glm4",
            "gemma4",
        ] {
            let spec = pre_spec(Some(name)).expect(name);
            PreTokenizer::new(&spec).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn unknown_name_is_an_error_naming_it() {
        let err = pre_spec(Some("no-such-pre")).expect_err("must fail");
        assert_eq!(err.to_string(), "unknown pre-tokenizer 'no-such-pre'");
    }

    #[test]
    fn gpt2_splits_like_the_regex() {
        assert_eq!(pieces("gpt-2", "Hello world's  end"), ["Hello", " world", "'s", " ", " end"]);
        assert_eq!(pieces("llama-bpe", "12345 x"), ["123", "45", " x"]);
        assert_eq!(pieces("starcoder", "a 12"), ["a", " ", "1", "2"]);
    }
}
