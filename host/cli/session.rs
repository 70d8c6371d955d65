//! A loaded model with one sequence: what `run`, `generate` and `bench` drive.
//!
//! Loading: plugin registry → model source (GGUF or HF dir) → plugin builds the graph →
//! executor loads weights and plans memory; tokenizer and chat template come from the same file.
//! Generation: chunked prefill (at most `PREFILL_CHUNK` tokens per forward pass), then one token
//! per pass, KV blocks allocated from the engine's block pool. Tokens already in the KV cache
//! from the previous turn are reused when the new prompt starts with them (a one-sequence
//! prefix cache: an interactive chat re-sends the whole conversation every turn).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rocmforge_chat::ChatTemplate;
use rocmforge_engine::{BlockPool, Sampler, SamplerConfig, StopCheck, StopSequences};
use rocmforge_runtime::exec::{KvConfig, Logits, SeqChunk};
use rocmforge_runtime::{build_graph, Executor, ModelSource, Registry};
use rocmforge_tokenizer::{StreamDecoder, Tokenizer};

const PREFILL_CHUNK: usize = 512;
const KV_BLOCK: usize = 16;

pub struct Session {
    pub src: ModelSource,
    pub exec: Executor,
    pub tok: std::sync::Arc<Tokenizer>,
    pub template: ChatTemplate,
    /// Stop strings the chat template implies (`ChatTemplate::stop_strings`).
    pub template_stops: StopSequences,
    pub n_ctx: usize,
    pub plugin: String,
    pub load_time: Duration,
    pool: BlockPool,
    table: Vec<u32>,
    /// Tokens whose K/V are in the cache, in order.
    cached: Vec<u32>,
}

/// Timings of one generation, Ollama's `--verbose` fields.
#[derive(Debug, Default, Clone)]
pub struct GenStats {
    pub prompt_tokens: usize,
    pub prompt_cached: usize,
    pub prompt_time: Duration,
    pub gen_tokens: usize,
    pub gen_time: Duration,
    pub done_reason: &'static str,
}

impl GenStats {
    pub fn print_verbose(&self, total: Duration, load: Duration) {
        let rate = |n: usize, d: Duration| if d.as_secs_f64() > 0.0 { n as f64 / d.as_secs_f64() } else { 0.0 };
        eprintln!("total duration:       {:?}", total);
        eprintln!("load duration:        {:?}", load);
        eprintln!("prompt eval count:    {} token(s)", self.prompt_tokens - self.prompt_cached);
        eprintln!("prompt eval duration: {:?}", self.prompt_time);
        eprintln!("prompt eval rate:     {:.2} tokens/s", rate(self.prompt_tokens - self.prompt_cached, self.prompt_time));
        eprintln!("eval count:           {} token(s)", self.gen_tokens);
        eprintln!("eval duration:        {:?}", self.gen_time);
        eprintln!("eval rate:            {:.2} tokens/s", rate(self.gen_tokens, self.gen_time));
    }
}

/// Options of one generation.
#[derive(Clone, Debug)]
pub struct GenOptions {
    pub num_predict: usize,
    pub sampler: SamplerConfig,
    /// Stop at end-of-generation tokens (false: always produce `num_predict` tokens).
    pub stop_at_eog: bool,
    /// Stop strings (the text from the first match on is not shown).
    pub stop: StopSequences,
}

/// Generated ids → text to show, with stop sequences applied: what `run` and `generate` print.
/// Text that could still begin a stop string is held back until the next token decides it.
pub struct TextOut<'a> {
    dec: StreamDecoder<'a>,
    stops: StopSequences,
    text: String,
    shown: usize,
    stopped: bool,
}

impl<'a> TextOut<'a> {
    pub fn new(tok: &'a Tokenizer, skip_special: bool, stops: StopSequences) -> Self {
        TextOut { dec: tok.stream(skip_special), stops, text: String::new(), shown: 0, stopped: false }
    }

    /// Add a token; returns the text that may be shown now and whether a stop string ended it.
    pub fn push(&mut self, id: u32) -> (&str, bool) {
        let piece = self.dec.push(id);
        self.advance(piece)
    }

    /// Everything still held back, at the end of generation.
    pub fn finish(&mut self) -> &str {
        if self.stopped {
            return "";
        }
        let piece = self.dec.flush();
        self.text.push_str(&piece);
        let from = self.shown;
        self.shown = self.text.len();
        &self.text[from..]
    }

    /// The text shown so far (the reply, without any stop string).
    pub fn shown(&self) -> &str {
        &self.text[..self.shown]
    }

    fn advance(&mut self, piece: String) -> (&str, bool) {
        if self.stopped {
            return ("", true);
        }
        self.text.push_str(&piece);
        let from = self.shown;
        match self.stops.check(&self.text) {
            StopCheck::Emit(n) => self.shown = n.max(from),
            StopCheck::Stop(n) => {
                self.stopped = true;
                self.shown = n.max(from);
            }
        }
        (&self.text[from..self.shown], self.stopped)
    }
}

impl Session {
    pub fn load(path: &Path, registry: &Registry, n_ctx: Option<usize>) -> Result<Session> {
        let t0 = Instant::now();
        if !path.exists() {
            bail!("model not found: {}", path.display());
        }
        let src = ModelSource::open(path, registry)?;
        let plugin = registry.for_source(&src)?;
        let graph = build_graph(plugin, &src)?;
        let n_train = src.meta(&format!("{}.context_length", src.arch())).and_then(|v| v.as_u64()).unwrap_or(4096) as usize;
        // Ollama's default context is 4096; never more than the model was trained for.
        let n_ctx = n_ctx.unwrap_or(4096).min(n_train).max(KV_BLOCK);
        let n_blocks = n_ctx.div_ceil(KV_BLOCK);
        let exec = Executor::new(graph, &src, KvConfig { block_size: KV_BLOCK, n_blocks })?;
        if exec.is_embedding() {
            bail!("{} is an embedding model ({}): use `rocmforge embed`, it does not generate text", path.display(), src.arch());
        }
        let (tok, template_src) = match (src.gguf(), src.hf()) {
            (Some(f), _) => (
                Tokenizer::from_gguf(f).with_context(|| format!("tokenizer of {}", path.display()))?,
                f.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_string),
            ),
            (None, Some(d)) => {
                (Tokenizer::from_hf_dir(d.path()).with_context(|| format!("tokenizer of {}", path.display()))?, d.chat_template())
            }
            _ => bail!("unsupported model container"),
        };
        let template = ChatTemplate::or_chatml(template_src.as_deref()).context("chat template")?;
        let template_stops = StopSequences::new(template.stop_strings().iter().copied());
        let plugin = plugin.name.clone();
        Ok(Session {
            src,
            exec,
            tok: std::sync::Arc::new(tok),
            template,
            template_stops,
            n_ctx,
            plugin,
            load_time: t0.elapsed(),
            pool: BlockPool::new(n_blocks, KV_BLOCK),
            table: Vec::new(),
            cached: Vec::new(),
        })
    }

    /// Forget the KV cache.
    pub fn reset(&mut self) {
        let _ = self.pool.release(&mut self.table);
        self.cached.clear();
    }

    /// Run `tokens` through the model after the cached ones; returns the logits of the last
    /// token (or of every token with `all`).
    pub fn feed(&mut self, tokens: &[u32], all: bool) -> Result<Vec<f32>> {
        let total = self.cached.len() + tokens.len();
        if total > self.n_ctx {
            return Err(rocmforge_runtime::RuntimeError::ContextOverflow { n_tokens: total, n_ctx: self.n_ctx }.into());
        }
        self.pool.allocate_slots(&mut self.table, total)?;
        let mut out = Vec::new();
        for chunk in tokens.chunks(PREFILL_CHUNK) {
            let is_last = std::ptr::eq(chunk.as_ptr_range().end, tokens.as_ptr_range().end);
            let logits = if all {
                Logits::All
            } else if is_last {
                Logits::Last
            } else {
                Logits::None
            };
            let c = SeqChunk { tokens: chunk, pos_start: self.cached.len(), block_table: &self.table, logits };
            let l = self.exec.forward(std::slice::from_ref(&c))?;
            out.extend_from_slice(&l);
            self.cached.extend_from_slice(chunk);
        }
        Ok(out)
    }

    /// Generate from a prompt (already tokenized). `on_token` gets each new token and returns
    /// false to stop early.
    pub fn generate(&mut self, prompt: &[u32], opts: &GenOptions, mut on_token: impl FnMut(&Self, u32) -> bool) -> Result<GenStats> {
        if prompt.is_empty() {
            bail!("empty prompt");
        }
        if prompt.len() > self.n_ctx {
            return Err(rocmforge_runtime::RuntimeError::ContextOverflow { n_tokens: prompt.len(), n_ctx: self.n_ctx }.into());
        }
        // Reuse the cached prefix; at least the last prompt token is recomputed for its logits.
        let common = self.cached.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1);
        if common < self.cached.len() {
            self.cached.truncate(common);
            let keep = common.div_ceil(KV_BLOCK);
            let mut tail = self.table.split_off(keep);
            self.pool.release(&mut tail)?;
        }
        let mut stats = GenStats { prompt_tokens: prompt.len(), prompt_cached: common, ..Default::default() };
        let t0 = Instant::now();
        let mut logits = self.feed(&prompt[common..], false)?;
        stats.prompt_time = t0.elapsed();
        let mut sampler = Sampler::new(opts.sampler.clone());
        let mut history: Vec<u32> = prompt.to_vec();
        let t1 = Instant::now();
        stats.done_reason = "length";
        for _ in 0..opts.num_predict {
            let t = sampler.sample(&logits, &history);
            history.push(t);
            stats.gen_tokens += 1;
            if opts.stop_at_eog && self.tok.is_eog(t) {
                stats.done_reason = "stop";
                break;
            }
            if !on_token(self, t) {
                stats.done_reason = "stop";
                break;
            }
            if self.cached.len() + 1 > self.n_ctx {
                stats.done_reason = "length";
                break;
            }
            logits = self.feed(&[t], false)?;
        }
        stats.gen_time = t1.elapsed();
        Ok(stats)
    }
}
