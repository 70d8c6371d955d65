//! The executor: runs a shape-checked [`Graph`] for a batch of sequence chunks on a [`Backend`],
//! with attention over a paged KV cache.
//!
//! Built once per model: the [`Plan`] (memory layout, step order, fusions; `plan.rs`) and the
//! backend (weights, arena, KV cache; `backend/`). Per forward call: the batch is validated and
//! flattened into [`BatchMeta`] (`batch.rs`) before any K/V is written, then the backend runs
//! the plan.
//!
//! Batches: the tokens of several sequences are concatenated; each chunk carries its first
//! position and its KV block tables (blocks of `block_size` tokens; one table per KV group of the
//! executor's [`KvLayout`], one group unless built with [`Executor::with_kv_layout`]), and says
//! which output rows it wants. The KV block allocation itself belongs to the engine; the executor
//! only reads and writes the blocks it is given.
//!
//! Encoders: a graph with a POOL op (embeddings) needs each chunk to be a whole sequence
//! (`pos_start` 0), since a pooled row sums over every token of its sequence; its output then has
//! one row per chunk. Non-causal attention still goes through the KV cache (written, then read),
//! which keeps one attention path for every model.
//!
//! Intermediate dumps (for comparing a plugin's graph with another engine node by node): with
//! `ROCMFORGE_DUMP=DIR` in the environment when the executor is built (or after
//! [`Executor::set_dump`]), every forward call `c` writes each activation node `i`'s output as raw
//! little-endian f32, row-major `[rows, cols]` (rows = the batch's tokens in chunk order; after OUTPUT_ROWS, the rows
//! whose logits are wanted), to
//! `DIR/c{c:04}-n{i:04}-{name}.f32`, and appends one line per node to `DIR/index.tsv`:
//! `call  node  name  op  rows  cols  file`. `ROCMFORGE_DUMP_ONLY=name,name` (or `set_dump`'s
//! `only`) restricts the dump to those node names. The layout equals a ggml tensor with `ne = [cols,
//! rows]`, so `scripts/fixtures/llama_cpp_dump.py` (llama.cpp's eval callback) writes files that
//! compare directly. Off (the default) it costs one `Option` test per step.
//!
//! fp8 KV scales (`kv_scales.rs`): an executor with an fp8 cache takes the model's checkpoint
//! scales at construction, and [`Executor::calibrate_kv_scales`] measures them from a calibration
//! text instead; both reach the backend through [`Backend::set_kv_scales`] and are readable with
//! [`Executor::kv_scales`]. Other cache types ignore scales.

use std::path::PathBuf;

use crate::backend::cpu::CpuBackend;
use crate::backend::gpu::GpuBackend;
use crate::backend::Backend;
use crate::batch::BatchMeta;
use crate::dump::{Dump, Sink};
use crate::graph::Graph;
use crate::kv_layout::KvLayout;
use crate::kv_scales::{AmaxProbe, KvScales};
use crate::plan::Plan;
use crate::source::ModelSource;
use crate::RuntimeError;

/// Batches of up to this many tokens fit the arena allocated at construction by [`Executor::new`].
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 512;

/// Which logits a chunk wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    None,
    Last,
    All,
}

/// One sequence's part of a batch.
#[derive(Clone, Debug)]
pub struct SeqChunk<'a> {
    pub tokens: &'a [u32],
    /// Position of `tokens[0]` in its sequence (= tokens already in the KV cache).
    pub pos_start: usize,
    /// KV blocks of the sequence, covering at least `pos_start + tokens.len()` positions: of
    /// every layer in a one-group layout, else of KV group 0.
    pub block_table: &'a [u32],
    /// Block tables of KV groups 1.. (as long as `block_table`); empty in a one-group layout.
    /// Entries a sliding group gave back are [`NULL_BLOCK`](crate::NULL_BLOCK).
    pub group_tables: &'a [Vec<u32>],
    pub logits: Logits,
}

/// A batch of chunks run in one forward pass.
pub type SeqBatch<'a> = [SeqChunk<'a>];

/// Element type of the KV cache (f16, q8_0, fp8 E4M3); chosen per model at load with
/// [`Executor::with_kv_type`]. Both backends store every type (same layout and numerics).
pub use rocmforge_cpu::{KvCacheType, KV_CACHE_TYPES};

/// KV cache geometry and size.
#[derive(Clone, Copy, Debug)]
pub struct KvConfig {
    pub block_size: usize,
    pub n_blocks: usize,
}

/// Batch-invariant kernels process-wide: a row's arithmetic does not depend on the other rows
/// of its batch (see `rocmforge_cpu::set_batch_invariant`; a GPU backend will follow the same
/// switch).
pub fn set_batch_invariant(on: bool) {
    rocmforge_cpu::set_batch_invariant(on);
}

/// Where an executor runs: the CPU, or a GPU named by a spec (`auto`, `cuda:N`, `hip:N`; see
/// `rocmforge_gpu::DeviceSpec`). `auto` falls back to the CPU, with one log line saying why, when
/// no GPU opens or the model cannot run there; a named GPU that fails is an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Gpu(String),
}

impl Device {
    /// The device `ROCMFORGE_DEVICE` names; the CPU when it is unset or empty (the library's
    /// default, so tests and embedders get the CPU unless they ask).
    pub fn from_env() -> Result<Device, RuntimeError> {
        Self::env_or(Device::Cpu)
    }

    /// What the command line uses when `--device` is not given: `ROCMFORGE_DEVICE`, else
    /// `auto` (a GPU when one works, else the CPU with one log line saying why), as Ollama and
    /// llama.cpp users expect.
    pub fn user_default() -> Result<Device, RuntimeError> {
        Self::env_or(Device::Gpu("auto".into()))
    }

    fn env_or(default: Device) -> Result<Device, RuntimeError> {
        match std::env::var("ROCMFORGE_DEVICE") {
            Ok(v) if !v.trim().is_empty() => v.parse(),
            _ => Ok(default),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<Device, RuntimeError> {
        let t = s.trim().to_ascii_lowercase();
        if t == "cpu" {
            return Ok(Device::Cpu);
        }
        // Validate the spec now, so a typo fails at start-up rather than at model load.
        t.parse::<rocmforge_gpu::DeviceSpec>().map_err(|_| RuntimeError::BadDevice(s.to_string()))?;
        Ok(Device::Gpu(t))
    }
}

/// Open the GPU `spec` names and load the model there.
#[allow(clippy::too_many_arguments)]
fn gpu_backend(
    spec: &str,
    graph: &Graph,
    plan: &Plan,
    src: &ModelSource,
    kv_cfg: KvConfig,
    layout: &KvLayout,
    kv_type: KvCacheType,
    max_batch_tokens: usize,
) -> Result<GpuBackend, RuntimeError> {
    let spec: rocmforge_gpu::DeviceSpec = spec.parse().map_err(|_| RuntimeError::BadDevice(spec.to_string()))?;
    let dev = rocmforge_gpu::Device::open(spec)?;
    GpuBackend::new(dev, graph, plan, src, kv_cfg, layout, kv_type, max_batch_tokens)
}

pub struct Executor {
    graph: Graph,
    plan: Plan,
    backend: Box<dyn Backend>,
    dump: Option<Dump>,
    kv_type: KvCacheType,
    layout: KvLayout,
    /// fp8 scales in use (None: 1.0 everywhere, or not an fp8 cache).
    kv_scales: Option<KvScales>,
}

impl Executor {
    /// Plan `graph` and load its weights from `src` onto the CPU backend, with an arena for
    /// batches of up to [`DEFAULT_MAX_BATCH_TOKENS`] tokens.
    pub fn new(graph: Graph, src: &ModelSource, kv_cfg: KvConfig) -> Result<Executor, RuntimeError> {
        Self::with_max_batch_tokens(graph, src, kv_cfg, DEFAULT_MAX_BATCH_TOKENS)
    }

    /// [`new`](Self::new) with the arena sized for batches of `max_batch_tokens` tokens (the
    /// engine's token budget), so it is allocated once. Runs on the device `ROCMFORGE_DEVICE`
    /// names (the CPU by default; see [`Device`]).
    pub fn with_max_batch_tokens(
        graph: Graph,
        src: &ModelSource,
        kv_cfg: KvConfig,
        max_batch_tokens: usize,
    ) -> Result<Executor, RuntimeError> {
        Self::with_device(graph, src, kv_cfg, max_batch_tokens, Device::from_env()?)
    }

    /// [`with_max_batch_tokens`](Self::with_max_batch_tokens) on an explicit device.
    pub fn with_device(
        graph: Graph,
        src: &ModelSource,
        kv_cfg: KvConfig,
        max_batch_tokens: usize,
        device: Device,
    ) -> Result<Executor, RuntimeError> {
        Self::with_kv_type(graph, src, kv_cfg, KvCacheType::F16, max_batch_tokens, device)
    }

    /// [`with_device`](Self::with_device) with a KV cache of elements `kv_type` (on either
    /// backend; q8_0 needs head dims that are multiples of 32, an error naming them otherwise).
    pub fn with_kv_type(
        graph: Graph,
        src: &ModelSource,
        kv_cfg: KvConfig,
        kv_type: KvCacheType,
        max_batch_tokens: usize,
        device: Device,
    ) -> Result<Executor, RuntimeError> {
        let layout = KvLayout::single(&graph);
        Self::with_kv_layout(graph, src, kv_cfg, layout, kv_type, max_batch_tokens, device)
    }

    /// [`with_kv_type`](Self::with_kv_type) with the KV cache in `layout`'s groups (made from
    /// this graph, e.g. [`KvLayout::by_kind`]): `kv_cfg.n_blocks` blocks of `layout.n_slots()`
    /// layers each, and one block table per group in every chunk ([`SeqChunk::group_tables`]).
    pub fn with_kv_layout(
        graph: Graph,
        src: &ModelSource,
        kv_cfg: KvConfig,
        layout: KvLayout,
        kv_type: KvCacheType,
        max_batch_tokens: usize,
        device: Device,
    ) -> Result<Executor, RuntimeError> {
        layout.check(&graph).map_err(RuntimeError::KvCache)?;
        let plan = Plan::new(&graph)?;
        let backend: Box<dyn Backend> = match &device {
            Device::Cpu => Box::new(CpuBackend::new(&graph, &plan, src, kv_cfg, &layout, kv_type, max_batch_tokens)?),
            Device::Gpu(spec) => match gpu_backend(spec, &graph, &plan, src, kv_cfg, &layout, kv_type, max_batch_tokens) {
                Ok(b) => Box::new(b),
                Err(e) if spec == "auto" => {
                    if e.is_device_lost() {
                        tracing::warn!("device auto: running on the CPU ({e})");
                    } else {
                        tracing::info!("device auto: running on the CPU ({e})");
                    }
                    Box::new(CpuBackend::new(&graph, &plan, src, kv_cfg, &layout, kv_type, max_batch_tokens)?)
                }
                Err(e) => return Err(e),
            },
        };
        tracing::debug!("executor: {} steps, arena of {} columns, backend {}", plan.steps.len(), plan.peak_cols, backend.name());
        let mut exec = Executor {
            graph,
            plan,
            backend,
            kv_type,
            layout,
            kv_scales: None,
            dump: std::env::var_os("ROCMFORGE_DUMP").filter(|d| !d.is_empty()).map(|d| Dump {
                sink: Sink::Files(d.into()),
                call: 0,
                only: std::env::var("ROCMFORGE_DUMP_ONLY")
                    .unwrap_or_default()
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            }),
        };
        // The checkpoint's fp8 scales, if it has any (other cache types ignore them).
        if kv_type == KvCacheType::Fp8E4M3 {
            if let Some(scales) = KvScales::from_source(src, &exec.graph)? {
                exec.set_kv_scales(scales)?;
            }
        } else if (0..exec.graph.layers.len()).any(|il| src.tensor_info(&crate::kv_scales::gguf_k_name(il)).is_some()) {
            tracing::debug!("{}: fp8 KV cache scales ignored: the KV cache is {kv_type}", src.path().display());
        }
        Ok(exec)
    }

    /// Use these fp8 scales from now on (see `kv_scales.rs`; rows written before keep the
    /// scales they were written with, so set them before serving). Checked against the graph.
    /// Ignored, with a debug log, unless the cache is fp8. A backend that cannot apply them
    /// yet is warned about and keeps 1.0.
    pub fn set_kv_scales(&mut self, scales: KvScales) -> Result<(), RuntimeError> {
        if self.kv_type != KvCacheType::Fp8E4M3 {
            tracing::debug!("fp8 KV cache scales ignored: the KV cache is {}", self.kv_type);
            return Ok(());
        }
        scales.check(&self.graph)?;
        match self.backend.set_kv_scales(&scales) {
            Ok(()) => {
                tracing::info!("{}", scales.summary());
                self.kv_scales = Some(scales);
                Ok(())
            }
            Err(e @ RuntimeError::Unsupported { .. }) => {
                tracing::warn!("{e}; the fp8 KV cache keeps scale 1.0");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The fp8 scales in use; None when every scale is 1.0 (or the cache is not fp8).
    pub fn kv_scales(&self) -> Option<&KvScales> {
        self.kv_scales.as_ref()
    }

    /// Calibrate the fp8 scales (vLLM's `calculate_kv_scales`): run `tokens` as one sequence, in
    /// chunks of at most `max_chunk` tokens, through the model, take the absolute maximum of
    /// every layer's K and V per KV head, and set `amax * CALIBRATION_MARGIN / 448` as the scales
    /// (see `kv_scales.rs`). The sequence uses the first KV blocks of the pool (as many as fit;
    /// the text is cut to them) and nothing of it is kept: call it before serving. Returns the
    /// scales set, None when the cache is not fp8 (nothing is run).
    pub fn calibrate_kv_scales(&mut self, tokens: &[u32], max_chunk: usize) -> Result<Option<KvScales>, RuntimeError> {
        if self.kv_type != KvCacheType::Fp8E4M3 {
            tracing::debug!("fp8 KV scale calibration skipped: the KV cache is {}", self.kv_type);
            return Ok(None);
        }
        let kv = self.backend.kv_config();
        let n_groups = self.layout.n_groups().max(1);
        // One table per group, over disjoint blocks.
        let per_group = kv.n_blocks / n_groups;
        // Encoders (pooled outputs) take whole sequences only: one chunk.
        let max_chunk = max_chunk.max(1);
        let cap = if self.graph.embedding { max_chunk } else { usize::MAX };
        let tokens = &tokens[..tokens.len().min(per_group * kv.block_size).min(cap)];
        if tokens.is_empty() {
            return Err(RuntimeError::KvCache("fp8 scale calibration: no calibration tokens (or no KV blocks) to run".into()));
        }
        let nb = tokens.len().div_ceil(kv.block_size);
        let tables: Vec<Vec<u32>> = (0..n_groups).map(|g| ((g * nb) as u32..((g + 1) * nb) as u32).collect()).collect();
        let (probe, names) = AmaxProbe::new(&self.graph);
        let saved = self.dump.replace(Dump { sink: Sink::Amax(probe), call: 0, only: names });
        let mut run = || -> Result<(), RuntimeError> {
            let mut pos = 0;
            for ch in tokens.chunks(max_chunk) {
                let c = SeqChunk { tokens: ch, pos_start: pos, block_table: &tables[0], group_tables: &tables[1..], logits: Logits::Last };
                self.forward(std::slice::from_ref(&c))?;
                pos += ch.len();
            }
            Ok(())
        };
        let ran = run();
        let dump = std::mem::replace(&mut self.dump, saved);
        ran?;
        let Some(Dump { sink: Sink::Amax(probe), .. }) = dump else { unreachable!("the calibration dump was in place") };
        let scales = probe.scales(&self.graph, tokens.len());
        self.set_kv_scales(scales.clone())?;
        Ok(Some(scales))
    }

    /// Fault injection for tests of the layers above: after `after` more successful forward
    /// calls, every call fails with `err()` and runs nothing (see `backend::fault`; e.g.
    /// `fail_after(2, backend::fault::injected_device_loss)`).
    pub fn fail_after(&mut self, after: usize, err: impl Fn() -> RuntimeError + Send + 'static) {
        let kv = self.backend.kv_config();
        let inner = std::mem::replace(&mut self.backend, Box::new(crate::backend::fault::Detached(kv)));
        self.backend = Box::new(crate::backend::fault::FailAfter::new(inner, after, err));
    }

    /// Dump every node's output of the following forward calls into `dir` (created if missing;
    /// calls are numbered from 0 again), or stop dumping with `None`; `only` lists the node names
    /// to dump (empty: all). See the module doc.
    pub fn set_dump(&mut self, dir: Option<PathBuf>, only: &[&str]) -> Result<(), RuntimeError> {
        if let Some(d) = &dir {
            std::fs::create_dir_all(d).map_err(|e| RuntimeError::Dump { path: d.clone(), what: e.to_string() })?;
        }
        self.dump = dir.map(|dir| Dump { sink: Sink::Files(dir), call: 0, only: only.iter().map(|s| s.to_string()).collect() });
        Ok(())
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn kv_config(&self) -> KvConfig {
        self.backend.kv_config()
    }

    /// The KV cache's element type.
    pub fn kv_cache_type(&self) -> KvCacheType {
        self.kv_type
    }

    /// The KV groups: which layers share a block table (see [`KvLayout`]).
    pub fn kv_layout(&self) -> &KvLayout {
        &self.layout
    }

    /// Whether the output rows are embeddings (the plugin's OUTPUT kind) rather than logits.
    pub fn is_embedding(&self) -> bool {
        self.graph.embedding
    }

    /// Columns of the output (the vocabulary size for logits).
    pub fn n_out_cols(&self) -> usize {
        self.plan.n_out_cols
    }

    /// The backend's name, for logs.
    pub fn backend_name(&self) -> String {
        self.backend.name()
    }

    /// Run one forward pass. Returns the output rows (logits of the rows asked for, in chunk order;
    /// for a pooling embedding model one row per chunk) as a flat `[n_rows, n_out_cols]` slice.
    /// [`forward`](Self::forward) for greedy decoding: the index of the largest logit of every
    /// output row (first on ties), found on the device when the backend can (only token ids
    /// come back); `None` when it cannot (call `forward` and pick on the host). Not for dumps.
    pub fn forward_argmax(&mut self, batch: &SeqBatch) -> Result<Option<&[u32]>, RuntimeError> {
        if self.dump.is_some() {
            return Ok(None);
        }
        let meta = BatchMeta::new(batch, self.backend.kv_config(), self.layout.n_groups(), &self.plan)?;
        self.backend.forward_argmax(&self.graph, &self.plan, &meta)
    }

    pub fn forward(&mut self, batch: &SeqBatch) -> Result<&[f32], RuntimeError> {
        let meta = BatchMeta::new(batch, self.backend.kv_config(), self.layout.n_groups(), &self.plan)?;
        let out = self.backend.forward(&self.graph, &self.plan, &meta, self.dump.as_ref())?;
        if let Some(d) = &mut self.dump {
            d.call += 1;
        }
        Ok(out)
    }
}
