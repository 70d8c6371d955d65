//! The engines' state through the HTTP server, end to end: the real `rocmforge serve` binary
//! with SmolLM2-135M, `/metrics` (llama-server's, vLLM's and our names; spec §3.7 and §7),
//! `/slots`, `/props` and `POST /slots/{id}?action=erase` over real HTTP.
//!
//! What is pinned: prefix-cache counters move with each request (a repeated prompt hits the
//! cache, an erased cache does not), KV usage and the queue gauges go back to 0 once requests
//! end, and counters never go back when the model is unloaded.

mod server_util;

use std::io::{Read, Write};

use serde_json::json;
use server_util::{Server, SMOL};

/// Every sample of the exposition text, by name (labels kept in the name).
fn scrape(s: &Server) -> std::collections::HashMap<String, f64> {
    let (st, ct, text) = s.get("/metrics");
    assert_eq!(st, 200, "{text}");
    assert!(ct.starts_with("text/plain"), "{ct}");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {l:?}"));
            (k.to_string(), v.parse().unwrap_or_else(|e| panic!("bad value in {l:?}: {e}")))
        })
        .collect()
}

fn get(m: &std::collections::HashMap<String, f64>, name: &str) -> f64 {
    *m.get(name).unwrap_or_else(|| panic!("{name} missing from /metrics: {m:?}"))
}

/// The gauges that must read "idle", under all three naming schemes.
fn assert_idle(m: &std::collections::HashMap<String, f64>) {
    for name in [
        "llamacpp:kv_cache_usage_ratio",
        "llamacpp:requests_processing",
        "llamacpp:requests_deferred",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:gpu_cache_usage_perc",
        "vllm:kv_cache_usage_perc",
        "rocmforge:kv_cache_usage_ratio",
        "rocmforge:num_requests_running",
        "rocmforge:num_requests_waiting",
    ] {
        assert_eq!(get(m, name), 0.0, "{name} is not idle");
    }
}

/// [T-LS-MET-01] [T-LS-SLOTS-01] [T-LS-PROPS-01] spec §7: engine stats in `/metrics`, `/slots`
/// and `/props`.
#[test]
fn engine_stats_move_with_requests() {
    let s = Server::start(&[]);
    let m0 = scrape(&s);
    assert_idle(&m0);
    assert_eq!(get(&m0, "rocmforge:models_loaded"), 0.0);
    assert_eq!(get(&m0, "vllm:prefix_cache_queries_total"), 0.0);
    assert!(m0.keys().any(|k| k.starts_with("vllm:lora_requests_info{")));

    // A prompt of several KV blocks, greedy, so that a repeat can reuse them.
    let prompt = "The quick brown fox jumps over the lazy dog while the cat watches. ".repeat(8);
    let req = json!({"model": SMOL, "prompt": prompt, "n_predict": 4, "temperature": 0});
    let (st, v) = s.json("/completion", &req);
    assert_eq!(st, 200, "{v}");
    let n_prompt = v["tokens_evaluated"].as_u64().unwrap() as f64;
    assert!(n_prompt > 64.0, "{v}");
    let m1 = scrape(&s);
    assert_idle(&m1);
    assert_eq!(get(&m1, "rocmforge:models_loaded"), 1.0);
    assert!(get(&m1, "rocmforge:kv_cache_blocks_total") > 0.0);
    assert_eq!(get(&m1, "rocmforge:kv_cache_blocks_free"), get(&m1, "rocmforge:kv_cache_blocks_total"));
    let q1 = get(&m1, "vllm:prefix_cache_queries_total");
    assert!(q1 >= n_prompt, "queries {q1} < prompt {n_prompt}");
    assert_eq!(q1, get(&m1, "rocmforge:prefix_cache_queries_total"));
    let h1 = get(&m1, "vllm:prefix_cache_hits_total");
    assert!(get(&m1, "llamacpp:n_decode_total") >= 4.0);

    // The same prompt again: its full blocks come from the cache.
    let (st, v) = s.json("/completion", &req);
    assert_eq!(st, 200, "{v}");
    let m2 = scrape(&s);
    assert_idle(&m2);
    assert!(get(&m2, "vllm:prefix_cache_queries_total") >= q1 + n_prompt);
    let h2 = get(&m2, "vllm:prefix_cache_hits_total");
    assert!(h2 - h1 >= n_prompt / 2.0, "a repeated prompt should hit the prefix cache: hits {h1} -> {h2}, prompt {n_prompt}");
    assert_eq!(h2, get(&m2, "rocmforge:prefix_cache_hits_total"));
    assert!(get(&m2, "rocmforge:prefix_cache_hit_rate") > 0.0);

    // While a request streams, the engine reports it running and holding KV blocks.
    let addr = s.url.strip_prefix("http://").unwrap().to_string();
    let body = json!({"model": SMOL, "prompt": "Write a long story about a dragon.", "options": {"num_predict": 100000}}).to_string();
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    write!(c, "POST /api/generate HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"done\":false") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "stream closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let busy = scrape(&s);
    assert_eq!(get(&busy, "vllm:num_requests_running"), 1.0);
    assert_eq!(get(&busy, "llamacpp:requests_processing"), 1.0);
    assert!(get(&busy, "vllm:gpu_cache_usage_perc") > 0.0);
    assert_eq!(get(&busy, "vllm:kv_cache_usage_perc"), get(&busy, "llamacpp:kv_cache_usage_ratio"));
    let slots = s.get_json("/slots");
    assert_eq!(slots[0]["is_processing"], true, "{slots}");
    assert_eq!(slots[0]["n_requests_running"], 1, "{slots}");
    assert!(slots[0]["kv_cache_usage_ratio"].as_f64().unwrap() > 0.0, "{slots}");
    assert_eq!(s.get_json("/props")["default_generation_settings"]["is_processing"], true);
    // Erasing the cache is refused while a request holds blocks.
    let (st, _, b) = s.post_raw("/slots/0?action=erase", b"");
    assert_eq!(st, 503, "{b}");
    drop(c);
    assert!(s.wait_for(20, || get(&scrape(&s), "vllm:num_requests_running") == 0.0), "the dropped request kept running");
    assert_idle(&scrape(&s));
    assert_eq!(s.get_json("/slots")[0]["is_processing"], false);
    assert_eq!(s.get_json("/props")["default_generation_settings"]["is_processing"], false);

    // An erased cache has nothing to hit.
    let (st, v) = s.json("/slots/0?action=erase", &json!({}));
    assert_eq!(st, 200, "{v}");
    let h3 = get(&scrape(&s), "vllm:prefix_cache_hits_total");
    let (st, _) = s.json("/completion", &req);
    assert_eq!(st, 200);
    let m4 = scrape(&s);
    assert_eq!(get(&m4, "vllm:prefix_cache_hits_total"), h3, "hits after the cache was erased");
    assert_idle(&m4);

    // Unloading the model drops the gauges to 0 but keeps every counter.
    let (st, v) = s.json("/api/generate", &json!({"model": SMOL, "keep_alive": 0}));
    assert_eq!((st, v["done_reason"].as_str()), (200, Some("unload")));
    assert!(s.wait_for(10, || get(&scrape(&s), "rocmforge:models_loaded") == 0.0));
    let m5 = scrape(&s);
    assert_idle(&m5);
    assert_eq!(get(&m5, "rocmforge:kv_cache_blocks_total"), 0.0);
    for name in ["vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "llamacpp:n_decode_total"] {
        assert!(get(&m5, name) >= get(&m4, name), "{name} went back after the unload");
    }
    assert_eq!(s.get_json("/slots"), json!([]));
}
