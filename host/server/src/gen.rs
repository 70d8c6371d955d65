//! The request path every dialect shares: resolve the model name, lease the (loaded) model,
//! build the engine [`Request`], submit it, and read its events — streamed or collected.
//!
//! Invariants: a [`Job`] holds the model's lease and the event receiver; dropping the job (the
//! response body went away) drops both, which cancels the request in the engine and starts the
//! model's keep_alive countdown. [`Job::next`] always ends with exactly one `Event::Done`, also
//! when the engine's channel closed early (reported as an error end). Operator caps
//! (`--max-predict`) apply here, once for all dialects. So does the request cache
//! (`request_cache.rs`): a deterministic request that was answered before gets a [`Job`] whose
//! events come from the cache instead of the engine; a miss records its events while they pass.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use rocmforge_engine::request::{Constraint, Event, FinishReason, Finished, Request, TokenLogprob};

use crate::backend::{Backend, EventRx};
use crate::error::{ApiError, Dialect};
use crate::manager::{Lease, Resolved};
use crate::options::{GenOptions, KeepAlive};
use crate::Shared;

/// Resolve and lease a model, with errors in `d`'s shape.
pub async fn lease(st: &Shared, name: &str, num_ctx: Option<usize>, keep_alive: Option<KeepAlive>, d: Dialect) -> Result<Lease, ApiError> {
    let r = st.mgr.resolve(name).map_err(|e| ApiError::from(e).in_dialect(d))?;
    lease_resolved(st, &r, num_ctx, keep_alive, d).await
}

pub async fn lease_resolved(
    st: &Shared,
    r: &Resolved,
    num_ctx: Option<usize>,
    keep_alive: Option<KeepAlive>,
    d: Dialect,
) -> Result<Lease, ApiError> {
    st.mgr.acquire(r, num_ctx, keep_alive).await.map_err(|e| ApiError::from(e).in_dialect(d))
}

/// [`lease_resolved`] with every load option of the request (`num_ctx`, `kv_cache_type`).
pub async fn lease_load(
    st: &Shared,
    r: &Resolved,
    load: &crate::options::LoadOptions,
    keep_alive: Option<KeepAlive>,
    d: Dialect,
) -> Result<Lease, ApiError> {
    st.mgr.acquire_kv(r, load.num_ctx, load.kv_cache_type, keep_alive).await.map_err(|e| ApiError::from(e).in_dialect(d))
}

/// A submitted request.
pub struct Job {
    pub lease: Lease,
    rx: EventRx,
    pub prompt: Vec<u32>,
    pub t0: Instant,
    st: Shared,
    done: bool,
    /// A cache miss being recorded (stored at `Done` when the answer is complete).
    recording: Option<crate::request_cache::Recording>,
    /// Answered from the request cache: no tokens were computed.
    pub from_cache: bool,
}

impl Drop for Job {
    fn drop(&mut self) {
        self.st.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.done {
            // Dropping `rx` makes the forwarding task drop the engine stream: the request is
            // cancelled and its KV blocks are freed at the engine's next step.
            self.st.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Build and submit the engine request.
pub fn submit(
    st: &Shared,
    lease: Lease,
    prompt: Vec<u32>,
    opts: &GenOptions,
    constraint: Option<Constraint>,
    t0: Instant,
    d: Dialect,
) -> Result<Job, ApiError> {
    let backend: &Arc<dyn Backend> = &lease.model.backend;
    if prompt.is_empty() {
        return Err(ApiError::bad_request("the prompt is empty").in_dialect(d));
    }
    let mut req = Request::new(prompt.clone(), opts.sampling.clone());
    req.max_tokens = match (opts.max_tokens, st.cfg.max_predict) {
        (Some(a), Some(cap)) => Some(a.min(cap)),
        (a, cap) => a.or(cap),
    };
    req.stop = opts.stop.clone();
    req.stop.dedup();
    req.constraint = constraint;
    req.ignore_eos = opts.ignore_eos;
    let mut recording = None;
    if let Some(cache) = &st.request_cache {
        use crate::request_cache::Lookup;
        match cache.lookup(&lease.model, &req, t0) {
            Lookup::Hit(rx) => {
                st.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
                return Ok(Job { lease, rx, prompt, t0, st: st.clone(), done: false, recording: None, from_cache: true });
            }
            Lookup::Miss(r) => recording = Some(r),
            Lookup::Uncacheable => {}
        }
    }
    let rx = backend.submit(req).map_err(|e| ApiError::from(e).in_dialect(d))?;
    st.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    Ok(Job { lease, rx, prompt, t0, st: st.clone(), done: false, recording, from_cache: false })
}

impl Job {
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.lease.model.backend
    }

    /// The next event; `None` after the `Done` event.
    pub async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let ev = match self.rx.recv().await {
            Some(ev) => ev,
            None => Event::Done(Finished {
                reason: FinishReason::Error,
                stopped_by: None,
                error: Some("the engine stopped before the request finished".into()),
                metrics: Default::default(),
            }),
        };
        if let (Some(rec), Some(cache)) = (self.recording.as_mut(), self.st.request_cache.as_deref()) {
            rec.observe(cache, &ev);
        }
        if let Event::Done(f) = &ev {
            self.done = true;
            if self.from_cache {
                // A replayed answer computed no tokens: it counts as a request only.
                self.st.metrics.requests_total.fetch_add(1, Ordering::Relaxed);
            } else {
                self.st.metrics.record(&f.metrics, f.reason == FinishReason::Error);
            }
        }
        Some(ev)
    }
}

/// A collected completion plus the job facts the responses need.
pub struct Done {
    pub text: String,
    pub tokens: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
    pub fin: Finished,
    pub prompt: Vec<u32>,
    pub t0: Instant,
    pub load_duration: std::time::Duration,
    pub backend: Arc<dyn Backend>,
}

/// Run a job to the end and return everything the non-streaming responses need.
pub async fn run_to_end(job: Job) -> Done {
    let prompt = job.prompt.clone();
    let t0 = job.t0;
    let load_duration = job.lease.load_duration;
    let backend = job.backend().clone();
    let mut job = job;
    let (mut text, mut tokens, mut logprobs, mut fin) = (String::new(), Vec::new(), Vec::new(), None);
    while let Some(ev) = job.next().await {
        match ev {
            Event::Delta { text: t, tokens: ids, logprobs: lp } => {
                text.push_str(&t);
                tokens.extend(ids);
                logprobs.extend(lp);
            }
            Event::Done(f) => fin = Some(f),
        }
    }
    Done {
        text,
        tokens,
        logprobs,
        fin: fin.unwrap_or(Finished {
            reason: FinishReason::Error,
            stopped_by: None,
            error: Some("no result".into()),
            metrics: Default::default(),
        }),
        prompt,
        t0,
        load_duration,
        backend,
    }
}

/// A token's text for logprob listings (bytes lossily decoded, the bytes kept beside).
pub fn token_text(b: &dyn Backend, id: u32) -> (String, Vec<u8>) {
    let bytes = b.tokenizer().token_to_piece(id);
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// Ollama / OpenAI logprob entries: `{"token","logprob","bytes","top_logprobs":[...]}`.
pub fn logprobs_json(b: &dyn Backend, lps: &[TokenLogprob], with_top: bool) -> Vec<serde_json::Value> {
    lps.iter()
        .map(|lp| {
            let (t, bytes) = token_text(b, lp.token);
            let mut v = serde_json::json!({ "token": t, "logprob": lp.logprob, "bytes": bytes });
            if with_top {
                let top: Vec<serde_json::Value> = lp
                    .top
                    .iter()
                    .map(|(id, l)| {
                        let (t, bytes) = token_text(b, *id);
                        serde_json::json!({ "token": t, "logprob": l, "bytes": bytes })
                    })
                    .collect();
                v["top_logprobs"] = serde_json::Value::Array(top);
            }
            v
        })
        .collect()
}
