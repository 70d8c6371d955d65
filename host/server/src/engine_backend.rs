//! The [`Backend`] seam over the real engine: `rocmforge_engine::{Model, Engine, PromptBuilder}`.
//!
//! Invariants: loading runs on a blocking thread (the manager calls [`EngineLoader::load`] in
//! `spawn_blocking`); each request's engine stream is forwarded into a bounded channel by a
//! small task that stops — dropping, and so cancelling, the engine stream — as soon as the HTTP
//! side drops its receiver.

use std::path::Path;
use std::sync::Arc;

use rocmforge_chat::RenderRequest;
use rocmforge_engine::request::Request;
use rocmforge_engine::{Engine, EngineConfig, EngineError, LoadOptions, Model, PromptBuilder};
use rocmforge_runtime::Registry;
use rocmforge_tokenizer::Tokenizer;

use crate::backend::{Backend, BackendError, BoxFuture, EngineStats, EventRx, Loader, ModelFacts};

fn map_err(e: EngineError) -> BackendError {
    match e {
        EngineError::Busy { .. } => BackendError::Busy,
        EngineError::ContextOverflow { n_tokens, n_ctx } => BackendError::ContextOverflow { n_tokens, n_ctx },
        EngineError::Template(m) => BackendError::Template(m),
        EngineError::Invalid(m) => BackendError::Invalid(m),
        EngineError::Tokenizer(m) => BackendError::Invalid(format!("tokenizer: {m}")),
        other => BackendError::Failed(other.to_string()),
    }
}

pub struct EngineBackend {
    engine: Engine,
    facts: ModelFacts,
}

impl Backend for EngineBackend {
    fn facts(&self) -> &ModelFacts {
        &self.facts
    }

    fn tokenizer(&self) -> &Arc<Tokenizer> {
        self.engine.model().tokenizer()
    }

    fn render_chat(&self, req: &RenderRequest<'_>) -> Result<String, BackendError> {
        PromptBuilder::new(self.engine.model()).render(req).map_err(map_err)
    }

    fn chat_tokens(&self, req: &RenderRequest<'_>) -> Result<Vec<u32>, BackendError> {
        PromptBuilder::new(self.engine.model()).chat(req).map_err(map_err)
    }

    fn raw_tokens(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>, BackendError> {
        let m = self.engine.model();
        if m.is_embedding() {
            // Encoders take their own special tokens around the text ([CLS] … [SEP]).
            return m.tokenizer().encode(text, add_special, parse_special).map_err(|e| BackendError::Invalid(format!("tokenizer: {e}")));
        }
        PromptBuilder::new(m).raw(text, add_special, parse_special).map_err(map_err)
    }

    fn submit(&self, req: Request) -> Result<EventRx, BackendError> {
        let mut stream = self.engine.submit(req).map_err(map_err)?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = stream.recv() => match ev {
                        Some(ev) => {
                            if tx.send(ev).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                    _ = tx.closed() => break,
                }
            }
            // Dropping `stream` here cancels the request if it has not finished.
        });
        Ok(rx)
    }

    fn embed(&self, inputs: Vec<Vec<u32>>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, BackendError>> {
        Box::pin(async move { self.engine.embed(inputs).await.map_err(map_err) })
    }

    fn stats(&self) -> BoxFuture<'_, Option<EngineStats>> {
        // An error here only means the engine thread has stopped: nothing to report.
        Box::pin(async move { self.engine.stats().await.ok() })
    }

    fn reset_prefix_cache(&self) -> BoxFuture<'_, Option<bool>> {
        Box::pin(async move { self.engine.reset_prefix_cache().await.ok() })
    }

    fn kv_cache_type(&self) -> Option<rocmforge_engine::KvCacheType> {
        Some(self.engine.model().kv_cache_type())
    }

    fn device_lost(&self) -> Option<String> {
        self.engine.device_lost()
    }
}

/// Loads models through the plugin registry into engines.
pub struct EngineLoader {
    pub registry: Arc<Registry>,
    pub config: EngineConfig,
    /// KV cache budget of each loaded model.
    pub kv: rocmforge_engine::KvBudget,
    /// Where models run (None: `ROCMFORGE_DEVICE`, else the CPU).
    pub device: Option<rocmforge_runtime::exec::Device>,
    /// KV cache element type when a request does not name one (None: `ROCMFORGE_KV_CACHE_TYPE`
    /// / `OLLAMA_KV_CACHE_TYPE`, else f16).
    pub kv_cache_type: Option<rocmforge_engine::KvCacheType>,
    /// fp8 KV scales (None: `ROCMFORGE_KV_SCALES`, else the checkpoint's).
    pub kv_scales: Option<rocmforge_engine::KvScalesMode>,
}

impl Loader for EngineLoader {
    fn registry(&self) -> Option<&Registry> {
        Some(&self.registry)
    }

    fn load(&self, path: &Path, n_ctx: Option<usize>) -> Result<Arc<dyn Backend>, BackendError> {
        self.load_kv(path, n_ctx, None)
    }

    fn load_kv(
        &self,
        path: &Path,
        n_ctx: Option<usize>,
        kv_cache_type: Option<rocmforge_engine::KvCacheType>,
    ) -> Result<Arc<dyn Backend>, BackendError> {
        self.load_adapters(path, &[], n_ctx, kv_cache_type)
    }

    fn load_adapters(
        &self,
        path: &Path,
        adapters: &[std::path::PathBuf],
        n_ctx: Option<usize>,
        kv_cache_type: Option<rocmforge_engine::KvCacheType>,
    ) -> Result<Arc<dyn Backend>, BackendError> {
        let opts = LoadOptions {
            n_ctx,
            kv: self.kv,
            device: self.device.clone(),
            max_batch_tokens: self.config.scheduler.max_num_batched_tokens,
            kv_cache_type: kv_cache_type.or(self.kv_cache_type),
            kv_scales: self.kv_scales,
            adapters: adapters.to_vec(),
            ..Default::default()
        };
        let model = Model::load(path, &self.registry, &opts).map_err(map_err)?;
        let src = model.source();
        let n_embd = src.meta(&format!("{}.embedding_length", model.arch())).and_then(|v| v.as_u64()).unwrap_or(0) as usize;
        let chat_template = match (src.gguf(), src.hf()) {
            (Some(f), _) => f.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_string),
            (None, Some(d)) => d.chat_template(),
            _ => None,
        };
        let size = if path.is_dir() {
            std::fs::read_dir(path).into_iter().flatten().flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()
        } else {
            std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
        };
        let facts = ModelFacts {
            path: path.to_path_buf(),
            arch: model.arch().to_string(),
            plugin: model.plugin().to_string(),
            n_ctx: model.n_ctx(),
            n_ctx_train: model.n_ctx_train(),
            n_vocab: model.n_vocab().min(model.n_out().max(1)).max(if model.is_embedding() { model.n_vocab() } else { 0 }),
            n_embd,
            n_params: 0,
            size,
            is_embedding: model.is_embedding(),
            chat_template,
            template_stops: model.template_stops().to_vec(),
            load_time: model.load_time(),
        };
        let engine = Engine::start(model, self.config.clone()).map_err(map_err)?;
        Ok(Arc::new(EngineBackend { engine, facts }))
    }
}
