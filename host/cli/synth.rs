//! `rocmforge synth` (dev-only, hidden from `--help`): writes a GGUF with the shape of a real model
//! and random weights, for speed measurements where values do not matter (DESIGN.md §6: the GPU
//! machine has no network, so big models are made there). The benchmark harness
//! (`scripts/gpu-bench/run.sh`) runs our `bench` and llama.cpp's `llama-bench` on these files.
//!
//! How: a `QuantInput` whose tensors are F32 values generated on the fly, fed to the model
//! crate's quantizer. So the output has exactly llama-quantize's per-tensor type mix for the file
//! type (Q6_K `output` and half the `attn_v` / `ffn_down` in Q4_K_M, F32 norms, ...) and the
//! tensor byte counts of perf.md §10, whose models were made by llama-quantize (checked by the
//! tests below). Values are uniform in ±0.02·√3 (std 0.02, the usual init) and norm weights are
//! 1, so activations stay finite in every engine; throughput does not depend on the values.
//!
//! Deterministic: values depend only on `--seed`, the tensor name and the position (generated
//! in fixed chunks, each from its own seed), never on the thread count. Speed: the quantizer is
//! the cost (Q4_K/Q6_K search the best scale per block); generation runs on all cores and rows
//! are quantized in parallel, see docs/benchmarks.md for measured times.
//!
//! Tokenizer: every `tokenizer.*` key is copied from `--vocab` (llama.cpp's
//! `models/ggml-vocab-llama-bpe.gguf` for the Llama-3 shapes), and its token count is n_vocab.
//!
//! Modelled on vLLM's `DummyModelLoader` (random weights for benchmarks) and on perf.md §10,
//! where the same shapes were made with llama-quantize.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rocmforge_model::gguf::{GgufFile, GgufValue};
use rocmforge_model::quantize::{quantize_model, FileType, QuantInput, QuantizeOptions, QuantizeReport};
use rocmforge_model::ModelError;
use rocmforge_quant::GgmlType;

/// Model shapes we benchmark (hyper-parameters of the public checkpoints' `config.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ShapeName {
    /// Meta-Llama-3-8B: untied output.
    #[value(name = "llama3-8b")]
    Llama3_8b,
    /// Llama-3.2-1B: output tied to token_embd.
    #[value(name = "llama3.2-1b")]
    Llama32_1b,
    /// SmolLM2-135M: tiny, for tests and quick checks.
    #[value(name = "smollm2-135m")]
    Smollm2_135m,
}

/// The hyper-parameters a shape fixes (n_vocab comes from the vocab file).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    pub n_embd: u64,
    pub n_layer: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub n_ff: u64,
    pub rope_theta: f32,
    pub n_ctx_train: u32,
    pub rms_eps: f32,
    /// No `output.weight`: the logits use `token_embd`.
    pub tied: bool,
}

impl ShapeName {
    pub fn shape(self) -> Shape {
        match self {
            ShapeName::Llama3_8b => Shape {
                n_embd: 4096,
                n_layer: 32,
                n_head: 32,
                n_head_kv: 8,
                n_ff: 14336,
                rope_theta: 500_000.0,
                n_ctx_train: 8192,
                rms_eps: 1e-5,
                tied: false,
            },
            ShapeName::Llama32_1b => Shape {
                n_embd: 2048,
                n_layer: 16,
                n_head: 32,
                n_head_kv: 8,
                n_ff: 8192,
                rope_theta: 500_000.0,
                n_ctx_train: 131_072,
                rms_eps: 1e-5,
                tied: true,
            },
            ShapeName::Smollm2_135m => Shape {
                n_embd: 576,
                n_layer: 30,
                n_head: 9,
                n_head_kv: 3,
                n_ff: 1536,
                rope_theta: 100_000.0,
                n_ctx_train: 8192,
                rms_eps: 1e-5,
                tied: true,
            },
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ShapeName::Llama3_8b => "llama3-8b",
            ShapeName::Llama32_1b => "llama3.2-1b",
            ShapeName::Smollm2_135m => "smollm2-135m",
        }
    }
}

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Model shape.
    #[arg(long, value_enum)]
    pub shape: ShapeName,
    /// File type, as for `quantize` (q4_k_m, q8_0, f16, ...): llama-quantize's type mix.
    #[arg(long = "type", value_name = "TYPE")]
    pub ty: FileType,
    /// GGUF whose `tokenizer.*` keys are copied (e.g. llama.cpp's models/ggml-vocab-llama-bpe.gguf).
    #[arg(long, value_name = "VOCAB.gguf")]
    pub vocab: PathBuf,
    /// Output file.
    pub output: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fewer layers than the shape has (for tests; changes the per-layer type mix accordingly).
    #[arg(long = "n-layer")]
    pub n_layer: Option<u32>,
    /// Worker threads (0 = all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
}

/// The synthetic model as the quantizer's input: F32 tensors generated when asked for.
pub struct SynthInput {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<(String, GgmlType, Vec<u64>)>,
    seed: u64,
    n_threads: usize,
}

/// Tensor names and dims (GGUF order, `ne0` first) of a llama-architecture model, as
/// llama.cpp's converter writes them (all F32 here: the quantizer picks the output types).
pub fn tensor_list(s: &Shape, n_vocab: u64) -> Vec<(String, GgmlType, Vec<u64>)> {
    let head_dim = s.n_embd / u64::from(s.n_head);
    let n_embd_kv = head_dim * u64::from(s.n_head_kv);
    let mut t = vec![("token_embd.weight".to_string(), vec![s.n_embd, n_vocab]), ("output_norm.weight".into(), vec![s.n_embd])];
    if !s.tied {
        t.push(("output.weight".into(), vec![s.n_embd, n_vocab]));
    }
    for il in 0..s.n_layer {
        let b = |n: &str| format!("blk.{il}.{n}.weight");
        t.extend([
            (b("attn_norm"), vec![s.n_embd]),
            (b("attn_q"), vec![s.n_embd, s.n_embd]),
            (b("attn_k"), vec![s.n_embd, n_embd_kv]),
            (b("attn_v"), vec![s.n_embd, n_embd_kv]),
            (b("attn_output"), vec![s.n_embd, s.n_embd]),
            (b("ffn_norm"), vec![s.n_embd]),
            (b("ffn_gate"), vec![s.n_embd, s.n_ff]),
            (b("ffn_up"), vec![s.n_embd, s.n_ff]),
            (b("ffn_down"), vec![s.n_ff, s.n_embd]),
        ]);
    }
    t.into_iter().map(|(n, d)| (n, GgmlType::F32, d)).collect()
}

/// `general.*` and `llama.*` keys as llama.cpp's converter writes them for these checkpoints,
/// then the tokenizer keys of `vocab`.
pub fn metadata(name: ShapeName, s: &Shape, vocab: &[(String, GgufValue)], n_vocab: u64) -> Vec<(String, GgufValue)> {
    let a = "llama";
    let head_dim = s.n_embd / u64::from(s.n_head);
    let u32v = |x: u64| GgufValue::U32(u32::try_from(x).unwrap_or(u32::MAX));
    let mut md = vec![
        ("general.architecture".to_string(), GgufValue::Str(a.into())),
        ("general.type".into(), GgufValue::Str("model".into())),
        ("general.name".into(), GgufValue::Str(format!("synthetic {} (random weights)", name.label()))),
        (format!("{a}.block_count"), GgufValue::U32(s.n_layer)),
        (format!("{a}.context_length"), GgufValue::U32(s.n_ctx_train)),
        (format!("{a}.embedding_length"), u32v(s.n_embd)),
        (format!("{a}.feed_forward_length"), u32v(s.n_ff)),
        (format!("{a}.attention.head_count"), GgufValue::U32(s.n_head)),
        (format!("{a}.attention.head_count_kv"), GgufValue::U32(s.n_head_kv)),
        (format!("{a}.rope.freq_base"), GgufValue::F32(s.rope_theta)),
        (format!("{a}.attention.layer_norm_rms_epsilon"), GgufValue::F32(s.rms_eps)),
        (format!("{a}.attention.key_length"), u32v(head_dim)),
        (format!("{a}.attention.value_length"), u32v(head_dim)),
        (format!("{a}.vocab_size"), u32v(n_vocab)),
        (format!("{a}.rope.dimension_count"), u32v(head_dim)),
    ];
    md.extend(vocab.iter().filter(|(k, _)| k.starts_with("tokenizer.")).cloned());
    md
}

impl SynthInput {
    /// The model of `shape` (with `n_layer` layers if given) and the tokenizer of `vocab`.
    pub fn new(shape: ShapeName, n_layer: Option<u32>, vocab: &GgufFile, seed: u64, n_threads: usize) -> Result<Self> {
        let mut s = shape.shape();
        if let Some(n) = n_layer {
            if n == 0 || n > s.n_layer {
                bail!("--n-layer {n}: {} has 1..={} layers", shape.label(), s.n_layer);
            }
            s.n_layer = n;
        }
        let n_vocab = vocab
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.len() as u64)
            .filter(|&n| n > 0)
            .with_context(|| format!("{}: no tokenizer.ggml.tokens", vocab.path().display()))?;
        let n_threads = if n_threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { n_threads };
        Ok(SynthInput { metadata: metadata(shape, &s, vocab.metadata(), n_vocab), tensors: tensor_list(&s, n_vocab), seed, n_threads })
    }
}

/// Values per independently seeded chunk: big enough that seeding costs nothing, small enough
/// to balance over threads. Fixed, so the values never depend on the thread count.
const CHUNK: usize = 1 << 16;

/// splitmix64: a fast, well-mixed generator, plenty for weights nobody reads.
fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a of a tensor name: its part of the seed.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Fill `out` (chunk `idx` of the tensor with seed `tseed`) with uniform values of std 0.02.
fn fill_chunk(out: &mut [f32], tseed: u64, idx: usize) {
    const HALF_WIDTH: f32 = 0.02 * 1.732_050_8; // uniform(-a, a) has std a/√3
    let mut st = tseed ^ (idx as u64).wrapping_mul(0xd1b5_4a32_d192_ed03);
    splitmix64(&mut st);
    for pair in out.chunks_mut(2) {
        let r = splitmix64(&mut st);
        // Two 24-bit uniforms per draw (exactly representable in f32).
        for (i, v) in pair.iter_mut().enumerate() {
            let u = ((r >> (i * 32 + 8)) & 0xff_ffff) as f32 * (1.0 / (1u32 << 24) as f32);
            *v = (2.0 * u - 1.0) * HALF_WIDTH;
        }
    }
}

impl QuantInput for SynthInput {
    fn metadata(&self) -> Vec<(String, GgufValue)> {
        self.metadata.clone()
    }

    fn tensors(&self) -> Vec<(String, GgmlType, Vec<u64>)> {
        self.tensors.clone()
    }

    fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let dims = self
            .tensors
            .iter()
            .find(|t| t.0 == name)
            .map(|t| &t.2)
            .ok_or_else(|| ModelError::Other(format!("synthetic model has no tensor {name}")))?;
        let n = usize::try_from(dims.iter().product::<u64>()).map_err(|_| ModelError::Other(format!("{name} is too large")))?;
        if dims.len() == 1 {
            return Ok(vec![1.0; n]); // norm weights: identity scaling
        }
        // Contiguous runs of chunks on scoped threads (the quantizer's rayon pool is waiting on
        // this call, and std threads spare this crate a rayon dependency of its own).
        let mut v = vec![0.0f32; n];
        let tseed = self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ name_hash(name);
        let per_thread = n.div_ceil(CHUNK).div_ceil(self.n_threads.max(1)).max(1);
        std::thread::scope(|sc| {
            for (t, part) in v.chunks_mut(per_thread * CHUNK).enumerate() {
                sc.spawn(move || {
                    for (j, c) in part.chunks_mut(CHUNK).enumerate() {
                        fill_chunk(c, tseed, t * per_thread + j);
                    }
                });
            }
        });
        Ok(v)
    }

    fn arch(&self) -> Result<String, ModelError> {
        Ok("llama".into())
    }

    fn source_path(&self) -> PathBuf {
        PathBuf::from("<synthetic model>")
    }
}

/// Write the model `args` asks for; returns the quantizer's report.
pub fn run(args: &SynthArgs) -> Result<QuantizeReport> {
    let vocab = GgufFile::open(&args.vocab).with_context(|| format!("opening the vocab {}", args.vocab.display()))?;
    let input = SynthInput::new(args.shape, args.n_layer, &vocab, args.seed, args.threads)?;
    write(&input, &args.output, args.ty, args.threads)
}

/// Quantize `input` to `out` with a progress bar.
pub fn write(input: &SynthInput, out: &Path, ty: FileType, threads: usize) -> Result<QuantizeReport> {
    let mut opts = QuantizeOptions::new(ty);
    opts.n_threads = threads;
    // Progress in f32 bytes generated and quantized: tensors differ 1000x in size.
    let sizes: Vec<(&str, u64)> = input.tensors.iter().map(|t| (t.0.as_str(), t.2.iter().product::<u64>() * 4)).collect();
    let bar = ProgressBar::new(sizes.iter().map(|s| s.1).sum());
    bar.set_style(
        ProgressStyle::with_template("{spinner} synthesizing [{bar:40}] {percent}% {elapsed_precise} (eta {eta}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let progress = |_: usize, _: usize, name: &str| {
        bar.inc(sizes.iter().find(|s| s.0 == name).map_or(0, |s| s.1));
        bar.set_message(name.to_string());
    };
    let r = quantize_model(input, out, &opts, &progress).with_context(|| format!("writing {}", out.display()))?;
    bar.finish_and_clear();
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rocmforge_model::quantize::plan_model;

    /// Tokenizer metadata with `n` tokens (the type mix does not look at it).
    fn fake_vocab(n: usize) -> Vec<(String, GgufValue)> {
        use rocmforge_model::gguf::GgufArray;
        vec![("tokenizer.ggml.tokens".to_string(), GgufValue::Array(GgufArray::Str((0..n).map(|i| format!("t{i}")).collect())))]
    }

    fn input(shape: ShapeName, n_vocab: usize) -> SynthInput {
        let s = shape.shape();
        SynthInput {
            metadata: metadata(shape, &s, &fake_vocab(n_vocab), n_vocab as u64),
            tensors: tensor_list(&s, n_vocab as u64),
            seed: 0,
            n_threads: 2,
        }
    }

    fn tensor_bytes(shape: ShapeName, ty: FileType) -> u64 {
        let plan = plan_model(&input(shape, 128_256), &QuantizeOptions::new(ty)).unwrap();
        plan.iter().map(|p| p.to.row_bytes(p.dims[0]).unwrap() * p.dims.iter().skip(1).product::<u64>()).sum()
    }

    /// perf.md §10's models were made by llama-quantize from the same shapes; llama-bench's size
    /// (the sum of tensor bytes) equals ours only if every tensor got llama-quantize's type.
    #[test]
    fn sizes_match_llama_quantize_outputs_of_perf_md() {
        assert_eq!(tensor_bytes(ShapeName::Llama3_8b, FileType::Q4_K_M), 4_912_898_048);
        assert_eq!(tensor_bytes(ShapeName::Llama3_8b, FileType::Q8_0), 8_532_934_656);
        assert_eq!(tensor_bytes(ShapeName::Llama32_1b, FileType::Q4_K_M), 799_862_784);
        assert_eq!(tensor_bytes(ShapeName::Llama32_1b, FileType::F16), 2_471_763_968);
    }

    #[test]
    fn values_are_deterministic_bounded_and_thread_independent() {
        let mut a = input(ShapeName::Smollm2_135m, 300);
        let x = a.tensor_f32("blk.0.ffn_up.weight").unwrap();
        a.n_threads = 7;
        let y = a.tensor_f32("blk.0.ffn_up.weight").unwrap();
        assert_eq!(x, y);
        assert_eq!(x.len(), 576 * 1536);
        assert!(x.iter().all(|v| v.abs() <= 0.035));
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / x.len() as f64;
        let std = (x.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
        assert!(mean.abs() < 1e-3 && (std - 0.02).abs() < 1e-3, "mean {mean} std {std}");
        assert_ne!(x, a.tensor_f32("blk.0.ffn_gate.weight").unwrap(), "tensors must differ");
        assert!(a.tensor_f32("blk.0.attn_norm.weight").unwrap().iter().all(|&v| v == 1.0));
    }

    #[test]
    fn shapes_have_the_documented_tensors() {
        let t8 = tensor_list(&ShapeName::Llama3_8b.shape(), 128_256);
        assert_eq!(t8.len(), 3 + 32 * 9);
        assert!(t8.iter().any(|t| t.0 == "output.weight"));
        let t1 = tensor_list(&ShapeName::Llama32_1b.shape(), 128_256);
        assert_eq!(t1.len(), 2 + 16 * 9);
        assert!(!t1.iter().any(|t| t.0 == "output.weight"), "1B has a tied output");
        let k = t8.iter().find(|t| t.0 == "blk.0.attn_k.weight").unwrap();
        assert_eq!(k.2, vec![4096, 1024]);
    }
}
