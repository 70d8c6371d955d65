//! Server counters and their Prometheus text (`GET /metrics`): llama-server's `llamacpp:` names,
//! our own `rocmforge:` names, and vLLM's names for what routers read (spec §7: the Kubernetes
//! inference gateway's `vllm:num_requests_waiting`, `vllm:num_requests_running`,
//! `vllm:gpu_cache_usage_perc` / `vllm:kv_cache_usage_perc`, plus the prefix-cache counters).
//!
//! Two sources: the HTTP side's own counters ([`Metrics`], per finished request), and the
//! engines' snapshots ([`EngineStats`]: queue depth, KV blocks, prefix-cache lookups), fetched
//! at scrape time from every loaded model ([`snapshot`]) and summed ([`EngineTotals`]).
//!
//! Invariants: counters only grow, also across model unloads — an engine's counters die with
//! it, so the [`EngineLedger`] keeps, per engine instance, the largest values seen and, when
//! the manager unloads the model, its final values (a retired instance never counts again);
//! gauges describe the engines loaded now (0 when none is).

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rocmforge_engine::request::RequestMetrics;

use crate::backend::EngineStats;
use crate::manager::{Manager, Resident};

/// How long a scrape waits for one engine's snapshot. The engine answers between steps; a step
/// is bounded by `--max-batch-tokens`, so only a stalled engine hits this.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct Metrics {
    pub requests_total: AtomicU64,
    pub requests_failed: AtomicU64,
    pub prompt_tokens_total: AtomicU64,
    pub cached_tokens_total: AtomicU64,
    pub predicted_tokens_total: AtomicU64,
    /// Microseconds.
    pub prompt_us_total: AtomicU64,
    pub predicted_us_total: AtomicU64,
    /// Requests whose HTTP response is still being produced.
    pub in_flight: AtomicU64,
    /// Requests dropped before their end (the client went away): cancelled in the engine.
    pub cancelled: AtomicU64,
}

/// The engine counters that must survive an unload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineCounters {
    pub prefix_queries: u64,
    pub prefix_hits: u64,
    pub steps: u64,
    pub preemptions: u64,
}

impl EngineCounters {
    fn of(s: &EngineStats) -> Self {
        EngineCounters { prefix_queries: s.prefix_queries, prefix_hits: s.prefix_hits, steps: s.steps, preemptions: s.preemptions }
    }
    fn max(self, o: Self) -> Self {
        EngineCounters {
            prefix_queries: self.prefix_queries.max(o.prefix_queries),
            prefix_hits: self.prefix_hits.max(o.prefix_hits),
            steps: self.steps.max(o.steps),
            preemptions: self.preemptions.max(o.preemptions),
        }
    }
    fn add(self, o: Self) -> Self {
        EngineCounters {
            prefix_queries: self.prefix_queries + o.prefix_queries,
            prefix_hits: self.prefix_hits + o.prefix_hits,
            steps: self.steps + o.steps,
            preemptions: self.preemptions + o.preemptions,
        }
    }
}

/// Engine counters per engine instance (a [`Resident`]'s `id`), so that the totals stay
/// monotonic when models are unloaded and loaded again.
#[derive(Default)]
pub struct EngineLedger {
    inner: Mutex<LedgerInner>,
}

#[derive(Default)]
struct LedgerInner {
    /// Sum over unloaded instances.
    retired: EngineCounters,
    /// Largest values seen of each loaded instance.
    live: HashMap<u64, EngineCounters>,
    /// Instances already retired: a scrape that raced the unload must not bring them back.
    gone: HashSet<u64>,
}

impl EngineLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A snapshot of a loaded instance.
    pub fn observe(&self, id: u64, s: &EngineStats) {
        let mut g = self.lock();
        if g.gone.contains(&id) {
            return;
        }
        let c = EngineCounters::of(s);
        let e = g.live.entry(id).or_default();
        *e = e.max(c);
    }

    /// The instance was unloaded; `last` is its final snapshot when one could be had.
    pub fn retire(&self, id: u64, last: Option<&EngineStats>) {
        let mut g = self.lock();
        if !g.gone.insert(id) {
            return;
        }
        let mut c = g.live.remove(&id).unwrap_or_default();
        if let Some(s) = last {
            c = c.max(EngineCounters::of(s));
        }
        g.retired = g.retired.add(c);
    }

    /// Retired plus loaded instances.
    pub fn totals(&self) -> EngineCounters {
        let g = self.lock();
        g.live.values().fold(g.retired, |a, c| a.add(*c))
    }
}

/// A loaded model and its engine's snapshot (None: it did not answer in time, or keeps none).
pub struct ModelLoad {
    pub model: Arc<Resident>,
    pub stats: Option<EngineStats>,
}

/// Every loaded model with its engine snapshot, ordered by name (so `/slots` ids are stable),
/// and the ledger updated with what was seen.
pub async fn snapshot(mgr: &Manager) -> Vec<ModelLoad> {
    let mut models = mgr.residents();
    models.sort_by(|a, b| a.resolved.name.cmp(&b.resolved.name).then(a.id.cmp(&b.id)));
    let stats = futures_util::future::join_all(
        models.iter().map(|m| async move { tokio::time::timeout(STATS_TIMEOUT, m.backend.stats()).await.ok().flatten() }),
    )
    .await;
    models
        .into_iter()
        .zip(stats)
        .map(|(model, stats)| {
            if let Some(s) = &stats {
                mgr.ledger.observe(model.id, s);
            }
            ModelLoad { model, stats }
        })
        .collect()
}

/// The engines summed: gauges over the loaded models, counters over every instance since start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineTotals {
    pub models_loaded: usize,
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_total: usize,
    pub kv_blocks_free: usize,
    pub counters: EngineCounters,
    /// Largest context of a loaded model.
    pub n_ctx_max: usize,
}

impl EngineTotals {
    pub fn sum(loads: &[ModelLoad], counters: EngineCounters) -> Self {
        let mut t = EngineTotals { models_loaded: loads.len(), counters, ..Default::default() };
        for l in loads {
            t.n_ctx_max = t.n_ctx_max.max(l.model.backend.facts().n_ctx);
            if let Some(s) = &l.stats {
                t.running += s.running;
                t.waiting += s.waiting;
                t.kv_blocks_total += s.kv_blocks_total;
                t.kv_blocks_free += s.kv_blocks_free.min(s.kv_blocks_total);
            }
        }
        t
    }

    /// KV blocks in use over all blocks of the loaded models, 0..1 (0 with none loaded).
    /// Cached blocks no request holds count as free, as in vLLM.
    pub fn kv_usage(&self) -> f64 {
        if self.kv_blocks_total == 0 {
            return 0.0;
        }
        (self.kv_blocks_total - self.kv_blocks_free) as f64 / self.kv_blocks_total as f64
    }
}

impl Metrics {
    pub fn record(&self, m: &RequestMetrics, failed: bool) {
        let add = |c: &AtomicU64, v: u64| c.fetch_add(v, Ordering::Relaxed);
        add(&self.requests_total, 1);
        if failed {
            add(&self.requests_failed, 1);
        }
        add(&self.prompt_tokens_total, m.prompt_tokens as u64);
        add(&self.cached_tokens_total, m.cached_tokens as u64);
        add(&self.predicted_tokens_total, m.completion_tokens as u64);
        add(&self.prompt_us_total, m.prompt_time.as_micros() as u64);
        add(&self.predicted_us_total, m.decode_time.as_micros() as u64);
    }

    /// Prometheus exposition text (format 0.0.4).
    pub fn render(&self, e: &EngineTotals) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (pt, ct, gt) = (g(&self.prompt_tokens_total), g(&self.cached_tokens_total), g(&self.predicted_tokens_total));
        let (ps, gs) = (g(&self.prompt_us_total) as f64 / 1e6, g(&self.predicted_us_total) as f64 / 1e6);
        let rate = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        let kv = e.kv_usage();
        let c = e.counters;
        let hit = if c.prefix_queries > 0 { c.prefix_hits as f64 / c.prefix_queries as f64 } else { 0.0 };
        let (running, waiting) = (e.running as f64, e.waiting as f64);
        let mut out = String::new();
        let mut m = |name: &str, ty: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}\n{name} {v}");
        };
        // llama-server's names.
        m("llamacpp:prompt_tokens_total", "counter", "Number of prompt tokens processed.", pt as f64);
        m("llamacpp:prompt_seconds_total", "counter", "Prompt process time.", ps);
        m("llamacpp:tokens_predicted_total", "counter", "Number of generation tokens processed.", gt as f64);
        m("llamacpp:tokens_predicted_seconds_total", "counter", "Predict process time.", gs);
        m("llamacpp:prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s.", rate(pt.saturating_sub(ct), ps));
        m("llamacpp:predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s.", rate(gt, gs));
        m("llamacpp:requests_processing", "gauge", "Number of requests processing.", running);
        m("llamacpp:requests_deferred", "gauge", "Number of requests deferred.", waiting);
        m("llamacpp:n_decode_total", "counter", "Total number of engine steps (batched forward passes).", c.steps as f64);
        m("llamacpp:n_tokens_max", "counter", "Largest context of a loaded model.", e.n_ctx_max as f64);
        m("llamacpp:kv_cache_usage_ratio", "gauge", "KV-cache usage. 1 means 100 percent usage.", kv);
        // Ours.
        m("rocmforge:requests_total", "counter", "Generation requests finished.", g(&self.requests_total) as f64);
        m("rocmforge:requests_failed_total", "counter", "Generation requests that ended in an error.", g(&self.requests_failed) as f64);
        m("rocmforge:requests_cancelled_total", "counter", "Requests cancelled because their client went away.", g(&self.cancelled) as f64);
        m("rocmforge:http_requests_in_flight", "gauge", "Generation responses being streamed.", g(&self.in_flight) as f64);
        m("rocmforge:models_loaded", "gauge", "Models loaded now.", e.models_loaded as f64);
        m("rocmforge:num_requests_running", "gauge", "Requests being computed by the engines.", running);
        m("rocmforge:num_requests_waiting", "gauge", "Requests queued in the engines.", waiting);
        m("rocmforge:kv_cache_usage_ratio", "gauge", "KV blocks in use / KV blocks of the loaded models.", kv);
        m("rocmforge:kv_cache_blocks_total", "gauge", "KV blocks of the loaded models.", e.kv_blocks_total as f64);
        m(
            "rocmforge:kv_cache_blocks_free",
            "gauge",
            "Free KV blocks (cached blocks no request holds count as free).",
            e.kv_blocks_free as f64,
        );
        m("rocmforge:prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache.", c.prefix_queries as f64);
        m("rocmforge:prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache.", c.prefix_hits as f64);
        m("rocmforge:prefix_cache_hit_rate", "gauge", "Prefix-cache hits / queries since start.", hit);
        m("rocmforge:engine_steps_total", "counter", "Engine steps (batched forward passes).", c.steps as f64);
        m("rocmforge:preemptions_total", "counter", "Requests preempted for lack of KV blocks.", c.preemptions as f64);
        // vLLM's names (what the Gateway API Inference Extension and other routers read).
        m("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", running);
        m("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", waiting);
        m("vllm:gpu_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", kv);
        m("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", kv);
        m(
            "vllm:prefix_cache_queries_total",
            "counter",
            "Prefix cache queries, in terms of number of queried tokens.",
            c.prefix_queries as f64,
        );
        m("vllm:prefix_cache_hits_total", "counter", "Prefix cache hits, in terms of number of cached tokens.", c.prefix_hits as f64);
        m("vllm:num_preemptions_total", "counter", "Cumulative number of preemptions.", c.preemptions as f64);
        m("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", pt as f64);
        m("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.", gt as f64);
        // LoRA state (spec §7, optional): we serve no adapters. vLLM's value is the time of the
        // sample; routers take the newest series.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let _ = writeln!(
            out,
            "# HELP vllm:lora_requests_info Running stats on LoRA requests.\n# TYPE vllm:lora_requests_info gauge\n\
             vllm:lora_requests_info{{max_lora=\"0\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"}} {now}"
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(running: usize, free: usize, q: u64, h: u64) -> EngineStats {
        EngineStats {
            running,
            waiting: 2,
            kv_blocks_total: 4,
            kv_blocks_free: free,
            prefix_queries: q,
            prefix_hits: h,
            steps: 3,
            ..Default::default()
        }
    }

    #[test]
    fn text_format() {
        let m = Metrics::default();
        m.record(&RequestMetrics { prompt_tokens: 10, cached_tokens: 5, completion_tokens: 3, ..Default::default() }, false);
        let e = EngineTotals {
            models_loaded: 1,
            running: 1,
            waiting: 2,
            kv_blocks_total: 4,
            kv_blocks_free: 3,
            counters: EngineCounters { prefix_queries: 10, prefix_hits: 5, steps: 7, preemptions: 0 },
            n_ctx_max: 4096,
        };
        let t = m.render(&e);
        assert!(t.contains("llamacpp:prompt_tokens_total 10\n"));
        assert!(t.contains("vllm:num_requests_waiting 2\n"));
        assert!(t.contains("vllm:num_requests_running 1\n"));
        assert!(t.contains("llamacpp:kv_cache_usage_ratio 0.25\n"));
        assert!(t.contains("vllm:gpu_cache_usage_perc 0.25\n"));
        assert!(t.contains("vllm:kv_cache_usage_perc 0.25\n"));
        assert!(t.contains("vllm:prefix_cache_hits_total 5\n"));
        assert!(t.contains("rocmforge:prefix_cache_hit_rate 0.5\n"));
        assert!(t.contains("# TYPE llamacpp:tokens_predicted_total counter\n"));
        for line in t.lines() {
            assert!(line.starts_with('#') || line.rsplit_once(' ').is_some_and(|(_, v)| v.parse::<f64>().is_ok()), "{line}");
        }
    }

    #[test]
    fn ledger_survives_unloads() {
        let l = EngineLedger::default();
        l.observe(1, &stats(0, 4, 10, 2));
        l.observe(1, &stats(0, 4, 30, 8));
        assert_eq!(l.totals().prefix_queries, 30);
        // Unloaded with a final snapshot past the last scrape: nothing lost.
        l.retire(1, Some(&stats(0, 4, 40, 9)));
        assert_eq!((l.totals().prefix_queries, l.totals().prefix_hits), (40, 9));
        // A scrape that raced the unload does not count the instance twice.
        l.observe(1, &stats(0, 4, 40, 9));
        l.retire(1, None);
        assert_eq!(l.totals().prefix_queries, 40);
        // A new instance of the model adds to the retired ones.
        l.observe(2, &stats(0, 4, 5, 1));
        assert_eq!((l.totals().prefix_queries, l.totals().prefix_hits), (45, 10));
    }

    #[test]
    fn usage_of_nothing_is_zero() {
        assert_eq!(EngineTotals::default().kv_usage(), 0.0);
    }
}
