//! `rocmforge serve`: the HTTP server (Ollama, OpenAI and llama-server dialects on one port).
//!
//! Settings come from flags first, then Ollama's environment variables, so an Ollama setup
//! carries over: `OLLAMA_HOST` (bind address), `OLLAMA_MODELS` (store), `OLLAMA_KEEP_ALIVE`,
//! `OLLAMA_CONTEXT_LENGTH`, `OLLAMA_MAX_LOADED_MODELS`, `OLLAMA_ORIGINS`; plus
//! `ROCMFORGE_API_KEY` and `ROCMFORGE_REQUEST_CACHE`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use rocmforge_server::options::KeepAlive;
use rocmforge_server::ServerConfig;

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// A model to serve by default (a .gguf file or a Hugging Face directory); it is listed
    /// under a name derived from its file name and is what llama-server routes use.
    pub model: Option<PathBuf>,
    /// Address to listen on: host, host:port or http://host:port (default: $OLLAMA_HOST, else
    /// 127.0.0.1:11434).
    #[arg(long)]
    pub host: Option<String>,
    /// Name a model file: NAME=PATH (repeatable).
    #[arg(long = "model", value_name = "NAME=PATH")]
    pub models: Vec<String>,
    /// Serve every .gguf file and Hugging Face directory in DIR (repeatable).
    #[arg(long = "models-dir", value_name = "DIR")]
    pub models_dirs: Vec<PathBuf>,
    /// The model store (default: $OLLAMA_MODELS, else ~/.ollama/models: Ollama's own).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// How long an idle model stays loaded, e.g. 5m, 1h, 0, -1 (default: $OLLAMA_KEEP_ALIVE, else 5m).
    #[arg(long = "keep-alive")]
    pub keep_alive: Option<String>,
    /// Context length of loaded models (default: $OLLAMA_CONTEXT_LENGTH, else 4096 bounded by the model).
    #[arg(long = "ctx-size", short = 'c')]
    pub ctx_size: Option<usize>,
    /// Most models resident at once (default: $OLLAMA_MAX_LOADED_MODELS, else 3).
    #[arg(long = "max-loaded")]
    pub max_loaded: Option<usize>,
    /// Require `Authorization: Bearer KEY` (default: $ROCMFORGE_API_KEY).
    #[arg(long = "api-key")]
    pub api_key: Option<String>,
    /// Upper bound on tokens generated per request (num_predict / max_tokens).
    #[arg(long = "max-predict")]
    pub max_predict: Option<usize>,
    /// Load these models at start (names or paths; repeatable).
    #[arg(long)]
    pub preload: Vec<String>,
    /// Batch-invariant kernels: a request's greedy output does not depend on what else runs.
    #[arg(long)]
    pub deterministic: bool,
    /// Sequences decoded together per model at most (continuous batching).
    #[arg(long = "max-num-seqs", default_value_t = 64)]
    pub max_num_seqs: usize,
    /// Tokens computed per engine step at most (prefill chunk + decode tokens).
    #[arg(long = "max-batch-tokens", default_value_t = 512)]
    pub max_batch_tokens: usize,
    /// Prompt-lookup speculative decoding: up to K draft tokens per step (greedy requests).
    #[arg(long = "prompt-lookup", value_name = "K", default_value_t = 0)]
    pub prompt_lookup: usize,
    /// KV cache size per model: auto, a size (4GiB, 512MiB), a fraction of available memory (0.3) or N blocks.
    #[arg(long = "kv-budget", default_value = "auto")]
    pub kv_budget: rocmforge_engine::KvBudget,
    /// Where models run: cpu, auto, cuda:N or hip:N (default: $ROCMFORGE_DEVICE, else auto).
    #[arg(long)]
    pub device: Option<rocmforge_runtime::exec::Device>,
    /// KV cache element type of loaded models: f16, q8_0 or fp8 (default:
    /// $ROCMFORGE_KV_CACHE_TYPE, else $OLLAMA_KV_CACHE_TYPE, else f16); a request's
    /// `options.kv_cache_type` overrides it per model.
    #[arg(long = "kv-cache-type", value_name = "TYPE")]
    pub kv_cache_type: Option<rocmforge_engine::KvCacheType>,
    /// fp8 KV cache scales of loaded models: checkpoint (the model's k_scale / v_scale, else
    /// 1.0) or auto (calibrated at load when the model has none) (default:
    /// $ROCMFORGE_KV_SCALES, else checkpoint). Ignored by f16 and q8_0 caches.
    #[arg(long = "kv-scales", value_name = "MODE")]
    pub kv_scales: Option<rocmforge_engine::KvScalesMode>,
    /// Answer repeats of identical deterministic (greedy or seeded) requests from a cache of N
    /// answers, without running the model (default: $ROCMFORGE_REQUEST_CACHE, else off).
    #[arg(long = "request-cache", value_name = "N")]
    pub request_cache: Option<usize>,
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.trim().is_empty())
}

pub fn config(a: &ServeArgs) -> Result<ServerConfig> {
    let host = a.host.clone().or_else(|| env("OLLAMA_HOST")).unwrap_or_default();
    let addr = rocmforge_server::parse_host(&host).map_err(|e| anyhow!("--host / OLLAMA_HOST: {e}"))?;
    let mut aliases = Vec::new();
    if let Some(p) = &a.model {
        if !p.exists() {
            bail!("model not found: {}", p.display());
        }
        let name = rocmforge_store::discover::derive_name(p)
            .map(|n| n.display_shortest())
            .ok_or_else(|| anyhow!("cannot name {}", p.display()))?;
        aliases.push((name, p.clone()));
    }
    for m in &a.models {
        let (n, p) = m.split_once('=').ok_or_else(|| anyhow!("--model takes NAME=PATH, got {m:?}"))?;
        let p = PathBuf::from(p);
        if !p.exists() {
            bail!("--model {n}: {} not found", p.display());
        }
        rocmforge_store::ModelName::parse(n).with_context(|| format!("--model {n}"))?;
        aliases.push((n.to_string(), p));
    }
    let keep_alive = match &a.keep_alive {
        Some(k) => KeepAlive::from_env(Some(k)),
        None => KeepAlive::from_env(env("OLLAMA_KEEP_ALIVE").as_deref()),
    };
    let default_ctx = a.ctx_size.or_else(|| env("OLLAMA_CONTEXT_LENGTH").and_then(|v| v.parse().ok()).filter(|&n: &usize| n > 0));
    let max_loaded =
        a.max_loaded.or_else(|| env("OLLAMA_MAX_LOADED_MODELS").and_then(|v| v.parse().ok()).filter(|&n: &usize| n > 0)).unwrap_or(3);
    let origins =
        env("OLLAMA_ORIGINS").map(|o| o.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()).unwrap_or_default();
    Ok(ServerConfig {
        addr,
        store_root: a.store.clone().unwrap_or_else(rocmforge_store::Store::default_root),
        models_dirs: a.models_dirs.clone(),
        aliases,
        keep_alive,
        default_ctx,
        max_loaded,
        api_key: a.api_key.clone().or_else(|| env("ROCMFORGE_API_KEY")),
        origins,
        body_limit: 64 << 20,
        max_predict: a.max_predict,
        preload: a.preload.clone(),
        max_num_seqs: a.max_num_seqs.max(1),
        request_cache: match a.request_cache {
            Some(n) => n,
            None => rocmforge_server::request_cache::capacity_from_env().map_err(|e| anyhow!(e))?.unwrap_or(0),
        },
    })
}

pub fn run(a: &ServeArgs, registry: rocmforge_runtime::Registry) -> Result<()> {
    let cfg = config(a)?;
    let config = rocmforge_engine::EngineConfig {
        scheduler: rocmforge_engine::SchedulerConfig {
            max_num_seqs: a.max_num_seqs.max(1),
            max_num_batched_tokens: a.max_batch_tokens.max(16),
            prompt_lookup: a.prompt_lookup,
            ..Default::default()
        },
        deterministic: a.deterministic,
    };
    let loader = rocmforge_server::engine_backend::EngineLoader {
        registry: Arc::new(registry),
        config,
        kv: a.kv_budget,
        device: a.device.clone().or_else(|| rocmforge_runtime::exec::Device::user_default().ok()),
        // A bad environment value stops the server at start-up, not at the first load.
        kv_cache_type: match a.kv_cache_type {
            Some(t) => Some(t),
            None => rocmforge_engine::kv_cache_type_from_env()?,
        },
        kv_scales: match a.kv_scales {
            Some(m) => Some(m),
            None => rocmforge_engine::kv_scales_from_env()?,
        },
    };
    rocmforge_server::serve(cfg, Arc::new(loader))?;
    Ok(())
}
