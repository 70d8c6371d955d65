//! The seam between the HTTP layer and a loaded model: what every dialect needs from a model
//! (tokenizer, prompt building, generation, embeddings) and nothing about how it runs.
//!
//! The real implementation drives `rocmforge_engine::Engine` ([`crate::engine_backend`]); tests
//! of the wire layer use a scripted fake, so framing, option mapping and error shapes are tested
//! without weights.
//!
//! Invariants: an [`EventRx`] yields deltas and then exactly one `Event::Done` (or closes, which
//! callers treat as an error end); dropping the receiver cancels the request and frees its KV
//! (the engine notices at its next step).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use rocmforge_chat::RenderRequest;
use rocmforge_engine::request::{Event, Request};
use rocmforge_tokenizer::Tokenizer;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The events of one request.
pub type EventRx = tokio::sync::mpsc::Receiver<Event>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The engine's queue is full.
    #[error("server busy")]
    Busy,
    #[error("request ({n_tokens} tokens) exceeds the available context size ({n_ctx} tokens)")]
    ContextOverflow { n_tokens: usize, n_ctx: usize },
    /// The request cannot run (e.g. a token id out of range).
    #[error("{0}")]
    Invalid(String),
    /// The chat template failed (its own message, e.g. from `raise_exception`).
    #[error("{0}")]
    Template(String),
    #[error("{0}")]
    Failed(String),
}

/// Facts about a loaded model that the dialects report.
#[derive(Clone, Debug, Default)]
pub struct ModelFacts {
    pub path: PathBuf,
    pub arch: String,
    pub plugin: String,
    /// Context the model was loaded with.
    pub n_ctx: usize,
    /// Context the model was trained for.
    pub n_ctx_train: usize,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_params: u64,
    /// Bytes of the weights file(s).
    pub size: u64,
    pub is_embedding: bool,
    /// Chat template source (Jinja), if the model has one.
    pub chat_template: Option<String>,
    /// Stop strings the chat template implies (ChatML fallback: `<|im_end|>`...).
    pub template_stops: Vec<String>,
    pub load_time: std::time::Duration,
}

/// The engine's own snapshot (queue depth, KV blocks, prefix-cache counters), for `/metrics`,
/// `/slots` and `/props`.
pub use rocmforge_engine::EngineStats;

/// A loaded model, shared by all requests (cheap to clone through `Arc`).
pub trait Backend: Send + Sync + 'static {
    fn facts(&self) -> &ModelFacts;
    fn tokenizer(&self) -> &Arc<Tokenizer>;
    /// The chat template's text for these messages (llama-server `/apply-template`).
    fn render_chat(&self, req: &RenderRequest<'_>) -> Result<String, BackendError>;
    /// Prompt token ids of a chat (template + special-token rules).
    fn chat_tokens(&self, req: &RenderRequest<'_>) -> Result<Vec<u32>, BackendError>;
    /// Prompt token ids of raw text.
    fn raw_tokens(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>, BackendError>;
    /// Queue a generation; events arrive on the receiver.
    fn submit(&self, req: Request) -> Result<EventRx, BackendError>;
    /// Pooled embeddings, one per input, as the model's graph outputs them.
    fn embed(&self, inputs: Vec<Vec<u32>>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, BackendError>>;
    /// The engine's state now; None when this backend keeps no such counters or its engine
    /// stopped. The engine answers between steps, so callers bound the wait.
    fn stats(&self) -> BoxFuture<'_, Option<EngineStats>> {
        Box::pin(async { None })
    }
    /// Drop every cached prefix: Some(true) done, Some(false) refused because requests hold KV
    /// blocks, None when the backend has no prefix cache.
    fn reset_prefix_cache(&self) -> BoxFuture<'_, Option<bool>> {
        Box::pin(async { None })
    }
    /// The KV cache's element type, None when the backend has no such choice.
    fn kv_cache_type(&self) -> Option<rocmforge_engine::KvCacheType> {
        None
    }
    /// Why the model's device became unusable (a GPU error that poisoned its context), once it
    /// has: the model can serve nothing more, so the manager drops it. None while it works.
    fn device_lost(&self) -> Option<String> {
        None
    }
}

/// Loads a model file (GGUF or HF directory) into a [`Backend`]; blocking (called in
/// `spawn_blocking`).
pub trait Loader: Send + Sync + 'static {
    fn load(&self, path: &std::path::Path, n_ctx: Option<usize>) -> Result<Arc<dyn Backend>, BackendError>;
    /// [`load`](Self::load) with a KV cache element type (None: the loader's default). A loader
    /// without KV cache types refuses any, rather than ignore it.
    fn load_kv(
        &self,
        path: &std::path::Path,
        n_ctx: Option<usize>,
        kv_cache_type: Option<rocmforge_engine::KvCacheType>,
    ) -> Result<Arc<dyn Backend>, BackendError> {
        match kv_cache_type {
            None => self.load(path, n_ctx),
            Some(t) => Err(BackendError::Invalid(format!("kv cache type {t} is not supported by this backend"))),
        }
    }

    /// [`load_kv`](Self::load_kv) with LoRA adapters (GGUF adapter files, or PEFT adapter
    /// directories) merged into the weights at load. A loader without adapter support refuses
    /// any, rather than ignore them.
    fn load_adapters(
        &self,
        path: &std::path::Path,
        adapters: &[PathBuf],
        n_ctx: Option<usize>,
        kv_cache_type: Option<rocmforge_engine::KvCacheType>,
    ) -> Result<Arc<dyn Backend>, BackendError> {
        if adapters.is_empty() {
            self.load_kv(path, n_ctx, kv_cache_type)
        } else {
            Err(BackendError::Invalid("LoRA adapters are not supported by this backend".into()))
        }
    }

    /// The plugin registry the loader opens models with, if it has one: `/api/create` converts
    /// Hugging Face directories through it. None (the default): such creates are refused.
    fn registry(&self) -> Option<&rocmforge_runtime::Registry> {
        None
    }
}

#[cfg(any(test, feature = "fake-backend"))]
pub mod fake {
    //! A scripted model for wire-layer tests: a byte-level tokenizer stand-in is not needed, the
    //! fake answers with fixed pieces and exact metrics.
    use super::*;
    use rocmforge_engine::request::{FinishReason, Finished, RequestMetrics, TokenLogprob};

    /// A byte-level BPE vocabulary (GPT-2's byte alphabet, no merges): one token per byte.
    pub fn byte_tokenizer() -> Arc<Tokenizer> {
        let mut tokens = Vec::with_capacity(256);
        let mut extra = 0u32;
        for b in 0..=255u32 {
            let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            let c = if printable {
                char::from_u32(b)
            } else {
                extra += 1;
                char::from_u32(255 + extra)
            };
            tokens.push(c.map(String::from).unwrap_or_default());
        }
        let v = rocmforge_tokenizer::GgufVocab {
            model: "gpt2".into(),
            pre: Some("gpt-2".into()),
            tokens,
            merges: Some(Vec::new()),
            ..Default::default()
        };
        Arc::new(Tokenizer::from_gguf_vocab(v).expect("byte vocabulary"))
    }

    pub struct Fake {
        pub facts: ModelFacts,
        pub tok: Arc<Tokenizer>,
        pub pieces: Vec<&'static str>,
        /// What `stats()` answers (None: a backend without counters).
        pub stats: Option<EngineStats>,
    }

    impl Backend for Fake {
        fn facts(&self) -> &ModelFacts {
            &self.facts
        }
        fn tokenizer(&self) -> &Arc<Tokenizer> {
            &self.tok
        }
        fn render_chat(&self, req: &RenderRequest<'_>) -> Result<String, BackendError> {
            Ok(format!("<{} messages>", req.messages.len()))
        }
        fn chat_tokens(&self, req: &RenderRequest<'_>) -> Result<Vec<u32>, BackendError> {
            Ok((0..req.messages.len() as u32 + 2).collect())
        }
        fn raw_tokens(&self, text: &str, _: bool, _: bool) -> Result<Vec<u32>, BackendError> {
            Ok(text.bytes().map(u32::from).collect())
        }
        fn submit(&self, req: Request) -> Result<EventRx, BackendError> {
            if req.prompt.len() > self.facts.n_ctx {
                return Err(BackendError::ContextOverflow { n_tokens: req.prompt.len(), n_ctx: self.facts.n_ctx });
            }
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            let max = req.max_tokens.unwrap_or(usize::MAX);
            let pieces: Vec<&'static str> = self.pieces.iter().copied().take(max).collect();
            let n_prompt = req.prompt.len();
            let lp = req.sampling.logprobs;
            tokio::spawn(async move {
                for (i, p) in pieces.iter().enumerate() {
                    let logprobs = match lp {
                        Some(n) => vec![TokenLogprob { token: i as u32, logprob: -0.5, top: (0..n as u32).map(|t| (t, -1.0)).collect() }],
                        None => vec![],
                    };
                    if tx.send(Event::Delta { text: p.to_string(), tokens: vec![i as u32], logprobs }).await.is_err() {
                        return;
                    }
                }
                let reason = if pieces.len() == max { FinishReason::Length } else { FinishReason::Stop };
                let metrics = RequestMetrics {
                    prompt_tokens: n_prompt,
                    completion_tokens: pieces.len(),
                    prompt_time: std::time::Duration::from_millis(2),
                    decode_time: std::time::Duration::from_millis(3),
                    total_time: std::time::Duration::from_millis(6),
                    ..Default::default()
                };
                let _ = tx.send(Event::Done(Finished { reason, stopped_by: None, error: None, metrics })).await;
            });
            Ok(rx)
        }
        fn embed(&self, inputs: Vec<Vec<u32>>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, BackendError>> {
            Box::pin(async move { Ok(inputs.iter().map(|i| vec![i.len() as f32, 0.0, 0.0]).collect()) })
        }
        fn stats(&self) -> BoxFuture<'_, Option<EngineStats>> {
            let s = self.stats.clone();
            Box::pin(async move { s })
        }
        fn reset_prefix_cache(&self) -> BoxFuture<'_, Option<bool>> {
            let has = self.stats.is_some();
            Box::pin(async move { has.then_some(true) })
        }
    }
}
