//! A loaded model: everything one generation path needs, loaded once — the model source (GGUF or
//! HF directory), the plugin's graph on an executor with its KV cache, the tokenizer, the chat
//! template and the context / KV sizing policy. `run`, `generate`, `bench`, `embed` and the HTTP
//! server all load through [`Model::load`] (it replaced the CLI's `Session::load` and the
//! embedding loader, which differed in plugin lookup and KV sizing).
//!
//! Sizing: the per-sequence context `n_ctx` is Ollama's default 4096 unless asked otherwise, never
//! more than the model was trained for. The KV pool is a separate budget (shared by every running
//! sequence, vLLM style): by default enough for `n_ctx` tokens times [`DEFAULT_PARALLEL`]
//! sequences, capped at [`DEFAULT_KV_BYTES`], never less than one full context. It is printed at
//! load (`tracing::info!`) in blocks, tokens, bytes and element type.
//!
//! Sliding-window layers (Mistral, Gemma 2/3 local layers): the KV cache is laid out in groups
//! by kind (`rocmforge_runtime::KvLayout::by_kind`), and the engine gives back the blocks of
//! sliding groups that fall behind the window, so a long sequence holds far fewer blocks and the
//! same budget holds more sequences. Budgets stay amounts of memory: the pool's blocks then hold
//! fewer layers each (Gemma-3-270M: 3 of 18) and there are that many times more of them; a
//! budget in blocks counts blocks over every layer. [`LoadOptions::free_sliding_window`] (or
//! `ROCMFORGE_SLIDING_WINDOW_FREE=0`) keeps one group and every block instead.
//!
//! KV cache type: [`LoadOptions::kv_cache_type`], else `ROCMFORGE_KV_CACHE_TYPE`, else Ollama's
//! `OLLAMA_KV_CACHE_TYPE`, else f16 ([`kv_cache_type_from_env`]). Budgets in bytes (the default
//! cap, `--kv-budget 4GiB`, a fraction of memory) are divided by the bytes a token takes in that
//! type, so q8_0 (34 bytes per 32 elements) and fp8 (1 byte) get ~1.9x and 2x the blocks of
//! f16; a budget in blocks stays that many blocks.
//!
//! fp8 KV scales: the checkpoint's (read by the runtime when the executor is built), else 1.0;
//! with [`LoadOptions::kv_scales`] (else `ROCMFORGE_KV_SCALES`) `auto`, a checkpoint without
//! scales is calibrated at load (`kv_calibration.rs`). The load log prints them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocmforge_chat::ChatTemplate;
pub use rocmforge_runtime::exec::KvCacheType;
use rocmforge_runtime::exec::{Device, KvConfig};
use rocmforge_runtime::{build_graph, Executor, KvKind, KvLayout, ModelSource, Registry};
use rocmforge_tokenizer::Tokenizer;

use crate::kv_calibration::{kv_scales_from_env, KvScalesMode};
use crate::EngineError;

/// Tokens per KV block (vLLM's default block size).
pub const BLOCK_SIZE: usize = 16;
/// Ollama's default context length.
pub const DEFAULT_CTX: usize = 4096;
/// Sequences the default KV budget is sized for.
pub const DEFAULT_PARALLEL: usize = 4;
/// Upper bound of the default KV budget.
pub const DEFAULT_KV_BYTES: usize = 2 << 30;

/// How much memory the KV cache may take.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KvBudget {
    /// The default policy (see the module header).
    Auto,
    /// At most this many bytes.
    Bytes(usize),
    /// The memory of this many blocks of [`BLOCK_SIZE`] tokens over every layer (exactly this
    /// many blocks, unless sliding-window layers split the pool into smaller blocks).
    Blocks(usize),
    /// This fraction (0, 1] of the memory available now (`MemAvailable` of /proc/meminfo on
    /// the CPU backend).
    Fraction(f64),
}

impl std::str::FromStr for KvBudget {
    type Err = String;
    /// `auto`, `4GiB` / `512MiB` / `1000000000` (bytes), `0.5` (a fraction of available
    /// memory), `2048blocks`.
    fn from_str(s: &str) -> Result<KvBudget, String> {
        let t = s.trim().to_ascii_lowercase();
        let bad = || format!("KV budget '{s}': expected auto, a size like 4GiB or 512MiB, a fraction like 0.5, or N blocks");
        if t == "auto" {
            return Ok(KvBudget::Auto);
        }
        if let Some(n) = t.strip_suffix("blocks") {
            return n.trim().parse().map(KvBudget::Blocks).map_err(|_| bad());
        }
        for (suffix, mul) in [("gib", 1u64 << 30), ("gb", 1_000_000_000), ("mib", 1 << 20), ("mb", 1_000_000)] {
            if let Some(n) = t.strip_suffix(suffix) {
                let v: f64 = n.trim().parse().map_err(|_| bad())?;
                return Ok(KvBudget::Bytes((v * mul as f64) as usize));
            }
        }
        if t.contains('.') {
            let f: f64 = t.parse().map_err(|_| bad())?;
            if !(f > 0.0 && f <= 1.0) {
                return Err(format!("KV budget fraction {f} must be in (0, 1]"));
            }
            return Ok(KvBudget::Fraction(f));
        }
        t.parse().map(KvBudget::Bytes).map_err(|_| bad())
    }
}

/// Bytes of memory available now (Linux `MemAvailable`), if known.
fn available_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The KV cache type the environment asks for: `ROCMFORGE_KV_CACHE_TYPE`, else
/// `OLLAMA_KV_CACHE_TYPE` (Ollama's name; Ollama also accepts q4_0, which is refused here with
/// the valid values), None when neither is set (or set empty).
pub fn kv_cache_type_from_env() -> Result<Option<KvCacheType>, EngineError> {
    kv_cache_type_from_vars(|k| std::env::var(k).ok())
}

/// [`kv_cache_type_from_env`] over any variable lookup (testable without touching the process
/// environment).
pub fn kv_cache_type_from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<KvCacheType>, EngineError> {
    for var in ["ROCMFORGE_KV_CACHE_TYPE", "OLLAMA_KV_CACHE_TYPE"] {
        if let Some(v) = get(var).filter(|v| !v.trim().is_empty()) {
            return v.parse().map(Some).map_err(|e| EngineError::Invalid(format!("{var}: {e}")));
        }
    }
    Ok(None)
}

/// Options of [`Model::load`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Tokens per sequence (default 4096, at most the model's training context).
    pub n_ctx: Option<usize>,
    pub kv: KvBudget,
    /// Where the model runs; None: `ROCMFORGE_DEVICE`, else the CPU.
    pub device: Option<Device>,
    /// Tokens per forward pass the activation memory is sized for (the scheduler's budget).
    pub max_batch_tokens: usize,
    /// Element type of the KV cache; None: the environment's ([`kv_cache_type_from_env`]), else f16.
    pub kv_cache_type: Option<KvCacheType>,
    /// fp8 KV scales: the checkpoint's, or calibrated (`auto`); None: `ROCMFORGE_KV_SCALES`,
    /// else the checkpoint's (1.0 without). Ignored by f16 and q8_0 caches.
    pub kv_scales: Option<KvScalesMode>,
    /// LoRA adapters merged into the weights at load (GGUF adapter files or PEFT adapter
    /// directories, applied in order; see `rocmforge_runtime::lora`).
    pub adapters: Vec<PathBuf>,
    /// Sliding-window layers give back the KV blocks behind their window (see the module
    /// header); false keeps every block of every layer until the sequence ends. Default true.
    pub free_sliding_window: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            n_ctx: None,
            kv: KvBudget::Auto,
            device: None,
            max_batch_tokens: rocmforge_runtime::exec::DEFAULT_MAX_BATCH_TOKENS,
            kv_cache_type: None,
            kv_scales: None,
            adapters: Vec::new(),
            free_sliding_window: true,
        }
    }
}

/// The KV pool in `layout`'s blocks for a budget of `n_blocks_all` blocks over every layer (the
/// same memory: a block of `n_slots` layers instead of all of them), and the longest context,
/// at most `n_ctx`, that one sequence can reach in it computed in chunks of `max_chunk` tokens
/// (so the scheduler can always make progress). Returns (blocks, context).
pub fn size_kv_pool(layout: &KvLayout, n_blocks_all: usize, n_ctx: usize, max_chunk: usize) -> (usize, usize) {
    let kinds = layout.kinds();
    if kinds.len() == 1 && kinds[0] == KvKind::Full {
        return (n_blocks_all, n_ctx.min(n_blocks_all * BLOCK_SIZE));
    }
    let n_blocks = if kinds.len() == 1 { n_blocks_all } else { n_blocks_all * layout.n_kv_layers() / layout.n_slots().max(1) };
    let n_blocks = n_blocks.max(kinds.len());
    let fits = |n: usize| crate::kv_manager::max_blocks_per_seq(&kinds, BLOCK_SIZE, n, max_chunk.max(1)) <= n_blocks;
    // Largest n in [BLOCK_SIZE, n_ctx] that fits (blocks needed grow with n); one block per
    // group always fits.
    let (mut lo, mut hi) = (BLOCK_SIZE.min(n_ctx), n_ctx);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    (n_blocks, lo)
}

/// A model ready to run (see the module header).
pub struct Model {
    /// Taken by the engine thread when the model starts serving (`Engine::start`).
    /// (A Mutex only so `Model` is `Sync` and can be shared with the server: a backend is
    /// `Send` but not `Sync`; the lock is taken once.)
    pub(crate) exec: std::sync::Mutex<Option<Executor>>,
    n_out: usize,
    embedding: bool,
    kv_config: KvConfig,
    backend: String,
    src: ModelSource,
    tok: Arc<Tokenizer>,
    template: ChatTemplate,
    template_stops: Vec<String>,
    n_ctx: usize,
    n_train: usize,
    plugin: String,
    path: PathBuf,
    load_time: Duration,
    kv_bytes_per_token: usize,
    kv_cache_type: KvCacheType,
    kv_scales: Option<rocmforge_runtime::KvScales>,
    kv_layout: KvLayout,
    kv_block_bytes: usize,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("path", &self.path).field("arch", &self.src.arch()).field("n_ctx", &self.n_ctx).finish()
    }
}

impl Model {
    /// Load a `.gguf` file or a Hugging Face directory with the plugin that serves it.
    pub fn load(path: &Path, registry: &Registry, opts: &LoadOptions) -> Result<Model, EngineError> {
        let t0 = Instant::now();
        if !path.exists() {
            return Err(EngineError::ModelNotFound(path.to_path_buf()));
        }
        let mut src = ModelSource::open(path, registry)?;
        src.apply_adapters(&opts.adapters, registry)?;
        let plugin = registry.for_source(&src)?;
        let graph = build_graph(plugin, &src)?;
        let embedding = graph.embedding;
        let n_train = src.meta(&format!("{}.context_length", src.arch())).and_then(|v| v.as_u64()).map(|v| v as usize);
        // Encoders: the whole trained context (their inputs are short); decoders: Ollama's 4096.
        let default_ctx = if embedding { n_train.unwrap_or(512) } else { DEFAULT_CTX };
        let n_train = n_train.unwrap_or(DEFAULT_CTX);
        let mut n_ctx = opts.n_ctx.unwrap_or(default_ctx).min(n_train).max(BLOCK_SIZE);
        let geo: Vec<_> = graph.layers.iter().flatten().collect();
        let kv_type = match opts.kv_cache_type {
            Some(t) => t,
            None => kv_cache_type_from_env()?.unwrap_or_default(),
        };
        let kv_scales_mode = match opts.kv_scales {
            Some(m) => m,
            None => kv_scales_from_env()?.unwrap_or_default(),
        };
        // K and V per token over every layer, in the cache's element type.
        let kv_bytes_per_token: usize = geo.iter().map(|g| g.bytes_per_token(|d| kv_type.row_bytes(d))).sum::<usize>().max(1);
        let ctx_blocks = n_ctx.div_ceil(BLOCK_SIZE);
        let n_blocks = match opts.kv {
            KvBudget::Blocks(b) => b.max(1),
            KvBudget::Bytes(bytes) => (bytes / (kv_bytes_per_token * BLOCK_SIZE)).max(1),
            KvBudget::Fraction(f) => {
                let bytes = available_memory().ok_or_else(|| {
                    EngineError::Invalid("KV budget as a fraction: available memory unknown on this system; give a size".into())
                })?;
                ((bytes as f64 * f) as usize / (kv_bytes_per_token * BLOCK_SIZE)).max(1)
            }
            KvBudget::Auto => {
                let cap = (DEFAULT_KV_BYTES / (kv_bytes_per_token * BLOCK_SIZE)).max(ctx_blocks);
                (ctx_blocks * DEFAULT_PARALLEL).min(cap)
            }
        };
        let free_window = opts.free_sliding_window && std::env::var("ROCMFORGE_SLIDING_WINDOW_FREE").map_or(true, |v| v.trim() != "0");
        let layout = if free_window { KvLayout::by_kind(&graph) } else { KvLayout::single(&graph) };
        // One sequence always fits the pool, so the scheduler can always make progress.
        let (n_blocks, ctx) = size_kv_pool(&layout, n_blocks, n_ctx, opts.max_batch_tokens);
        n_ctx = ctx;
        let kv_config = KvConfig { block_size: BLOCK_SIZE, n_blocks };
        let device = match &opts.device {
            Some(d) => d.clone(),
            None => Device::from_env()?,
        };
        let mut exec = Executor::with_kv_layout(graph, &src, kv_config, layout.clone(), kv_type, opts.max_batch_tokens, device)?;
        let backend = exec.backend_name();
        tracing::info!("{}: running on {backend}", path.display());
        let (n_out, embedding) = (exec.n_out_cols(), exec.is_embedding());
        let kinds = layout.kinds();
        if kinds.iter().all(|k| *k == KvKind::Full) {
            tracing::info!(
                "KV cache: {n_blocks} blocks of {BLOCK_SIZE} tokens ({} tokens, {:.1} MiB {kv_type}, {kv_bytes_per_token} bytes per token); context {n_ctx} tokens per sequence",
                n_blocks * BLOCK_SIZE,
                (n_blocks * BLOCK_SIZE * kv_bytes_per_token) as f64 / (1 << 20) as f64
            );
        } else {
            // What the window saves: blocks one full-context sequence holds at most, with and
            // without giving blocks back, in this pool's blocks.
            let with = crate::kv_manager::max_blocks_per_seq(&kinds, BLOCK_SIZE, n_ctx, opts.max_batch_tokens);
            let without = n_ctx.div_ceil(BLOCK_SIZE) * kinds.len();
            let block_bytes = kv_block_bytes(&layout, kv_bytes_per_token);
            tracing::info!(
                "KV cache: {n_blocks} blocks of {BLOCK_SIZE} tokens x {} layers ({:.1} MiB {kv_type}, {kv_bytes_per_token} bytes per token over every layer), {}; sliding-window layers give back blocks behind their window: a {n_ctx}-token sequence holds at most {with} blocks ({without} without), the pool holds {} such sequences ({} without); context {n_ctx} tokens per sequence",
                layout.n_slots(),
                (n_blocks * block_bytes) as f64 / (1 << 20) as f64,
                layout.describe(),
                n_blocks / with.max(1),
                n_blocks / without.max(1),
            );
        }
        let (tok, template_src) = match (src.gguf(), src.hf()) {
            (Some(f), _) => (
                Tokenizer::from_gguf(f).map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))?,
                f.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_string),
            ),
            (None, Some(d)) => (
                Tokenizer::from_hf_dir(d.path()).map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))?,
                d.chat_template(),
            ),
            _ => return Err(EngineError::Tokenizer(format!("{}: unsupported model container", path.display()))),
        };
        if kv_scales_mode == KvScalesMode::Auto {
            crate::kv_calibration::calibrate_kv_scales(&mut exec, &tok, opts.max_batch_tokens)?;
        }
        let kv_scales = exec.kv_scales().cloned();
        let template = ChatTemplate::or_chatml(template_src.as_deref()).map_err(|e| EngineError::Template(e.to_string()))?;
        let template_stops = template.stop_strings().iter().map(|s| s.to_string()).collect();
        Ok(Model {
            exec: std::sync::Mutex::new(Some(exec)),
            n_out,
            embedding,
            kv_config,
            backend,
            plugin: plugin.name.clone(),
            src,
            tok: Arc::new(tok),
            template,
            template_stops,
            n_ctx,
            n_train,
            path: path.to_path_buf(),
            load_time: t0.elapsed(),
            kv_bytes_per_token,
            kv_cache_type: kv_type,
            kv_scales,
            kv_block_bytes: kv_block_bytes(&layout, kv_bytes_per_token),
            kv_layout: layout,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF architecture name (`llama`, `qwen2`, `gemma3`, `bert`, ...).
    pub fn arch(&self) -> &str {
        self.src.arch()
    }

    /// The name of the plugin that built the graph.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// Tokens per sequence.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// The context the model was trained for.
    pub fn n_ctx_train(&self) -> usize {
        self.n_train
    }

    /// Output columns: the vocabulary size for language models, the embedding width otherwise.
    pub fn n_out(&self) -> usize {
        self.n_out
    }

    pub fn n_vocab(&self) -> usize {
        self.tok.n_vocab()
    }

    pub fn is_embedding(&self) -> bool {
        self.embedding
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tok
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Stop strings the chat template implies (the ChatML fallback's turn markers).
    pub fn template_stops(&self) -> &[String] {
        &self.template_stops
    }

    pub fn source(&self) -> &ModelSource {
        &self.src
    }

    /// The backend the model runs on ("CPU (Avx512, 16 threads)", "CUDA NVIDIA H100 ...").
    pub fn backend(&self) -> &str {
        &self.backend
    }

    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// KV cache geometry: blocks and tokens per block.
    pub fn kv_config(&self) -> KvConfig {
        self.kv_config
    }

    /// Bytes of KV cache one token takes over all layers.
    pub fn kv_bytes_per_token(&self) -> usize {
        self.kv_bytes_per_token
    }

    /// The KV cache's element type.
    pub fn kv_cache_type(&self) -> KvCacheType {
        self.kv_cache_type
    }

    /// The fp8 KV scales in use (checkpoint or calibrated); None: 1.0, or not an fp8 cache.
    pub fn kv_scales(&self) -> Option<&rocmforge_runtime::KvScales> {
        self.kv_scales.as_ref()
    }

    /// Run `f` on the model's executor before an engine takes it (None afterwards): for tests
    /// that inject faults at the backend seam (`Executor::fail_after`).
    pub fn with_executor<R>(&self, f: impl FnOnce(&mut Executor) -> R) -> Option<R> {
        self.exec.lock().ok()?.as_mut().map(f)
    }

    /// The KV cache groups (which layers share a block table; see the module header).
    pub fn kv_layout(&self) -> &KvLayout {
        &self.kv_layout
    }

    /// Bytes of KV cache one block of the pool takes (its `n_slots` layers, K and V).
    pub fn kv_block_bytes(&self) -> usize {
        self.kv_block_bytes
    }
}

/// Bytes of one pool block: `n_slots` layer planes of [`BLOCK_SIZE`] tokens (the layers share
/// one geometry, so a layer's share is the per-token bytes over the layers with K/V).
fn kv_block_bytes(layout: &KvLayout, kv_bytes_per_token: usize) -> usize {
    layout.n_slots() * BLOCK_SIZE * kv_bytes_per_token / layout.n_kv_layers().max(1)
}

#[cfg(test)]
mod tests {
    use super::{kv_cache_type_from_vars, size_kv_pool, KvBudget, KvCacheType, BLOCK_SIZE};
    use rocmforge_runtime::graph::{Graph, LayerKv};
    use rocmforge_runtime::{KvKind, KvLayout};

    fn graph(kinds: impl Iterator<Item = KvKind>) -> Graph {
        let layer = |kind| Some(LayerKv { n_head_kv: 1, head_dim_k: 64, head_dim_v: 64, kind, v_in_k: false });
        Graph { layers: kinds.map(layer).collect(), ..Default::default() }
    }

    /// The pool keeps the budget's memory in smaller blocks, and the context is the longest one
    /// sequence can reach (checked against the manager's bound by `kv_window_tests.rs`).
    #[test]
    fn kv_pool_sizing_keeps_the_memory_and_one_sequence_fits() {
        let gemma3 = graph((0..18).map(|il| if il % 6 == 5 { KvKind::Full } else { KvKind::Sliding(512) }));
        let (l, one) = (KvLayout::by_kind(&gemma3), KvLayout::single(&gemma3));
        // 1024 blocks of 18 layers = 6144 blocks of 3 layers; a 4096-token sequence takes 256
        // full blocks + 5 x 65 sliding ones (window 511 + chunk 512 tokens, plus one).
        assert_eq!(size_kv_pool(&l, 1024, 4096, 512), (6144, 4096));
        assert_eq!(size_kv_pool(&one, 1024, 4096, 512), (1024, 4096));
        // A small budget: below the window nothing is given back, so the context is what the
        // one-group layout allows (10 blocks of 16 tokens), not more.
        assert_eq!(size_kv_pool(&l, 10, 256, 512), (60, 160));
        assert_eq!(size_kv_pool(&one, 10, 256, 512), (10, 160));
        // Past the window the sliding groups stop growing: 100 blocks of 18 layers hold 1600
        // tokens of one sequence; 600 blocks of 3 layers hold any n with ceil(n / 16) + 5 x 65
        // <= 600, i.e. up to 4400 tokens (capped at the 4096 asked for).
        assert_eq!(size_kv_pool(&l, 100, 4096, 512), (600, 4096));
        assert_eq!(size_kv_pool(&one, 100, 4096, 512), (100, 1600));
        assert_eq!(size_kv_pool(&l, 100, 8192, 512), (600, 4400));
        // One sliding kind (Mistral): one group, its blocks as many as the budget's; a sequence
        // never holds more than ceil((4095 + 512) / 16) + 1 = 289 of them.
        let mistral = graph((0..4).map(|_| KvKind::Sliding(4096)));
        assert_eq!(size_kv_pool(&KvLayout::by_kind(&mistral), 300, 32768, 512), (300, 32768));
        assert_eq!(size_kv_pool(&KvLayout::by_kind(&mistral), 288, 32768, 512), (288, 288 * BLOCK_SIZE));
        let w = graph((0..4).map(|_| KvKind::Sliding(64)));
        // ceil((63 + 512) / 16) + 1 = 37 blocks at most, whatever the length.
        assert_eq!(size_kv_pool(&KvLayout::by_kind(&w), 37, 32768, 512), (37, 32768));
        assert_eq!(size_kv_pool(&KvLayout::by_kind(&w), 36, 32768, 512), (36, 36 * BLOCK_SIZE));
    }

    #[test]
    fn kv_cache_type_from_env_prefers_ours_and_names_bad_values() {
        let env = |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|p| p.0 == k).map(|p| p.1.to_string());
        assert_eq!(kv_cache_type_from_vars(env(&[])).unwrap(), None);
        assert_eq!(kv_cache_type_from_vars(env(&[("OLLAMA_KV_CACHE_TYPE", " ")])).unwrap(), None);
        assert_eq!(kv_cache_type_from_vars(env(&[("OLLAMA_KV_CACHE_TYPE", "q8_0")])).unwrap(), Some(KvCacheType::Q8_0));
        assert_eq!(kv_cache_type_from_vars(env(&[("OLLAMA_KV_CACHE_TYPE", "f16")])).unwrap(), Some(KvCacheType::F16));
        assert_eq!(
            kv_cache_type_from_vars(env(&[("OLLAMA_KV_CACHE_TYPE", "q8_0"), ("ROCMFORGE_KV_CACHE_TYPE", "FP8")])).unwrap(),
            Some(KvCacheType::Fp8E4M3)
        );
        // Ollama's q4_0: refused, naming the variable, the value and the valid ones.
        let e = kv_cache_type_from_vars(env(&[("OLLAMA_KV_CACHE_TYPE", "q4_0")])).unwrap_err().to_string();
        assert!(e.contains("OLLAMA_KV_CACHE_TYPE") && e.contains("'q4_0'") && e.contains("f16|q8_0|fp8"), "{e}");
        let e = kv_cache_type_from_vars(env(&[("ROCMFORGE_KV_CACHE_TYPE", "bf16")])).unwrap_err().to_string();
        assert!(e.contains("ROCMFORGE_KV_CACHE_TYPE") && e.contains("'bf16'"), "{e}");
    }

    #[test]
    fn kv_budget_parses_every_form_and_names_bad_input() {
        assert_eq!("auto".parse(), Ok(KvBudget::Auto));
        assert_eq!("4GiB".parse(), Ok(KvBudget::Bytes(4 << 30)));
        assert_eq!("512 MiB".parse(), Ok(KvBudget::Bytes(512 << 20)));
        assert_eq!("1000".parse(), Ok(KvBudget::Bytes(1000)));
        assert_eq!("0.25".parse(), Ok(KvBudget::Fraction(0.25)));
        assert_eq!("2048blocks".parse(), Ok(KvBudget::Blocks(2048)));
        let e = "1.5".parse::<KvBudget>().unwrap_err();
        assert!(e.contains("(0, 1]"), "{e}");
        let e = "lots".parse::<KvBudget>().unwrap_err();
        assert!(e.contains("'lots'"), "{e}");
    }
}
