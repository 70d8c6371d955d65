//! The engine: the one generation path every front end (CLI, the HTTP dialects) goes through,
//! independent of any backend (DESIGN.md §2.6: it speaks token ids, KV block ids and counts).
//!
//! - [`Model`] loads a model once (source, plugin graph, executor, tokenizer, template, KV sizing);
//!   [`PromptBuilder`] turns chats and raw text into prompt tokens with one set of BOS rules.
//! - [`Engine`] runs it on its own thread: `submit(Request) -> RequestStream` of [`Event`]s,
//!   continuous batching by the [`scheduler`] (chunked prefill, preemption by recompute) over the
//!   [`kv_manager`] (paged KV blocks with prefix caching), sampling by the [`sampler`], structured
//!   output by [`constraint`], text by the streaming detokenizer with stop strings ([`output`]).

pub mod block_pool;
pub mod constraint;
pub mod engine;
pub mod kv_calibration;
pub mod kv_manager;
pub mod model;
pub mod output;
pub mod prompt;
pub mod request;
pub mod sampler;
pub mod scheduler;
pub mod stop;

use std::path::PathBuf;

pub use block_pool::{BlockPool, KvError};
pub use engine::{Engine, EngineConfig, EngineStats, RequestStream};
pub use kv_calibration::{kv_scales_from_env, KvScalesMode};
pub use kv_manager::KvCacheManager;
pub use model::{kv_cache_type_from_env, KvBudget, KvCacheType, LoadOptions, Model};
pub use output::TextOut;
pub use prompt::PromptBuilder;
pub use request::{Constraint, Event, FinishReason, Finished, Request, RequestMetrics, SamplingParams, TokenLogprob};
pub use sampler::{Sampled, Sampler};
pub use scheduler::{Scheduler, SchedulerConfig};
pub use stop::{StopCheck, StopSequences};

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model not found: {0}")]
    ModelNotFound(PathBuf),
    #[error(transparent)]
    Runtime(#[from] rocmforge_runtime::RuntimeError),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("prompt of {n_tokens} tokens does not fit the context of {n_ctx} tokens (raise num_ctx / --ctx-size)")]
    ContextOverflow { n_tokens: usize, n_ctx: usize },
    #[error("server busy: {waiting} requests are already waiting (limit {limit}); retry later")]
    Busy { waiting: usize, limit: usize },
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("the engine has stopped")]
    Stopped,
    /// The model's device failed in a way that leaves it unusable (a GPU error that poisoned
    /// its context): the message names the first error. The engine accepts no more work.
    #[error("{0}")]
    DeviceLost(String),
}
