//! The `rocmforge` command line: Ollama's verbs (`run`, `show`, `serve` to come) plus the tools
//! llama.cpp users expect (`generate`, `quantize`, `bench`) and `plugins`.
//!
//! Errors reach the user as one line naming what is wrong (anyhow context chains); logs go to
//! stderr through `tracing` (`RUST_LOG=debug` for more).

mod cli;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use rocmforge_engine::{EngineConfig, LoadOptions, PromptBuilder, Request, SamplingParams};
use rocmforge_runtime::Registry;

#[derive(Parser)]
#[command(name = "rocmforge", version, about = "Run LLMs (GGUF and Hugging Face) on AMD, NVIDIA and CPUs")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct SampleArgs {
    /// Maximum tokens to generate (Ollama's num_predict).
    #[arg(short = 'n', long = "num-predict", default_value_t = 512)]
    num_predict: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long = "top-k", default_value_t = 40)]
    top_k: usize,
    #[arg(long = "top-p", default_value_t = 0.9)]
    top_p: f32,
    #[arg(long = "min-p", default_value_t = 0.0)]
    min_p: f32,
    #[arg(long = "repeat-penalty", default_value_t = 1.1)]
    repeat_penalty: f32,
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    repeat_last_n: usize,
    /// Random seed (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop generating at this text (repeatable; Ollama's `stop` parameter).
    #[arg(long = "stop", value_name = "TEXT")]
    stop: Vec<String>,
    /// Context length in tokens (default 4096, at most the model's).
    #[arg(long = "ctx-size", short = 'c')]
    ctx_size: Option<usize>,
    /// Batch-invariant kernels: the same greedy output whatever else runs (slower prefill on
    /// K-quant models).
    #[arg(long)]
    deterministic: bool,
    /// Prompt-lookup speculative decoding: up to K draft tokens per step taken from the prompt
    /// and output so far, verified in one pass (greedy requests; same output, faster when the
    /// reply repeats its input, e.g. code edits).
    #[arg(long = "prompt-lookup", value_name = "K", default_value_t = 0)]
    prompt_lookup: usize,
    /// KV cache size: auto, a size (4GiB, 512MiB), a fraction of available memory (0.3) or N blocks.
    #[arg(long = "kv-budget", default_value = "auto")]
    kv_budget: rocmforge_engine::KvBudget,
    /// Where to run: cpu, auto (a GPU if one works, else the CPU), cuda:N or hip:N
    /// (default: $ROCMFORGE_DEVICE, else auto).
    #[arg(long)]
    device: Option<rocmforge_runtime::exec::Device>,
    /// KV cache element type: f16, q8_0 or fp8 (default: $ROCMFORGE_KV_CACHE_TYPE, else
    /// $OLLAMA_KV_CACHE_TYPE, else f16). CPU only for now; the GPU backend takes f16.
    #[arg(long = "kv-cache-type", value_name = "TYPE")]
    kv_cache_type: Option<rocmforge_engine::KvCacheType>,
    /// fp8 KV cache scales: checkpoint (the model's k_scale / v_scale, else 1.0) or auto
    /// (calibrated at load when the model has none) (default: $ROCMFORGE_KV_SCALES, else
    /// checkpoint). Ignored by f16 and q8_0 caches.
    #[arg(long = "kv-scales", value_name = "MODE")]
    kv_scales: Option<rocmforge_engine::KvScalesMode>,
}

impl SampleArgs {
    /// A request without its prompt: sampling options, limits and the user's stop strings.
    fn request(&self, stop_at_eog: bool) -> Request {
        let sampling = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
            ..SamplingParams::ollama_defaults()
        };
        // `--temperature 0` is plain greedy decoding (as before the engine, and as llama.cpp's
        // reference outputs are made): the repetition penalty only applies when sampling.
        let sampling = if self.temperature <= 0.0 { SamplingParams { repeat_penalty: 1.0, ..sampling } } else { sampling };
        let mut req = Request::new(Vec::new(), sampling);
        req.max_tokens = Some(self.num_predict);
        req.ignore_eos = !stop_at_eog;
        req.stop = self.stop.clone();
        req
    }

    fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            deterministic: self.deterministic,
            scheduler: rocmforge_engine::SchedulerConfig { prompt_lookup: self.prompt_lookup, ..Default::default() },
        }
    }

    fn load_options(&self) -> LoadOptions {
        LoadOptions {
            n_ctx: self.ctx_size,
            kv: self.kv_budget,
            device: cli_device(&self.device),
            kv_cache_type: self.kv_cache_type,
            kv_scales: self.kv_scales,
            ..Default::default()
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Chat with a model in the terminal (like `ollama run`), or answer one prompt.
    Run {
        model: PathBuf,
        prompt: Option<String>,
        /// Print prompt and generation speed after each answer.
        #[arg(long)]
        verbose: bool,
        #[command(flatten)]
        sample: SampleArgs,
    },
    /// Raw completion without a chat template; prints only the continuation.
    Generate {
        model: PathBuf,
        prompt: String,
        #[arg(long)]
        verbose: bool,
        /// Keep generating past end-of-generation tokens.
        #[arg(long)]
        ignore_eos: bool,
        #[command(flatten)]
        sample: SampleArgs,
    },
    /// Show a model's details (like `ollama show`).
    Show {
        model: PathBuf,
        /// Print the chat template.
        #[arg(long)]
        template: bool,
        /// List every tensor.
        #[arg(long, short = 'v')]
        verbose: bool,
    },
    /// List architecture plugins in precedence order (the first claiming an architecture serves
    /// it), with conflicts; `plugins check FILE.so` checks one plugin file.
    Plugins {
        #[command(subcommand)]
        cmd: Option<cli::plugins::PluginsCmd>,
    },
    /// Quantize a GGUF (F32/F16/BF16, or quantized with --allow-requantize) or a Hugging Face
    /// directory to TYPE (like llama-quantize): Q4_K_M, Q5_K_M, Q6_K, Q8_0, Q4_0, F16, ...
    Quantize {
        input: PathBuf,
        output: PathBuf,
        #[arg(value_name = "TYPE")]
        ty: String,
        /// Worker threads (0 = all cores).
        #[arg(long, short = 't', default_value_t = 0)]
        threads: usize,
        /// Allow re-quantizing tensors that are already quantized (loses quality).
        #[arg(long)]
        allow_requantize: bool,
        /// Use TYPE for every tensor: no per-tensor mixing rules.
        #[arg(long)]
        pure: bool,
    },
    /// Measure prompt processing and generation speed (like llama-bench).
    Bench {
        model: PathBuf,
        #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
        n_prompt: usize,
        #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
        n_gen: usize,
        #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
        reps: usize,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Serving benchmark instead (like vLLM's `bench serve`, in-process): this many
        /// requests in flight through the engine, each N_PROMPT random tokens in, exactly N_GEN
        /// out; prints throughput, time to first token and inter-token latency.
        #[arg(long)]
        concurrency: Option<usize>,
        /// Requests of the serving benchmark (default: 4 x concurrency).
        #[arg(long = "num-prompts")]
        num_prompts: Option<usize>,
        /// Batch-invariant kernels (see `run --deterministic`).
        #[arg(long)]
        deterministic: bool,
        /// Where to run: cpu, auto, cuda:N or hip:N (default: $ROCMFORGE_DEVICE, else auto).
        #[arg(long)]
        device: Option<rocmforge_runtime::exec::Device>,
    },
    /// Sentence embeddings of an encoder model (BERT): prints {"model", "embeddings": [[...], ...]}.
    Embed {
        model: PathBuf,
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// Start the HTTP server: Ollama, OpenAI and llama-server APIs on one port (like `ollama serve`).
    Serve(cli::serve::ServeArgs),
    /// List the models a running server knows (like `ollama list`).
    #[command(alias = "ls")]
    List,
    /// List the models a running server has loaded (like `ollama ps`).
    Ps,
    /// Pull a model through a running server (like `ollama pull`): `NAME[:TAG]` and
    /// `HOST/NAMESPACE/NAME:TAG` from an Ollama registry, `hf.co/ORG/REPO:QUANT` from Hugging Face.
    Pull {
        name: String,
        /// Plain http to the registry (a local or private registry without TLS).
        #[arg(long)]
        insecure: bool,
    },
    /// Remove models from the store through a running server (like `ollama rm`).
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Copy a model under a new name (like `ollama cp`).
    Cp { source: String, destination: String },
    /// Create a model from a Modelfile or a GGUF file (like `ollama create`).
    Create {
        name: String,
        /// The Modelfile (default: ./Modelfile).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// A GGUF file (or a model name) to create from, instead of a Modelfile.
        #[arg(long)]
        from: Option<String>,
    },
    /// Unload a model from a running server (like `ollama stop`).
    Stop { name: String },
    /// (dev) Write a random-weight GGUF of a known shape, for benchmarks.
    #[command(hide = true)]
    Synth(cli::synth::SynthArgs),
}

fn registry() -> Registry {
    let reg = Registry::discover();
    for f in &reg.failures {
        tracing::warn!("plugin {} not loaded: {}", f.path.display(), f.error);
    }
    reg
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = real_main(Cli::parse()) {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Show { model, template, verbose } => {
            let info = rocmforge_model::info::ModelInfo::open(&model)?;
            if template {
                match &info.chat_template {
                    Some(t) => println!("{t}"),
                    None => println!("(no chat template: ChatML is used)\n{}", rocmforge_chat::CHATML_TEMPLATE),
                }
            } else {
                print!("{}", info.render(verbose));
            }
        }
        Cmd::Plugins { cmd: None } => cli::plugins::list(&registry()),
        Cmd::Plugins { cmd: Some(cli::plugins::PluginsCmd::Check { file, model }) } => cli::plugins::check(&file, model.as_deref())?,
        Cmd::Quantize { input, output, ty, threads, allow_requantize, pure } => {
            let r = cli::quantize::run(&input, &output, &ty, threads, allow_requantize, pure, registry)?;
            let mib = |b: u64| b as f64 / (1 << 20) as f64;
            let types: Vec<String> = r.per_type_counts.iter().map(|(t, c)| format!("{t} {c}")).collect();
            println!(
                "{} -> {} ({}): {} tensors ({} converted), {:.1} MiB -> {:.1} MiB, {:.2?}; types: {}",
                input.display(),
                output.display(),
                r.ftype.name(),
                r.n_tensors,
                r.n_converted,
                mib(r.in_bytes),
                mib(r.out_bytes),
                r.elapsed,
                types.join(", ")
            );
        }
        Cmd::Run { model, prompt, verbose, sample } => {
            // Not a file or directory: a model name in the store, served by a running server
            // (as `ollama run NAME` talks to `ollama serve`).
            if !model.exists() && cli::client::server_up() {
                return cli::client::chat(&model.to_string_lossy(), prompt);
            }
            let reg = registry();
            let engine = cli::session::start_generator(&model, &reg, &sample.load_options(), sample.engine_config())?;
            cli::chat::run(&engine, prompt, &sample.request(true), verbose)?;
        }
        Cmd::Generate { model, prompt, verbose, ignore_eos, sample } => {
            let reg = registry();
            let engine = cli::session::start_generator(&model, &reg, &sample.load_options(), sample.engine_config())?;
            let mut req = sample.request(!ignore_eos);
            req.prompt = PromptBuilder::new(engine.model()).raw(&prompt, true, false).context("tokenizing the prompt")?;
            req.skip_special = false;
            let (_, fin) = cli::session::stream_to_stdout(&engine, req)?;
            if verbose {
                eprintln!();
                cli::session::print_verbose(&fin.metrics, engine.model().load_time());
            }
        }
        Cmd::Bench { model, n_prompt, n_gen, reps, json, concurrency, num_prompts, deterministic, device } => {
            let reg = registry();
            let n_ctx = (n_prompt + n_gen + 2).max(16);
            let cfg = EngineConfig { deterministic, ..Default::default() };
            if let Some(c) = concurrency {
                // KV for every request in flight at once.
                let kv = rocmforge_engine::KvBudget::Blocks(c.max(1) * n_ctx.div_ceil(rocmforge_engine::model::BLOCK_SIZE) + 1);
                let opts = LoadOptions { n_ctx: Some(n_ctx), kv, device: cli_device(&device), ..Default::default() };
                let engine = cli::session::start_generator(&model, &reg, &opts, cfg)?;
                let n_req = num_prompts.unwrap_or(4 * c).max(1);
                cli::bench::run_concurrent(&engine, n_prompt, n_gen.min(8), c, n_req.min(2))?; // warm-up
                let r = cli::bench::run_concurrent(&engine, n_prompt, n_gen, c, n_req)?;
                let row = |name: &str, (mean, med, p99): (f64, f64, f64)| {
                    println!("{:<28}{mean:>10.2}{med:>10.2}{p99:>10.2}", format!("{name} (mean/median/p99)"));
                };
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"model": model.display().to_string(), "concurrency": c, "requests": r.requests,
                            "duration_s": r.duration, "output_tokens": r.output_tokens, "output_tok_per_s": r.throughput(),
                            "ttft_ms": [r.ttft_ms.0, r.ttft_ms.1, r.ttft_ms.2], "itl_ms": [r.itl_ms.0, r.itl_ms.1, r.itl_ms.2]})
                    );
                } else {
                    println!("concurrency {c}, {} requests of {n_prompt} tokens in / {n_gen} out, {:.2} s", r.requests, r.duration);
                    println!("{:<28}{:>10.2}", "output tokens/s", r.throughput());
                    row("TTFT ms", r.ttft_ms);
                    row("ITL ms", r.itl_ms);
                }
                return Ok(());
            }
            let opts = LoadOptions { n_ctx: Some(n_ctx), device: cli_device(&device), ..Default::default() };
            let engine = cli::session::start_generator(&model, &reg, &opts, cfg)?;
            let res = cli::bench::run(&engine, n_prompt, n_gen, reps.max(1))?;
            let threads = rocmforge_cpu::ThreadPool::global().n_threads();
            if json {
                let v: Vec<serde_json::Value> =
                    res.iter().map(|r| serde_json::json!({"test": r.test, "t/s": r.mean, "stddev": r.stddev})).collect();
                println!(
                    "{}",
                    serde_json::json!({"model": model.display().to_string(), "backend": engine.model().backend(), "threads": threads, "results": v})
                );
            } else {
                println!("| model | backend | threads | test | t/s |");
                println!("| --- | --- | --- | --- | --- |");
                for r in &res {
                    println!(
                        "| {} | {} | {} | {} | {:.2} ± {:.2} |",
                        model.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
                        engine.model().backend(),
                        threads,
                        r.test,
                        r.mean,
                        r.stddev
                    );
                }
            }
        }
        Cmd::Embed { model, texts } => {
            let reg = registry();
            let v = cli::embed::run(&model, &texts, &reg)?;
            println!("{}", serde_json::json!({"model": model.display().to_string(), "embeddings": v}));
        }
        Cmd::Serve(args) => cli::serve::run(&args, registry())?,
        Cmd::List => cli::client::list()?,
        Cmd::Ps => cli::client::ps()?,
        Cmd::Pull { name, insecure } => cli::client::pull(&name, insecure)?,
        Cmd::Rm { names } => cli::client::rm(&names)?,
        Cmd::Cp { source, destination } => cli::client::cp(&source, &destination)?,
        Cmd::Create { name, file, from } => cli::client::create(&name, file.as_deref(), from.as_deref())?,
        Cmd::Stop { name } => cli::client::stop(&name)?,
        Cmd::Synth(args) => {
            let r = cli::synth::run(&args)?;
            let types: Vec<String> = r.per_type_counts.iter().map(|(t, c)| format!("{t} {c}")).collect();
            println!(
                "{} ({}, {}): {} tensors, {} bytes of tensor data, {:.2?}; types: {}",
                args.output.display(),
                args.shape.label(),
                r.ftype.name(),
                r.n_tensors,
                r.out_bytes,
                r.elapsed,
                types.join(", ")
            );
        }
    }
    Ok(())
}

/// The device of a command: `--device`, else `ROCMFORGE_DEVICE`, else auto. A malformed
/// `ROCMFORGE_DEVICE` gives None here so the model loader reports it.
fn cli_device(flag: &Option<rocmforge_runtime::exec::Device>) -> Option<rocmforge_runtime::exec::Device> {
    flag.clone().or_else(|| rocmforge_runtime::exec::Device::user_default().ok())
}
