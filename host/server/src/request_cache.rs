//! The opt-in cache of identical deterministic requests (`serve --request-cache N`,
//! `ROCMFORGE_REQUEST_CACHE`): a repeat of a greedy or seeded request is answered from the
//! events of its first run, without running the model.
//!
//! What makes two requests "identical" is the [`CacheKey`], built from the engine [`Request`]
//! every dialect hands the engine (so the same request over Ollama, OpenAI and llama-server hits
//! one entry, and each dialect renders the replayed events in its own shape, streamed or not):
//!
//! ```text
//!   model    resident instance id, file key, manifest digest, n_ctx, KV cache type, adapters (via key)
//!   prompt   the exact prompt token ids
//!   options  every field of the Request that can change the output, normalised:
//!            greedy (temperature <= 0) drops what the greedy path never reads (top_k, top_p,
//!            min_p, typical_p, XTC, mirostat, seed); disabled penalties / DRY drop their
//!            windows and constants; stops are sorted and deduplicated
//! ```
//!
//! Only deterministic requests are cacheable: temperature <= 0, or a sampling request with a
//! seed. A sampled request without a seed is never looked up nor stored (its answer is meant to
//! differ every time). Only complete answers are stored (finish reason stop or length; never an
//! error or a cancelled stream).
//!
//! Invariants: at most `capacity` entries, least recently used evicted first; every entry of a
//! model goes when its instance is retired (reload, unload, keep_alive expiry, eviction, delete)
//! or the model is created again ([`RequestCache::invalidate`]); hits and misses count only
//! cacheable lookups. A hit's `Finished` carries the counts of the original answer and the
//! timings of the hit itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use rocmforge_engine::request::{Event, FinishReason, Finished, Request, RequestMetrics, SamplingParams};

use crate::backend::EventRx;
use crate::manager::Resident;

/// The model side of a key: which loaded instance (and with what load options) answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ModelId {
    /// [`Resident::id`]: a reload is a new instance, so its answers never mix with the old one's.
    instance: u64,
    /// [`crate::manager::Resolved::key`]: the file (and adapters) the instance was loaded from.
    key: String,
    /// The store manifest's digest (a re-created model has a new one).
    digest: String,
    n_ctx: usize,
    kv_cache_type: String,
}

/// What identifies a deterministic request (see the module header).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    model: ModelId,
    prompt: Vec<u32>,
    /// The normalised options, as canonical text (f32 values in their round-trip spelling).
    options: String,
}

/// Whether a request's output is a function of its inputs: greedy, or sampled with a seed.
pub fn is_cacheable(req: &Request) -> bool {
    req.sampling.temperature <= 0.0 || req.sampling.seed.is_some()
}

/// The options that can change the output, with everything a stage that is off never reads
/// reset to neutral values (so that, e.g., greedy requests from dialects with different
/// top_k / top_p defaults share an entry).
fn normalised_sampling(p: &SamplingParams) -> SamplingParams {
    let neutral = SamplingParams::neutral();
    let mut s = p.clone();
    let penalties_off = s.repeat_penalty == 1.0 && s.frequency_penalty == 0.0 && s.presence_penalty == 0.0;
    if penalties_off || s.repeat_last_n == 0 {
        s.repeat_penalty = 1.0;
        s.frequency_penalty = 0.0;
        s.presence_penalty = 0.0;
        s.repeat_last_n = 0;
    }
    if s.dry_multiplier == 0.0 {
        s.dry_base = neutral.dry_base;
        s.dry_allowed_length = neutral.dry_allowed_length;
        s.dry_penalty_last_n = neutral.dry_penalty_last_n;
        s.dry_sequence_breakers = neutral.dry_sequence_breakers.clone();
    }
    if s.temperature <= 0.0 {
        // The greedy path: mask, logit_bias, penalties, DRY, argmax (the sampler's diagram).
        s.temperature = 0.0;
        s.top_k = neutral.top_k;
        s.top_p = neutral.top_p;
        s.min_p = neutral.min_p;
        s.typical_p = neutral.typical_p;
        s.xtc_probability = neutral.xtc_probability;
        s.xtc_threshold = neutral.xtc_threshold;
        s.mirostat = 0;
        s.mirostat_tau = neutral.mirostat_tau;
        s.mirostat_eta = neutral.mirostat_eta;
        s.seed = None;
    } else if s.mirostat != 0 {
        // Mirostat draws from its own truncation: the top-k .. XTC chain is not run.
        s.top_k = neutral.top_k;
        s.top_p = neutral.top_p;
        s.min_p = neutral.min_p;
        s.typical_p = neutral.typical_p;
        s.xtc_probability = neutral.xtc_probability;
        s.xtc_threshold = neutral.xtc_threshold;
    } else {
        s.mirostat_tau = neutral.mirostat_tau;
        s.mirostat_eta = neutral.mirostat_eta;
        if s.xtc_probability == 0.0 {
            s.xtc_threshold = neutral.xtc_threshold;
        }
    }
    s.logit_bias.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    s
}

/// The key of a request answered by `model`, or None when the request is not deterministic.
pub fn key_for(model: &Resident, req: &Request) -> Option<CacheKey> {
    if !is_cacheable(req) {
        return None;
    }
    let facts = model.backend.facts();
    let mut stop = req.stop.clone();
    stop.sort();
    stop.dedup();
    let mut stop_ids = req.stop_token_ids.clone();
    stop_ids.sort_unstable();
    stop_ids.dedup();
    let options = format!(
        "{:?}|max={:?}|stop={stop:?}|stop_ids={stop_ids:?}|ignore_eos={}|skip_special={}|constraint={:?}|salt={:?}",
        normalised_sampling(&req.sampling),
        req.max_tokens,
        req.ignore_eos,
        req.skip_special,
        req.constraint,
        req.cache_salt,
    );
    Some(CacheKey {
        model: ModelId {
            instance: model.id,
            key: model.resolved.key.clone(),
            digest: model.resolved.digest.clone(),
            n_ctx: facts.n_ctx,
            kv_cache_type: model.backend.kv_cache_type().map(|t| t.to_string()).unwrap_or_default(),
        },
        prompt: req.prompt.clone(),
        options,
    })
}

/// A stored answer: the deltas as the engine streamed them, and how it ended.
#[derive(Clone, Debug)]
struct Entry {
    deltas: Vec<Event>,
    fin: Finished,
    /// LRU stamp (the key of `Inner::order`).
    used: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<CacheKey, Entry>,
    /// LRU order: stamp -> key (the smallest stamp is the least recently used).
    order: BTreeMap<u64, CacheKey>,
    tick: u64,
}

impl Inner {
    fn touch(&mut self, key: &CacheKey) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.map.get_mut(key) {
            self.order.remove(&e.used);
            e.used = tick;
            self.order.insert(tick, key.clone());
        }
    }

    fn remove(&mut self, key: &CacheKey) {
        if let Some(e) = self.map.remove(key) {
            self.order.remove(&e.used);
        }
    }
}

/// The cache (shared by every dialect through the app state and the model manager).
pub struct RequestCache {
    capacity: usize,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// A recording in progress: the deltas of a miss, stored when the request completes.
pub struct Recording {
    key: CacheKey,
    deltas: Vec<Event>,
}

impl Recording {
    /// Take note of one event of the running request; at its `Done`, store the answer if it
    /// is complete.
    pub fn observe(&mut self, cache: &RequestCache, ev: &Event) {
        match ev {
            Event::Delta { .. } => self.deltas.push(ev.clone()),
            Event::Done(f) => {
                if matches!(f.reason, FinishReason::Stop | FinishReason::Length) && f.error.is_none() {
                    cache.insert(self.key.clone(), std::mem::take(&mut self.deltas), f.clone());
                }
            }
        }
    }
}

/// The outcome of a lookup.
pub enum Lookup {
    /// Answered from the cache: the events to read instead of the engine's.
    Hit(EventRx),
    /// Not cached yet: run the request and record it.
    Miss(Recording),
    /// Not a deterministic request: run it, store nothing.
    Uncacheable,
}

impl RequestCache {
    /// A cache of at most `capacity` answers (0 holds nothing: every lookup misses).
    pub fn new(capacity: usize) -> Self {
        RequestCache { capacity, inner: Mutex::new(Inner::default()), hits: AtomicU64::new(0), misses: AtomicU64::new(0) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Look `req` up for `model`; `t0` is when the request arrived (the hit's timings run from it).
    pub fn lookup(&self, model: &Resident, req: &Request, t0: Instant) -> Lookup {
        let Some(key) = key_for(model, req) else { return Lookup::Uncacheable };
        let found = {
            let mut g = self.lock();
            let e = g.map.get(&key).map(|e| (e.deltas.clone(), e.fin.clone()));
            if e.is_some() {
                g.touch(&key);
            }
            e
        };
        match found {
            Some((deltas, fin)) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Lookup::Hit(replay(deltas, fin, t0))
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                Lookup::Miss(Recording { key, deltas: Vec::new() })
            }
        }
    }

    fn insert(&self, key: CacheKey, deltas: Vec<Event>, fin: Finished) {
        if self.capacity == 0 {
            return;
        }
        let mut g = self.lock();
        g.remove(&key);
        while g.map.len() >= self.capacity {
            let Some((_, oldest)) = g.order.pop_first() else { break };
            g.map.remove(&oldest);
        }
        g.tick += 1;
        let used = g.tick;
        g.order.insert(used, key.clone());
        g.map.insert(key, Entry { deltas, fin, used });
    }

    /// Drop every entry of the model loaded from `model_key` ([`crate::manager::Resolved::key`]);
    /// returns how many went.
    pub fn invalidate(&self, model_key: &str) -> usize {
        let mut g = self.lock();
        let gone: Vec<CacheKey> = g.map.keys().filter(|k| k.model.key == model_key).cloned().collect();
        for k in &gone {
            g.remove(k);
        }
        gone.len()
    }
}

/// The events of a stored answer, ready on a channel: the deltas as first streamed, then a
/// `Done` with the original counts and the hit's own timings (time to the lookup as "prompt",
/// time to queue the deltas as "decode").
fn replay(deltas: Vec<Event>, fin: Finished, t0: Instant) -> EventRx {
    let looked_up = t0.elapsed();
    let (tx, rx) = tokio::sync::mpsc::channel(deltas.len() + 1);
    let t1 = Instant::now();
    for ev in deltas {
        // The channel holds every event: try_send cannot fail for lack of room.
        let _ = tx.try_send(ev);
    }
    let metrics = RequestMetrics {
        prompt_tokens: fin.metrics.prompt_tokens,
        cached_tokens: fin.metrics.cached_tokens,
        completion_tokens: fin.metrics.completion_tokens,
        queue_time: std::time::Duration::ZERO,
        prompt_time: looked_up,
        decode_time: t1.elapsed(),
        total_time: t0.elapsed(),
        preemptions: 0,
    };
    let _ = tx.try_send(Event::Done(Finished { metrics, ..fin }));
    rx
}

/// The cache's Prometheus samples (`/metrics`; zeros when the cache is off).
pub fn render_metrics(cache: Option<&RequestCache>) -> String {
    let (hits, misses, entries, cap) = cache.map_or((0, 0, 0, 0), |c| (c.hits(), c.misses(), c.len(), c.capacity()));
    let mut out = String::new();
    for (name, ty, help, v) in [
        ("rocmforge:request_cache_hits_total", "counter", "Deterministic requests answered from the request cache.", hits),
        ("rocmforge:request_cache_misses_total", "counter", "Deterministic requests not found in the request cache.", misses),
        ("rocmforge:request_cache_entries", "gauge", "Answers held by the request cache.", entries as u64),
        ("rocmforge:request_cache_capacity", "gauge", "Most answers the request cache holds (0: off).", cap as u64),
    ] {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {ty}\n{name} {v}\n"));
    }
    out
}

/// `--request-cache N` / `ROCMFORGE_REQUEST_CACHE`: entries, 0 or unset = off.
pub fn capacity_from_env() -> Result<Option<usize>, String> {
    match std::env::var("ROCMFORGE_REQUEST_CACHE") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse::<usize>()
            .map(|n| (n > 0).then_some(n))
            .map_err(|_| format!("ROCMFORGE_REQUEST_CACHE={v:?}: expected a number of entries")),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fake::{byte_tokenizer, Fake};
    use crate::backend::ModelFacts;
    use crate::manager::Resolved;
    use std::sync::Arc;

    fn resident(id: u64, key: &str) -> Resident {
        let facts = ModelFacts { n_ctx: 64, ..Default::default() };
        let backend = Arc::new(Fake { facts, tok: byte_tokenizer(), pieces: vec![], stats: None });
        Resident::for_tests(id, Resolved::for_tests(key), backend)
    }

    fn greedy(prompt: Vec<u32>) -> Request {
        let mut r = Request::new(prompt, SamplingParams::greedy());
        r.max_tokens = Some(4);
        r
    }

    fn done(n: usize) -> Finished {
        Finished {
            reason: FinishReason::Stop,
            stopped_by: None,
            error: None,
            metrics: RequestMetrics { prompt_tokens: 3, completion_tokens: n, ..Default::default() },
        }
    }

    fn delta(t: &str) -> Event {
        Event::Delta { text: t.into(), tokens: vec![1], logprobs: vec![] }
    }

    /// Run a miss to completion with `pieces` as the engine's answer.
    fn record(c: &RequestCache, m: &Resident, req: &Request, pieces: &[&str]) {
        let Lookup::Miss(mut rec) = c.lookup(m, req, Instant::now()) else { panic!("expected a miss") };
        for p in pieces {
            rec.observe(c, &delta(p));
        }
        rec.observe(c, &Event::Done(done(pieces.len())));
    }

    #[test]
    fn greedy_keys_ignore_what_greedy_never_reads() {
        let m = resident(1, "/m");
        let a = greedy(vec![1, 2, 3]);
        let mut b = a.clone();
        b.sampling.top_k = 40;
        b.sampling.top_p = 0.9;
        b.sampling.seed = Some(7);
        b.sampling.repeat_last_n = 64; // penalties are off: the window does not matter
        b.stop = vec!["x".into(), "x".into()];
        let mut a2 = a.clone();
        a2.stop = vec!["x".into()];
        assert_eq!(key_for(&m, &a2), key_for(&m, &b));
        // What the greedy path does read.
        let mut c = a.clone();
        c.sampling.repeat_penalty = 1.1;
        assert_ne!(key_for(&m, &a), key_for(&m, &c));
        let mut d = a.clone();
        d.sampling.logprobs = Some(2);
        assert_ne!(key_for(&m, &a), key_for(&m, &d));
        let mut e = a.clone();
        e.max_tokens = Some(5);
        assert_ne!(key_for(&m, &a), key_for(&m, &e));
        let mut f = a.clone();
        f.constraint = Some(rocmforge_engine::request::Constraint::Json);
        assert_ne!(key_for(&m, &a), key_for(&m, &f));
        // The model instance is part of the key.
        assert_ne!(key_for(&m, &a), key_for(&resident(2, "/m"), &a));
    }

    #[test]
    fn only_deterministic_requests_are_cached() {
        let m = resident(1, "/m");
        let mut sampled = greedy(vec![1]);
        sampled.sampling.temperature = 0.8;
        assert!(key_for(&m, &sampled).is_none());
        let c = RequestCache::new(4);
        assert!(matches!(c.lookup(&m, &sampled, Instant::now()), Lookup::Uncacheable));
        assert_eq!((c.hits(), c.misses()), (0, 0));
        let mut seeded = sampled.clone();
        seeded.sampling.seed = Some(1);
        let mut other_seed = sampled.clone();
        other_seed.sampling.seed = Some(2);
        assert!(key_for(&m, &seeded).is_some());
        assert_ne!(key_for(&m, &seeded), key_for(&m, &other_seed));
    }

    #[tokio::test]
    async fn hits_replay_the_answer_and_lru_evicts() {
        let m = resident(1, "/m");
        let c = RequestCache::new(2);
        let (r1, r2, r3) = (greedy(vec![1]), greedy(vec![2]), greedy(vec![3]));
        record(&c, &m, &r1, &["He", "llo"]);
        let Lookup::Hit(mut rx) = c.lookup(&m, &r1, Instant::now()) else { panic!("expected a hit") };
        assert_eq!(rx.recv().await, Some(delta("He")));
        assert_eq!(rx.recv().await, Some(delta("llo")));
        match rx.recv().await {
            Some(Event::Done(f)) => {
                assert_eq!(f.reason, FinishReason::Stop);
                assert_eq!((f.metrics.prompt_tokens, f.metrics.completion_tokens), (3, 2));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.recv().await, None);
        record(&c, &m, &r2, &["a"]);
        // r1 was used more recently than r2: r2 goes when r3 arrives.
        assert!(matches!(c.lookup(&m, &r1, Instant::now()), Lookup::Hit(_)));
        record(&c, &m, &r3, &["b"]);
        assert_eq!(c.len(), 2);
        assert!(matches!(c.lookup(&m, &r2, Instant::now()), Lookup::Miss(_)));
        assert!(matches!(c.lookup(&m, &r1, Instant::now()), Lookup::Hit(_)));
        assert_eq!(c.invalidate("/m"), 2);
        assert!(c.is_empty());
    }

    #[test]
    fn incomplete_answers_are_not_stored() {
        let m = resident(1, "/m");
        let c = RequestCache::new(2);
        let r = greedy(vec![1]);
        let Lookup::Miss(mut rec) = c.lookup(&m, &r, Instant::now()) else { panic!() };
        rec.observe(&c, &delta("x"));
        rec.observe(&c, &Event::Done(Finished { reason: FinishReason::Error, error: Some("boom".into()), ..done(1) }));
        let Lookup::Miss(mut rec) = c.lookup(&m, &r, Instant::now()) else { panic!("an error must not be cached") };
        rec.observe(&c, &Event::Done(Finished { reason: FinishReason::Cancelled, ..done(0) }));
        assert!(c.is_empty());
    }
}
