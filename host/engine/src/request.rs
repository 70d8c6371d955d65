//! What a front end (CLI, HTTP dialects) hands the engine and what it gets back: a [`Request`]
//! (prompt token ids, sampling parameters, stops, limits, an optional constraint and cache salt)
//! and a stream of [`Event`]s (text deltas with their token ids and logprobs, then one final
//! [`Finished`] with the finish reason and the counts and timings every dialect reports).
//!
//! Invariants: a request's event stream always ends with exactly one `Event::Done` (also on
//! error and cancellation); text deltas concatenate to the whole visible completion (stop strings
//! are never part of it); `Finished::metrics` carries enough to fill Ollama's nanosecond
//! durations, OpenAI's `usage` (with cached prompt tokens) and llama-server's `timings`.
//!
//! Names follow vLLM (`SamplingParams`, `RequestOutput`-like events, `num_cached_tokens`) and the
//! options follow Ollama / llama-server (`repeat_last_n`, `mirostat_tau`, `dry_*`, `xtc_*`).

use std::time::Duration;

/// Sampling parameters: the union of what the Ollama, OpenAI and llama-server APIs expose.
/// Neutral values disable a stage (temperature 0 = greedy; top_k 0, top_p 1, min_p 0,
/// typical_p 1, penalties 1/0, dry_multiplier 0, xtc_probability 0, mirostat 0 = off).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub typical_p: f32,
    /// Multiplicative repetition penalty over the last `repeat_last_n` tokens (llama.cpp style).
    pub repeat_penalty: f32,
    /// Window of the repeat / presence / frequency penalties; 0 = off, usize::MAX = whole context.
    pub repeat_last_n: usize,
    /// OpenAI: subtract `presence_penalty` once for every token that occurred at least once.
    pub presence_penalty: f32,
    /// OpenAI: subtract `frequency_penalty * count` for every token that occurred `count` times.
    pub frequency_penalty: f32,
    /// Added to the logit of each listed token (-inf bans it).
    pub logit_bias: Vec<(u32, f32)>,
    /// DRY (llama-server): 0 = off.
    pub dry_multiplier: f32,
    pub dry_base: f32,
    pub dry_allowed_length: usize,
    /// Window searched for repeats; 0 = off, usize::MAX = whole context.
    pub dry_penalty_last_n: usize,
    /// Strings that break a repeated sequence (llama-server default: "\n", ":", "\"", "*").
    pub dry_sequence_breakers: Vec<String>,
    /// XTC (llama-server): 0 = off.
    pub xtc_probability: f32,
    pub xtc_threshold: f32,
    /// 0 = off, 1 = Mirostat, 2 = Mirostat 2.0.
    pub mirostat: u8,
    pub mirostat_tau: f32,
    pub mirostat_eta: f32,
    /// None: a random seed, drawn once per request.
    pub seed: Option<u64>,
    /// None: no logprobs. Some(n): the chosen token's logprob plus the n most likely alternatives.
    pub logprobs: Option<usize>,
}

impl SamplingParams {
    /// Greedy decoding with every other stage off.
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Self::neutral() }
    }

    /// Every stage off at temperature 1 (OpenAI's defaults).
    pub fn neutral() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            typical_p: 1.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            dry_multiplier: 0.0,
            dry_base: 1.75,
            dry_allowed_length: 2,
            dry_penalty_last_n: usize::MAX,
            dry_sequence_breakers: vec!["\n".into(), ":".into(), "\"".into(), "*".into()],
            xtc_probability: 0.0,
            xtc_threshold: 0.1,
            mirostat: 0,
            mirostat_tau: 5.0,
            mirostat_eta: 0.1,
            seed: None,
            logprobs: None,
        }
    }

    /// Ollama's defaults (temperature 0.8, top_k 40, top_p 0.9, repeat_penalty 1.1 over 64).
    pub fn ollama_defaults() -> Self {
        SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.9, repeat_penalty: 1.1, ..Self::neutral() }
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self::ollama_defaults()
    }
}

/// Constrained decoding: the sampled text must match this.
#[derive(Clone, Debug, PartialEq)]
pub enum Constraint {
    /// Any JSON value (OpenAI `json_object`, Ollama `format: "json"`).
    Json,
    /// A JSON Schema, as JSON text.
    JsonSchema(String),
    /// A GBNF grammar (llama-server `grammar`).
    Grammar(String),
}

/// One generation request.
#[derive(Clone, Debug)]
pub struct Request {
    /// Prompt token ids (built by `PromptBuilder`); never empty.
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// Most tokens to generate; None: until the context is full.
    pub max_tokens: Option<usize>,
    /// Stop strings: generation ends at the first, which is not returned.
    pub stop: Vec<String>,
    /// Extra token ids that end generation (besides the vocabulary's end-of-generation tokens).
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past end-of-generation tokens.
    pub ignore_eos: bool,
    /// Drop special tokens (e.g. `<|im_end|>`) from the text.
    pub skip_special: bool,
    pub constraint: Option<Constraint>,
    /// Separates prefix-cache entries (e.g. per tenant); None shares with every request.
    pub cache_salt: Option<String>,
}

impl Request {
    pub fn new(prompt: Vec<u32>, sampling: SamplingParams) -> Self {
        Request {
            prompt,
            sampling,
            max_tokens: None,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            skip_special: true,
            constraint: None,
            cache_salt: None,
        }
    }
}

/// A token's log-probability and the most likely alternatives at its position.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    /// Natural-log probability under the model's distribution (softmax of the raw logits).
    pub logprob: f32,
    /// The `n` most likely tokens with their logprobs, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Why a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-generation token, stop token or stop string.
    Stop,
    /// `max_tokens` reached or the context is full.
    Length,
    /// Cancelled by the caller (or its stream was dropped).
    Cancelled,
    /// Failed; `Finished::error` says why.
    Error,
}

impl FinishReason {
    /// The wire spelling shared by Ollama (`done_reason`) and OpenAI (`finish_reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error => "error",
        }
    }
}

/// Counts and timings of one request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestMetrics {
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache (not computed).
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    /// From submission until the request was first scheduled.
    pub queue_time: Duration,
    /// From first scheduling until the first generated token (the prompt's computation).
    pub prompt_time: Duration,
    /// From the first generated token to the last.
    pub decode_time: Duration,
    /// From submission to the end.
    pub total_time: Duration,
    /// Times the request was preempted (its KV dropped and recomputed).
    pub preemptions: usize,
}

impl RequestMetrics {
    /// Prompt tokens actually computed.
    pub fn prompt_eval_tokens(&self) -> usize {
        self.prompt_tokens - self.cached_tokens.min(self.prompt_tokens)
    }
}

/// The end of a request's stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    pub reason: FinishReason,
    /// The stop string or token text that ended it, when one did.
    pub stopped_by: Option<String>,
    pub error: Option<String>,
    pub metrics: RequestMetrics,
}

/// What the engine streams back for a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// New output: `text` may be empty (held back for a possible stop string, or half a UTF-8
    /// character) while `tokens` is not; `logprobs` has one entry per token when asked for.
    Delta { text: String, tokens: Vec<u32>, logprobs: Vec<TokenLogprob> },
    /// The last event of every request.
    Done(Finished),
}
