//! The serving engine: one thread owns the model and runs steps; callers (the CLI, the HTTP
//! server) talk to it over channels. `submit` returns a [`RequestStream`] of [`Event`]s;
//! dropping the stream or calling `cancel` cancels the request (its blocks are freed before the
//! next step).
//!
//! ```text
//!  callers ──Cmd (std mpsc)──▶ engine thread: loop {
//!                                 take commands (block when idle)
//!                                 schedule()            → chunks of many requests
//!                                 exec.forward(batch)   → one logits row per sampled chunk
//!                                 sample, detokenize, stop checks → Event (tokio mpsc) ──▶ streams
//!                              }
//! ```
//!
//! Invariants: every submitted request gets exactly one `Event::Done`; a request that fails
//! validation never reaches the batch (so it cannot fail others); when a forward pass fails,
//! every request in that batch ends with an error and the engine keeps serving — unless the
//! failure is a lost device (`RuntimeError::is_device_lost`: a GPU error that poisoned its
//! context), after which nothing can run: every request in flight (running or waiting) ends
//! with that error, later submissions and embeddings are refused with
//! [`EngineError::DeviceLost`], and [`Engine::device_lost`] says so (the server's model manager
//! then drops the model).
//! Modelled on vLLM v1's `EngineCore` busy loop (without its process split).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use rocmforge_runtime::exec::{Logits, SeqChunk};
use rocmforge_runtime::Executor;
use rocmforge_tokenizer::Tokenizer;
use tokio::sync::{mpsc as tmpsc, oneshot};

use crate::constraint::{ConstraintState, ConstraintVocab};
use crate::kv_manager::{KvCacheManager, RequestId};
use crate::output::TextOut;
use crate::request::{Event, FinishReason, Finished, Request, RequestMetrics};
use crate::sampler::{DryBreakers, Sampler};
use crate::scheduler::{SchedError, Scheduler, SchedulerConfig, SeqState};
use crate::stop::StopSequences;
use crate::{EngineError, Model};

/// Engine settings.
#[derive(Clone, Debug, Default)]
pub struct EngineConfig {
    pub scheduler: SchedulerConfig,
    /// Batch-invariant kernels: a request's greedy tokens do not depend on what else runs
    /// (`--deterministic`; costs prefill speed on K-quant models). Process-wide.
    pub deterministic: bool,
}

/// A snapshot of the engine's state (for `/metrics`, `/slots`, `ps`, tests).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_total: usize,
    pub kv_blocks_free: usize,
    pub kv_usage: f32,
    /// Prompt tokens looked up in / found in the prefix cache since start.
    pub prefix_queries: u64,
    pub prefix_hits: u64,
    pub steps: u64,
    pub preemptions: u64,
    /// Prompt-lookup drafts proposed / accepted since start.
    pub spec_drafted: u64,
    pub spec_accepted: u64,
}

enum Cmd {
    Submit { id: RequestId, req: Box<Request>, tx: tmpsc::UnboundedSender<Event>, t_submit: Instant },
    Cancel(RequestId),
    Embed { inputs: Vec<Vec<u32>>, reply: oneshot::Sender<Result<Vec<Vec<f32>>, EngineError>> },
    Stats(oneshot::Sender<EngineStats>),
    ResetPrefixCache(oneshot::Sender<bool>),
    Shutdown,
}

struct Shared {
    cmd: mpsc::Sender<Cmd>,
    model: Arc<Model>,
    /// Set once by the engine thread when the model's device is lost (the error's message).
    lost: Arc<OnceLock<String>>,
    next_id: AtomicU64,
    /// Requests submitted but not yet scheduled (for the busy check at submit time).
    pending: Arc<AtomicUsize>,
    max_waiting: usize,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = self.cmd.send(Cmd::Shutdown);
        if let Some(t) = self.thread.lock().ok().and_then(|mut g| g.take()) {
            let _ = t.join();
        }
    }
}

/// A handle to a running engine; clones share it. The engine stops when the last handle is
/// dropped (after the requests in flight end) or on [`Engine::shutdown`].
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

/// The events of one request; dropping it cancels the request.
pub struct RequestStream {
    id: RequestId,
    rx: tmpsc::UnboundedReceiver<Event>,
    cmd: mpsc::Sender<Cmd>,
    done: bool,
}

impl RequestStream {
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The next event (async); None after `Event::Done`.
    pub async fn recv(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let e = self.rx.recv().await;
        self.done = matches!(e, Some(Event::Done(_)) | None);
        e
    }

    /// The next event, blocking the thread (not for use inside an async runtime).
    pub fn blocking_recv(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let e = self.rx.blocking_recv();
        self.done = matches!(e, Some(Event::Done(_)) | None);
        e
    }

    /// Ask the engine to stop this request; its stream then ends with `FinishReason::Cancelled`.
    pub fn cancel(&self) {
        let _ = self.cmd.send(Cmd::Cancel(self.id));
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.done {
            self.cancel();
        }
    }
}

impl Engine {
    /// Start the engine thread for `model`.
    pub fn start(model: Model, cfg: EngineConfig) -> Result<Engine, EngineError> {
        let exec = model
            .exec
            .lock()
            .ok()
            .and_then(|mut e| e.take())
            .ok_or_else(|| EngineError::Invalid("the model is already running in an engine".into()))?;
        let model = Arc::new(model);
        if cfg.deterministic {
            rocmforge_runtime::exec::set_batch_invariant(true);
        }
        let (tx, rx) = mpsc::channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let lost = Arc::new(OnceLock::new());
        let max_waiting = cfg.scheduler.max_waiting;
        let thread = {
            let (model, pending, lost) = (model.clone(), pending.clone(), lost.clone());
            std::thread::Builder::new()
                .name("rocmforge-engine".into())
                .spawn(move || EngineLoop::run(exec, &model, cfg, rx, &pending, &lost))
                .map_err(|e| EngineError::Invalid(format!("cannot start the engine thread: {e}")))?
        };
        Ok(Engine {
            shared: Arc::new(Shared {
                cmd: tx,
                model,
                lost,
                next_id: AtomicU64::new(1),
                pending,
                max_waiting,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The error that made the model's device unusable, once a forward pass hit one (see the
    /// module header); the engine then refuses all work, so its owner should drop it.
    pub fn device_lost(&self) -> Option<String> {
        self.shared.lost.get().cloned()
    }

    fn check_device(&self) -> Result<(), EngineError> {
        match self.shared.lost.get() {
            Some(msg) => Err(EngineError::DeviceLost(msg.clone())),
            None => Ok(()),
        }
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.shared.model
    }

    /// Validate and queue a request. Errors: the request can never run on this model
    /// (`Invalid`, naming the numbers) or too many requests are waiting (`Busy`).
    pub fn submit(&self, req: Request) -> Result<RequestStream, EngineError> {
        let m = &self.shared.model;
        if m.is_embedding() {
            return Err(EngineError::Invalid(format!("{} is an embedding model: it does not generate text", m.path().display())));
        }
        if req.prompt.is_empty() {
            return Err(EngineError::Invalid("empty prompt".into()));
        }
        let n_vocab = m.n_vocab().min(m.n_out());
        if let Some(&t) = req.prompt.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(EngineError::Invalid(format!("token id {t} is out of range (vocabulary of {n_vocab})")));
        }
        if req.prompt.len() >= m.n_ctx() {
            return Err(EngineError::ContextOverflow { n_tokens: req.prompt.len(), n_ctx: m.n_ctx() });
        }
        self.check_device()?;
        let pending = self.shared.pending.fetch_add(1, Ordering::SeqCst);
        if pending >= self.shared.max_waiting {
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(EngineError::Busy { waiting: pending, limit: self.shared.max_waiting });
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tmpsc::unbounded_channel();
        self.shared.cmd.send(Cmd::Submit { id, req: Box::new(req), tx, t_submit: Instant::now() }).map_err(|_| EngineError::Stopped)?;
        Ok(RequestStream { id, rx, cmd: self.shared.cmd.clone(), done: false })
    }

    /// Embeddings of whole token sequences (an embedding model), batched into as few forward
    /// passes as the token budget allows; one row per input, in order.
    pub async fn embed(&self, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, EngineError> {
        let m = &self.shared.model;
        if !m.is_embedding() {
            return Err(EngineError::Invalid(format!("{} ({}) is not an embedding model", m.path().display(), m.arch())));
        }
        for (i, ids) in inputs.iter().enumerate() {
            if ids.is_empty() || ids.len() > m.n_ctx() {
                return Err(EngineError::Invalid(format!(
                    "input {i} has {} tokens; the model takes 1 to {} per input",
                    ids.len(),
                    m.n_ctx()
                )));
            }
            if let Some(&t) = ids.iter().find(|&&t| t as usize >= m.n_vocab()) {
                return Err(EngineError::Invalid(format!("input {i}: token id {t} is out of range (vocabulary of {})", m.n_vocab())));
            }
        }
        self.check_device()?;
        let (reply, rx) = oneshot::channel();
        self.shared.cmd.send(Cmd::Embed { inputs, reply }).map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// [`embed`](Self::embed) for synchronous callers.
    pub fn embed_blocking(&self, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, EngineError> {
        let rt = tokio::runtime::Builder::new_current_thread().build().map_err(|e| EngineError::Invalid(e.to_string()))?;
        rt.block_on(self.embed(inputs))
    }

    /// The engine's state now (answered between steps).
    pub async fn stats(&self) -> Result<EngineStats, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.shared.cmd.send(Cmd::Stats(reply)).map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)
    }

    /// [`stats`](Self::stats) for synchronous callers.
    pub fn stats_blocking(&self) -> Result<EngineStats, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.shared.cmd.send(Cmd::Stats(reply)).map_err(|_| EngineError::Stopped)?;
        rx.blocking_recv().map_err(|_| EngineError::Stopped)
    }

    /// Drop every cached prefix (refused, returning false, while requests hold blocks).
    pub async fn reset_prefix_cache(&self) -> Result<bool, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.shared.cmd.send(Cmd::ResetPrefixCache(reply)).map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)
    }

    /// Stop after the requests in flight end (new submissions fail with `Stopped`).
    pub fn shutdown(&self) {
        let _ = self.shared.cmd.send(Cmd::Shutdown);
    }
}

/// A request the loop is working on.
struct Live<'a> {
    tx: tmpsc::UnboundedSender<Event>,
    sampler: Sampler,
    text: TextOut<'a>,
    constraint: Option<ConstraintState>,
    max_tokens: usize,
    stop_ids: Vec<u32>,
    ignore_eos: bool,
    n_generated: usize,
    metrics: RequestMetrics,
    t_submit: Instant,
    t_scheduled: Option<Instant>,
    t_first_token: Option<Instant>,
    /// Takes prompt-lookup drafts.
    speculates: bool,
}

struct EngineLoop<'a> {
    exec: Executor,
    model: &'a Model,
    tok: &'a Tokenizer,
    sched: Scheduler,
    live: HashMap<RequestId, Live<'a>>,
    pending: &'a AtomicUsize,
    /// The device-lost message shared with the handles (set once, by `device_lost`).
    lost: &'a OnceLock<String>,
    /// DRY breaker tables per breaker list (built from the vocabulary once per list).
    dry: HashMap<Vec<String>, Arc<DryBreakers>>,
    constraint_vocab: Option<Arc<ConstraintVocab>>,
    shutting_down: bool,
    steps: u64,
    preemptions: u64,
    /// Drafts per step for prompt-lookup speculation (0 = off).
    prompt_lookup: usize,
    spec_drafted: u64,
    spec_accepted: u64,
    /// Request ids for embedding batches (never collide with submitted ones).
    next_internal: RequestId,
}

impl<'a> EngineLoop<'a> {
    fn run(
        exec: Executor,
        model: &'a Model,
        cfg: EngineConfig,
        rx: mpsc::Receiver<Cmd>,
        pending: &'a AtomicUsize,
        lost: &'a OnceLock<String>,
    ) {
        let kv = exec.kv_config();
        let kvm = KvCacheManager::with_groups(kv.n_blocks, kv.block_size, cfg.scheduler.enable_prefix_caching, &exec.kv_layout().kinds());
        let prompt_lookup = cfg.scheduler.prompt_lookup;
        let tok: &'a Tokenizer = model.tokenizer();
        let mut lp = EngineLoop {
            exec,
            model,
            tok,
            sched: Scheduler::new(cfg.scheduler, kvm),
            live: HashMap::new(),
            pending,
            lost,
            dry: HashMap::new(),
            constraint_vocab: None,
            shutting_down: false,
            steps: 0,
            preemptions: 0,
            prompt_lookup,
            spec_drafted: 0,
            spec_accepted: 0,
            next_internal: u64::MAX / 2,
        };
        loop {
            if lp.sched.is_idle() {
                if lp.shutting_down {
                    break;
                }
                match rx.recv() {
                    Ok(c) => lp.command(c),
                    Err(_) => break,
                }
            }
            while let Ok(c) = rx.try_recv() {
                lp.command(c);
            }
            if !lp.sched.is_idle() {
                lp.step();
            }
        }
    }

    fn command(&mut self, c: Cmd) {
        match c {
            Cmd::Submit { id, req, tx, t_submit } => self.admit(id, *req, tx, t_submit),
            Cmd::Cancel(id) => {
                if self.sched.finish(id).is_some() {
                    self.finish(id, FinishReason::Cancelled, None, None);
                }
            }
            Cmd::Embed { inputs, reply } => {
                let _ = reply.send(self.embed(&inputs));
            }
            Cmd::Stats(reply) => {
                let kv = self.sched.kv();
                let pc = kv.prefix_cache_stats();
                let _ = reply.send(EngineStats {
                    running: self.sched.num_running(),
                    waiting: self.sched.num_waiting(),
                    kv_blocks_total: kv.num_usable_blocks(),
                    kv_blocks_free: kv.num_free_blocks(),
                    kv_usage: kv.usage(),
                    prefix_queries: pc.queries,
                    prefix_hits: pc.hits,
                    steps: self.steps,
                    preemptions: self.preemptions,
                    spec_drafted: self.spec_drafted,
                    spec_accepted: self.spec_accepted,
                });
            }
            Cmd::ResetPrefixCache(reply) => {
                let _ = reply.send(self.sched.kv_mut().reset_prefix_cache());
            }
            Cmd::Shutdown => self.shutting_down = true,
        }
    }

    fn admit(&mut self, id: RequestId, req: Request, tx: tmpsc::UnboundedSender<Event>, t_submit: Instant) {
        let fail = |tx: &tmpsc::UnboundedSender<Event>, e: String| {
            let _ = tx.send(Event::Done(Finished {
                reason: FinishReason::Error,
                stopped_by: None,
                error: Some(e),
                metrics: RequestMetrics { prompt_tokens: req.prompt.len(), total_time: t_submit.elapsed(), ..Default::default() },
            }));
        };
        if self.shutting_down {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            return fail(&tx, EngineError::Stopped.to_string());
        }
        if let Some(msg) = self.lost.get() {
            // Submitted before the loss was known to the handle.
            self.pending.fetch_sub(1, Ordering::SeqCst);
            return fail(&tx, msg.clone());
        }
        let constraint = match &req.constraint {
            None => None,
            Some(c) => {
                let vocab = match &self.constraint_vocab {
                    Some(v) => Ok(v.clone()),
                    None => build_constraint_vocab(self.tok).inspect(|v| self.constraint_vocab = Some(v.clone())),
                };
                match vocab.and_then(|v| ConstraintState::new(c, &v).map_err(|e| e.to_string())) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        self.pending.fetch_sub(1, Ordering::SeqCst);
                        return fail(&tx, format!("invalid constraint: {e}"));
                    }
                }
            }
        };
        let seed = req.sampling.seed.unwrap_or_else(random_seed);
        let dry = (req.sampling.dry_multiplier > 0.0).then(|| {
            let tok = self.tok;
            let breakers = &req.sampling.dry_sequence_breakers;
            self.dry
                .entry(breakers.clone())
                .or_insert_with(|| Arc::new(DryBreakers::new(breakers, tok.n_vocab(), &|t| tok.token_to_piece(t))))
                .clone()
        });
        let sampler = Sampler::new(&req.sampling, seed, &req.prompt, dry);
        let stops = StopSequences::new(req.stop.iter().cloned());
        let room = self.model.n_ctx() - req.prompt.len();
        let live = Live {
            tx,
            sampler,
            text: TextOut::new(self.tok, req.skip_special, stops),
            constraint,
            max_tokens: req.max_tokens.unwrap_or(usize::MAX).min(room),
            stop_ids: req.stop_token_ids.clone(),
            ignore_eos: req.ignore_eos,
            n_generated: 0,
            metrics: RequestMetrics { prompt_tokens: req.prompt.len(), ..Default::default() },
            t_submit,
            t_scheduled: None,
            t_first_token: None,
            speculates: false,
        };
        // Speculation keeps the output exactly what one-token steps give only for greedy
        // requests without a grammar (sampling would need rejection sampling).
        let speculates = self.prompt_lookup > 0 && req.sampling.temperature <= 0.0 && req.constraint.is_none();
        let mut seq = SeqState::new(id, req.prompt, req.cache_salt);
        let mut live = live;
        live.speculates = speculates;
        if speculates {
            seq.max_draft = self.prompt_lookup.min(live.max_tokens.saturating_sub(1));
        }
        match self.sched.add_request(seq) {
            Ok(()) => {
                self.live.insert(id, live);
            }
            Err(e @ SchedError::Busy { .. }) | Err(e @ SchedError::Duplicate(_)) => {
                self.pending.fetch_sub(1, Ordering::SeqCst);
                self.live.insert(id, live);
                self.finish(id, FinishReason::Error, None, Some(e.to_string()));
            }
        }
    }

    /// One scheduler step: schedule, one forward pass, sample.
    fn step(&mut self) {
        let out = self.sched.schedule();
        let now = Instant::now();
        for &id in &out.first_scheduled {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            let cached = self.sched.get(id).map_or(0, |s| s.num_cached_tokens);
            if let Some(l) = self.live.get_mut(&id) {
                l.t_scheduled = Some(now);
                l.metrics.cached_tokens = cached;
            }
        }
        self.preemptions += out.preempted.len() as u64;
        for &id in &out.preempted {
            if let Some(l) = self.live.get_mut(&id) {
                l.metrics.preemptions += 1;
            }
            tracing::debug!("request {id} preempted (KV cache full); it will be recomputed");
        }
        if out.chunks.is_empty() {
            // Nothing fits although requests wait and none runs: cannot happen while a single
            // request always fits the pool (Model::load guarantees n_ctx <= KV capacity), but
            // never spin: fail the head of the queue.
            if self.sched.num_running() == 0 {
                if let Some(&id) = self.sched.ids().first() {
                    // `pending` counts requests never scheduled; a preempted one left it already.
                    if self.sched.finish(id).is_some_and(|s| !s.admitted) {
                        self.pending.fetch_sub(1, Ordering::SeqCst);
                    }
                    self.finish(id, FinishReason::Error, None, Some("the KV cache cannot hold this request".into()));
                }
            }
            return;
        }
        // Greedy steps (every sampled request takes the plain argmax, no drafts to verify, no
        // constraint): the backend picks the tokens where the logits are, if it can.
        let argmax_only = out
            .chunks
            .iter()
            .filter(|c| c.sample)
            .all(|c| c.num_draft == 0 && self.live.get(&c.id).is_some_and(|l| l.constraint.is_none() && l.sampler.is_plain_argmax()));
        let result = {
            let chunks: Vec<SeqChunk> = out
                .chunks
                .iter()
                .map(|c| {
                    let s = self.sched.get(c.id).expect("scheduled ids are known");
                    let tables = self.sched.kv().block_tables(c.id);
                    SeqChunk {
                        tokens: &s.tokens[c.start..c.start + c.len],
                        pos_start: c.start,
                        block_table: tables.first().map_or(&[], Vec::as_slice),
                        group_tables: tables.get(1..).unwrap_or(&[]),
                        logits: match (c.sample, c.num_draft) {
                            (false, _) => Logits::None,
                            (true, 0) => Logits::Last,
                            // Rows from the last verified token on (the chunk starts there).
                            (true, _) => Logits::All,
                        },
                    }
                })
                .collect();
            match if argmax_only { self.exec.forward_argmax(&chunks).map(|ids| ids.map(<[u32]>::to_vec)) } else { Ok(None) } {
                Ok(Some(ids)) => Ok(Picked::Tokens(ids)),
                Ok(None) => self.exec.forward(&chunks).map(|l| Picked::Logits(l.to_vec())),
                Err(e) => Err(e),
            }
        };
        // The sampled rows are copied out so sampling can borrow the loop mutably (the CPU
        // backend's rows are few: one per sampled sequence).
        let picked = match result {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("forward pass failed: {e}");
                if e.is_device_lost() {
                    return self.device_lost(&e);
                }
                for c in &out.chunks {
                    self.sched.finish(c.id);
                    self.finish(c.id, FinishReason::Error, None, Some(format!("forward pass failed: {e}")));
                }
                return;
            }
        };
        self.steps += 1;
        self.sched.on_step_done(&out);
        let logits = match picked {
            Picked::Tokens(ids) => {
                for (c, &t) in out.chunks.iter().filter(|c| c.sample).zip(&ids) {
                    if let Some(t) = self.emit_token(c.id, t, Vec::new()) {
                        self.sched.append_token(c.id, t);
                    }
                }
                return;
            }
            Picked::Logits(l) => l,
        };
        let n_out = self.exec.n_out_cols();
        let mut row = 0;
        for c in out.chunks.iter().filter(|c| c.sample) {
            let n_rows = 1 + c.num_draft;
            let l = &logits[row * n_out..(row + n_rows) * n_out];
            row += n_rows;
            if c.num_draft > 0 {
                self.spec_drafted += c.num_draft as u64;
                let s = self.sched.get(c.id).expect("scheduled ids are known");
                let drafts = s.tokens[s.tokens.len() - c.num_draft..].to_vec();
                self.verify(c.id, l, n_out, &drafts);
            } else if let Some(t) = self.emit(c.id, l) {
                self.sched.append_token(c.id, t);
            }
        }
    }

    /// Sample, record and stream one token of `id` from one row of logits. Returns the token
    /// when the request goes on (the caller hands it to the scheduler); None when it ended here.
    fn emit(&mut self, id: RequestId, logits: &[f32]) -> Option<u32> {
        let live = self.live.get_mut(&id)?;
        let mask = match live.constraint.as_mut().map(|c| c.mask().map(|m| m.to_vec())) {
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => {
                self.sched.finish(id);
                self.finish(id, FinishReason::Error, None, Some(format!("constraint: {e}")));
                return None;
            }
            None => None,
        };
        let s = live.sampler.sample(logits, mask.as_deref());
        self.emit_token(id, s.token, s.logprob.into_iter().collect())
    }

    /// Record and stream token `t` of `id` (sampled from its logits, or the backend's argmax).
    /// Returns the token when the request goes on; None when it ended here.
    fn emit_token(&mut self, id: RequestId, t: u32, logprobs: Vec<crate::TokenLogprob>) -> Option<u32> {
        let live = self.live.get_mut(&id)?;
        let now = Instant::now();
        live.sampler.accept(t);
        live.n_generated += 1;
        if live.t_first_token.is_none() {
            live.t_first_token = Some(now);
        }
        let eog = !live.ignore_eos && (self.tok.is_eog(t) || live.stop_ids.contains(&t));
        let mut finish: Option<(FinishReason, Option<String>)> = None;
        let mut commit_err = None;
        if let Some(c) = live.constraint.as_mut() {
            if let Err(e) = c.commit(t) {
                commit_err = Some(e.to_string());
            }
        }
        let text = if eog {
            finish = Some((FinishReason::Stop, self.tok.token_text(t).map(str::to_string)));
            String::new()
        } else {
            let (piece, stopped) = live.text.push(t);
            let piece = piece.to_string();
            if stopped {
                finish = Some((FinishReason::Stop, live.text.stopped_by().map(str::to_string)));
            }
            piece
        };
        if finish.is_none() && live.constraint.as_ref().is_some_and(|c| c.is_finished()) {
            finish = Some((FinishReason::Stop, None));
        }
        if finish.is_none() && live.n_generated >= live.max_tokens {
            finish = Some((FinishReason::Length, None));
        }
        let sent = live.tx.send(Event::Delta { text, tokens: vec![t], logprobs }).is_ok();
        let remaining = live.max_tokens - live.n_generated;
        if let Some(e) = commit_err {
            self.sched.finish(id);
            self.finish(id, FinishReason::Error, None, Some(format!("constraint: {e}")));
            return None;
        }
        if !sent {
            // The caller went away (dropped its stream): same as a cancel.
            self.sched.finish(id);
            self.finish(id, FinishReason::Cancelled, None, None);
            return None;
        }
        match finish {
            Some((reason, by)) => {
                self.sched.finish(id);
                self.finish(id, reason, by, None);
                None
            }
            None => {
                if self.prompt_lookup > 0 && live_speculates(&self.live, id) {
                    // A step yields at most drafts + 1 tokens: never past max_tokens.
                    self.sched.set_max_draft(id, self.prompt_lookup.min(remaining.saturating_sub(1)));
                }
                Some(t)
            }
        }
    }

    /// Verify a chunk's drafts: sample each row in turn as if decoding one token at a time;
    /// drafts are accepted while they equal the sampled token.
    fn verify(&mut self, id: RequestId, rows: &[f32], n_out: usize, drafts: &[u32]) {
        for (j, row) in rows.chunks_exact(n_out).enumerate() {
            let Some(t) = self.emit(id, row) else { return };
            if j < drafts.len() && t == drafts[j] {
                self.spec_accepted += 1;
                continue;
            }
            self.sched.resolve_drafts(id, j);
            self.sched.append_token(id, t);
            return;
        }
    }

    /// The model's device is gone (see the module header): record why, then end every request
    /// the engine holds (running, preempted or waiting) with that error and free its blocks.
    fn device_lost(&mut self, e: &rocmforge_runtime::RuntimeError) {
        let msg = self.lost.get_or_init(|| format!("the model's device failed and cannot be used again: {e}")).clone();
        tracing::error!("{}: {msg}; failing every request in flight", self.model.path().display());
        for id in self.sched.ids() {
            // `pending` counts requests never scheduled (a preempted one left it already).
            if self.sched.finish(id).is_some_and(|s| !s.admitted) {
                self.pending.fetch_sub(1, Ordering::SeqCst);
            }
            self.finish(id, FinishReason::Error, None, Some(msg.clone()));
        }
        let rest: Vec<RequestId> = self.live.keys().copied().collect();
        for id in rest {
            self.finish(id, FinishReason::Error, None, Some(msg.clone()));
        }
    }

    /// End a request that the scheduler no longer holds: flush its text and send `Done`.
    fn finish(&mut self, id: RequestId, reason: FinishReason, stopped_by: Option<String>, error: Option<String>) {
        let Some(mut l) = self.live.remove(&id) else { return };
        let now = Instant::now();
        if reason != FinishReason::Error && reason != FinishReason::Cancelled {
            let rest = l.text.finish().to_string();
            if !rest.is_empty() {
                let _ = l.tx.send(Event::Delta { text: rest, tokens: Vec::new(), logprobs: Vec::new() });
            }
        }
        let m = &mut l.metrics;
        m.completion_tokens = l.n_generated;
        m.queue_time = l.t_scheduled.unwrap_or(now) - l.t_submit;
        m.prompt_time = l.t_first_token.unwrap_or(now) - l.t_scheduled.unwrap_or(now);
        m.decode_time = l.t_first_token.map(|t| now - t).unwrap_or_default();
        m.total_time = now - l.t_submit;
        let _ = l.tx.send(Event::Done(Finished { reason, stopped_by, error, metrics: l.metrics }));
    }

    /// Pooled embeddings of whole sequences, as few forward passes as the token budget allows.
    fn embed(&mut self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EngineError> {
        if let Some(msg) = self.lost.get() {
            return Err(EngineError::DeviceLost(msg.clone()));
        }
        let budget = self.sched.config().max_num_batched_tokens.max(1);
        let n_out = self.exec.n_out_cols();
        let mut out = Vec::with_capacity(inputs.len());
        let mut i = 0;
        while i < inputs.len() {
            // A group of whole inputs within the budget (an input longer than it runs alone).
            let mut j = i + 1;
            let mut n = inputs[i].len();
            while j < inputs.len() && n + inputs[j].len() <= budget {
                n += inputs[j].len();
                j += 1;
            }
            let ids: Vec<RequestId> = (i..j)
                .map(|_| {
                    self.next_internal += 1;
                    self.next_internal
                })
                .collect();
            let kv = self.sched.kv_mut();
            let mut alloc = Ok(());
            for (id, inp) in ids.iter().zip(&inputs[i..j]) {
                alloc = alloc.and_then(|_| kv.allocate_slots(*id, inp.len(), &[]));
            }
            let res = alloc.map_err(EngineError::from).and_then(|_| {
                let chunks: Vec<SeqChunk> = ids
                    .iter()
                    .zip(&inputs[i..j])
                    .map(|(id, inp)| SeqChunk {
                        tokens: inp,
                        pos_start: 0,
                        block_table: self.sched.kv().block_table(*id),
                        group_tables: self.sched.kv().block_tables(*id).get(1..).unwrap_or(&[]),
                        logits: Logits::Last,
                    })
                    .collect();
                self.exec.forward(&chunks).map(<[f32]>::to_vec).map_err(EngineError::from)
            });
            for id in &ids {
                self.sched.kv_mut().free(*id);
            }
            let rows = match res {
                Ok(rows) => rows,
                Err(EngineError::Runtime(e)) if e.is_device_lost() => {
                    self.device_lost(&e);
                    return Err(EngineError::DeviceLost(self.lost.get().cloned().unwrap_or_else(|| e.to_string())));
                }
                Err(e) => return Err(e),
            };
            if rows.len() != (j - i) * n_out {
                return Err(EngineError::Invalid(format!(
                    "the model output {} values for {} inputs, expected one pooled row of {n_out} each (a model without pooling?)",
                    rows.len(),
                    j - i
                )));
            }
            out.extend(rows.chunks_exact(n_out).map(<[f32]>::to_vec));
            i = j;
        }
        Ok(out)
    }
}

/// Whether `id` takes drafts (greedy, no constraint).
fn live_speculates(live: &HashMap<RequestId, Live<'_>>, id: RequestId) -> bool {
    live.get(&id).is_some_and(|l| l.speculates)
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
}

fn build_constraint_vocab(tok: &Tokenizer) -> Result<Arc<ConstraintVocab>, String> {
    // Special tokens (`<|im_end|>`, ...) get llguidance's marker so a grammar never emits them
    // as if they were their text.
    let bytes: Vec<Vec<u8>> = (0..tok.n_vocab() as u32)
        .map(|t| {
            let piece = tok.token_to_piece(t);
            if tok.is_special(t) {
                let mut b = vec![crate::constraint::SPECIAL_TOKEN_MARKER];
                b.extend(piece);
                b
            } else {
                piece
            }
        })
        .collect();
    ConstraintVocab::new(bytes, &tok.eog_ids()).map_err(|e| e.to_string())
}

/// What a forward pass gave the sampler: the backend's argmax per sampled row, or the logits.
enum Picked {
    Tokens(Vec<u32>),
    Logits(Vec<f32>),
}
