//! The `rocmforge` command line: Ollama's verbs (`run`, `show`, `serve` to come) plus the tools
//! llama.cpp users expect (`generate`, `quantize`, `bench`) and `plugins`.
//!
//! Errors reach the user as one line naming what is wrong (anyhow context chains); logs go to
//! stderr through `tracing` (`RUST_LOG=debug` for more).

mod cli;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use cli::session::{GenOptions, Session, TextOut};
use rocmforge_engine::{SamplerConfig, StopSequences};
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
}

impl SampleArgs {
    fn options(&self, stop_at_eog: bool) -> GenOptions {
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
        });
        GenOptions {
            num_predict: self.num_predict,
            stop_at_eog,
            stop: StopSequences::new(self.stop.iter().cloned()),
            sampler: SamplerConfig {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repeat_penalty: self.repeat_penalty,
                repeat_last_n: self.repeat_last_n,
                seed,
            },
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
    /// List loaded architecture plugins and the architectures each serves.
    Plugins,
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
    },
    /// Sentence embeddings of an encoder model (BERT): prints {"model", "embeddings": [[...], ...]}.
    Embed {
        model: PathBuf,
        #[arg(required = true)]
        texts: Vec<String>,
    },
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
        Cmd::Plugins => {
            let reg = registry();
            if reg.plugins.is_empty() {
                println!(
                    "no plugins found; searched: {}",
                    rocmforge_runtime::plugin::search_path().iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                );
            }
            for p in &reg.plugins {
                let gguf: Vec<&str> = p.gguf_archs().collect();
                let hf: Vec<&str> = p.hf_archs().collect();
                println!("{:<10} {:<8} gguf: {:<24} hf: {:<30} {}", p.name, p.version, gguf.join(", "), hf.join(", "), p.path.display());
            }
            for f in &reg.failures {
                println!("FAILED     {}: {}", f.path.display(), f.error);
            }
        }
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
            let reg = registry();
            let mut s = Session::load(&model, &reg, sample.ctx_size)?;
            cli::chat::run(&mut s, prompt, &sample.options(true), verbose)?;
        }
        Cmd::Generate { model, prompt, verbose, ignore_eos, sample } => {
            let t0 = Instant::now();
            let reg = registry();
            let mut s = Session::load(&model, &reg, sample.ctx_size)?;
            let mut ids = Vec::new();
            if s.tok.add_bos() {
                ids.extend(s.tok.bos());
            }
            ids.extend(s.tok.encode(&prompt, false, false).context("tokenizing the prompt")?);
            let mut out = std::io::stdout().lock();
            let tok = s.tok.clone();
            let opts = sample.options(!ignore_eos);
            let mut text = TextOut::new(&tok, false, opts.stop.clone());
            let stats = s.generate(&ids, &opts, |_, t| {
                let (piece, stopped) = text.push(t);
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
                !stopped
            })?;
            let _ = out.write_all(text.finish().as_bytes());
            let _ = out.flush();
            if verbose {
                eprintln!();
                stats.print_verbose(t0.elapsed(), s.load_time);
            }
        }
        Cmd::Bench { model, n_prompt, n_gen, reps, json } => {
            let reg = registry();
            let mut s = Session::load(&model, &reg, Some((n_prompt + n_gen).max(16)))?;
            let res = cli::bench::run(&mut s, n_prompt, n_gen, reps.max(1))?;
            let threads = rocmforge_cpu::ThreadPool::global().n_threads();
            if json {
                let v: Vec<serde_json::Value> =
                    res.iter().map(|r| serde_json::json!({"test": r.test, "t/s": r.mean, "stddev": r.stddev})).collect();
                println!(
                    "{}",
                    serde_json::json!({"model": model.display().to_string(), "backend": "CPU", "threads": threads, "results": v})
                );
            } else {
                println!("| model | backend | threads | test | t/s |");
                println!("| --- | --- | --- | --- | --- |");
                for r in &res {
                    println!(
                        "| {} | CPU | {} | {} | {:.2} ± {:.2} |",
                        model.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
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
    }
    Ok(())
}
