//! The opt-in request cache (`serve --request-cache N`) through the real server with
//! SmolLM2-135M: a repeated greedy request is answered from the cache (counted on `/metrics`,
//! same text, tokens and counts as the first answer), also when it arrives over another dialect
//! or streamed; another seed or option misses; a sampled request without a seed never caches;
//! unloading the model empties its entries; without the flag nothing is cached.

mod server_util;

use std::collections::HashMap;

use serde_json::{json, Value as Json};
use server_util::{ndjson_lines, sse_events, Server, SMOL};

fn scrape(s: &Server) -> HashMap<String, f64> {
    let (st, _, text) = s.get("/metrics");
    assert_eq!(st, 200, "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_string(), v.parse().unwrap_or(f64::NAN))))
        .collect()
}

/// (hits, misses, entries)
fn cache_stats(s: &Server) -> (f64, f64, f64) {
    let m = scrape(s);
    let g = |n: &str| *m.get(n).unwrap_or_else(|| panic!("{n} missing from /metrics"));
    (g("rocmforge:request_cache_hits_total"), g("rocmforge:request_cache_misses_total"), g("rocmforge:request_cache_entries"))
}

const PROMPT: &str = "The three primary colors are";

fn ollama_generate(s: &Server, options: Json) -> Json {
    let (st, v) = s.json("/api/generate", &json!({"model": SMOL, "prompt": PROMPT, "raw": true, "stream": false, "options": options}));
    assert_eq!(st, 200, "{v}");
    v
}

/// [T-CACHE-01] A greedy request answered twice, then over OpenAI's and llama-server's
/// dialects and streamed: one model run, identical answers.
#[test]
fn repeated_greedy_requests_are_answered_from_the_cache() {
    let s = Server::start(&["--request-cache", "8"]);
    assert_eq!(cache_stats(&s), (0.0, 0.0, 0.0));
    let greedy = json!({"temperature": 0, "num_predict": 12, "repeat_penalty": 1.0});
    let first = ollama_generate(&s, greedy.clone());
    let text = first["response"].as_str().unwrap().to_string();
    assert!(!text.is_empty(), "{first}");
    assert_eq!(cache_stats(&s), (0.0, 1.0, 1.0));
    let predicted0 = scrape(&s)["llamacpp:tokens_predicted_total"];

    let second = ollama_generate(&s, greedy.clone());
    assert_eq!(cache_stats(&s), (1.0, 1.0, 1.0), "the repeat must be a hit");
    for k in ["response", "context", "prompt_eval_count", "eval_count", "done_reason"] {
        assert_eq!(first[k], second[k], "{k} differs between the answer and its cached repeat");
    }
    // The hit reports durations of its own, and computed no tokens.
    assert!(second["total_duration"].as_u64().unwrap() > 0, "{second}");
    assert_eq!(scrape(&s)["llamacpp:tokens_predicted_total"], predicted0, "a hit must not run the model");

    // The same engine request over the OpenAI dialect (its greedy defaults differ in top_k /
    // top_p, which greedy decoding never reads).
    let (st, v) = s.json("/v1/completions", &json!({"model": SMOL, "prompt": PROMPT, "max_tokens": 12, "temperature": 0}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], text.as_str(), "{v}");
    assert_eq!(v["usage"]["completion_tokens"], first["eval_count"], "{v}");
    assert_eq!(cache_stats(&s), (2.0, 1.0, 1.0), "OpenAI's form of the request must hit");

    // llama-server's dialect, streamed: the cached text arrives as SSE chunks.
    let (st, _, body) = s.post("/completion", &json!({"model": SMOL, "prompt": PROMPT, "n_predict": 12, "temperature": 0, "stream": true}));
    assert_eq!(st, 200, "{body}");
    let events: Vec<Json> = sse_events(&body).iter().map(|e| serde_json::from_str(e).expect("SSE JSON")).collect();
    assert!(events.len() > 2, "the answer must stream in several chunks: {body}");
    let streamed: String = events.iter().filter_map(|e| e["content"].as_str()).collect();
    assert_eq!(streamed, text);
    let last = events.last().unwrap();
    assert_eq!(last["stop"], true, "{last}");
    assert_eq!(last["tokens_predicted"], first["eval_count"], "{last}");
    assert_eq!(cache_stats(&s), (3.0, 1.0, 1.0));

    // Ollama's NDJSON stream of the same request.
    let (st, _, body) = s.post("/api/generate", &json!({"model": SMOL, "prompt": PROMPT, "raw": true, "options": greedy}));
    assert_eq!(st, 200, "{body}");
    let lines = ndjson_lines(&body);
    let streamed: String = lines.iter().filter_map(|l| l["response"].as_str()).collect();
    assert_eq!(streamed, text);
    assert_eq!(lines.last().unwrap()["eval_count"], first["eval_count"]);
    assert_eq!(cache_stats(&s), (4.0, 1.0, 1.0));

    // Logprobs are part of the key, and replayed.
    let lp = json!({"model": SMOL, "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "logprobs": 2});
    let (_, a) = s.json("/v1/completions", &lp);
    let (_, b) = s.json("/v1/completions", &lp);
    assert_eq!(cache_stats(&s), (5.0, 2.0, 2.0));
    assert!(a["choices"][0]["logprobs"]["token_logprobs"].as_array().is_some_and(|v| v.len() == 4), "{a}");
    assert_eq!(a["choices"][0]["logprobs"], b["choices"][0]["logprobs"]);

    // Unloading the model drops its entries: the next repeat runs the model again.
    let (st, v) = s.json("/api/generate", &json!({"model": SMOL, "keep_alive": 0}));
    assert_eq!(st, 200, "{v}");
    assert!(s.wait_for(10, || cache_stats(&s).2 == 0.0), "entries survived the unload: {:?}", cache_stats(&s));
    let again = ollama_generate(&s, json!({"temperature": 0, "num_predict": 12, "repeat_penalty": 1.0}));
    assert_eq!(again["response"], first["response"]);
    assert_eq!(cache_stats(&s), (5.0, 3.0, 1.0));
}

/// [T-CACHE-02] Seeded sampling caches per seed; other options miss; unseeded sampling is
/// never cached.
#[test]
fn seeds_options_and_sampling() {
    let s = Server::start(&["--request-cache", "8"]);
    let seeded = |seed: u64, n: u64| json!({"temperature": 0.9, "seed": seed, "num_predict": n});
    let a = ollama_generate(&s, seeded(1, 10));
    let b = ollama_generate(&s, seeded(1, 10));
    assert_eq!(a["response"], b["response"]);
    assert_eq!(cache_stats(&s), (1.0, 1.0, 1.0));
    ollama_generate(&s, seeded(2, 10));
    assert_eq!(cache_stats(&s), (1.0, 2.0, 2.0), "another seed must miss");
    ollama_generate(&s, seeded(1, 11));
    assert_eq!(cache_stats(&s), (1.0, 3.0, 3.0), "another num_predict must miss");
    let greedy = json!({"temperature": 0, "num_predict": 10});
    ollama_generate(&s, greedy.clone());
    let mut stop = greedy.clone();
    stop["stop"] = json!(["zzz"]);
    ollama_generate(&s, stop);
    assert_eq!(cache_stats(&s), (1.0, 5.0, 5.0), "another stop must miss");
    // Sampled without a seed: neither looked up nor stored.
    for _ in 0..2 {
        ollama_generate(&s, json!({"temperature": 0.9, "num_predict": 6}));
    }
    assert_eq!(cache_stats(&s), (1.0, 5.0, 5.0), "an unseeded sampled request must never be cached");
}

/// [T-CACHE-03] Off by default.
#[test]
fn off_by_default() {
    let s = Server::start(&[]);
    let greedy = json!({"temperature": 0, "num_predict": 4});
    ollama_generate(&s, greedy.clone());
    ollama_generate(&s, greedy);
    assert_eq!(cache_stats(&s), (0.0, 0.0, 0.0));
    assert_eq!(scrape(&s)["rocmforge:request_cache_capacity"], 0.0);
}
