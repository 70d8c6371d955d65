//! llama-server's API: `/health`, `/completion` (also `/completions`), `/infill`, `/tokenize`,
//! `/detokenize`, `/apply-template`, `/embedding(s)`, `/props`, `/slots`, `/metrics`.
//!
//! llama-server serves one model; here the model is the request's `model` field when given,
//! else the server's default model (the first `--model`), else the one loaded model, else the
//! only model there is. SSE on `/completion` has no `[DONE]` (spec §3.4); errors are
//! `{"error": {"code", "message", "type"}}`.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use rocmforge_chat::{ChatMessage, RenderRequest};
use rocmforge_engine::request::{Constraint, Event, FinishReason, Finished, SamplingParams};
use serde::Deserialize;
use serde_json::{json, Value as Json};

use crate::error::{ApiError, Dialect};
use crate::gen::{self, Job};
use crate::manager::{Lease, Resolved};
use crate::ollama::{embed_tokens, normalize};
use crate::options::{self, GenOptions};
use crate::wire::{json_response, parse_body, sse, Sse};
use crate::Shared;

const D: Dialect = Dialect::Llama;

/// The model a llama-server request addresses.
fn pick_model(st: &Shared, requested: Option<&str>) -> Result<Resolved, ApiError> {
    if let Some(m) = requested.filter(|m| !m.trim().is_empty()) {
        return st.mgr.resolve(m).map_err(|e| ApiError::from(e).in_dialect(D));
    }
    if let Some((name, _)) = st.cfg.aliases.first() {
        return st.mgr.resolve(name).map_err(|e| ApiError::from(e).in_dialect(D));
    }
    let loaded = st.mgr.residents();
    if let [one] = loaded.as_slice() {
        return Ok(one.resolved.clone());
    }
    let all = st.mgr.list();
    if let [one] = all.as_slice() {
        return Ok(one.clone());
    }
    Err(ApiError::bad_request("no default model: pass \"model\" or start the server with --model NAME=PATH").in_dialect(D))
}

async fn lease(st: &Shared, requested: Option<&str>, num_ctx: Option<usize>) -> Result<Lease, ApiError> {
    let r = pick_model(st, requested)?;
    gen::lease_resolved(st, &r, num_ctx, None, D).await
}

pub async fn health(State(st): State<Shared>) -> Response {
    let _ = st;
    json_response(&json!({ "status": "ok" }))
}

/// `/completion`'s fields (the sampler set of llama-server; unknown fields are ignored).
#[derive(Deserialize, Default)]
pub struct CompletionReq {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    prompt: Option<Json>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    n_predict: Option<i64>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_k: Option<i64>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    min_p: Option<f32>,
    #[serde(default)]
    typical_p: Option<f32>,
    #[serde(default)]
    repeat_penalty: Option<f32>,
    #[serde(default)]
    repeat_last_n: Option<i64>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    #[serde(default)]
    mirostat: Option<u8>,
    #[serde(default)]
    mirostat_tau: Option<f32>,
    #[serde(default)]
    mirostat_eta: Option<f32>,
    #[serde(default)]
    dry_multiplier: Option<f32>,
    #[serde(default)]
    dry_base: Option<f32>,
    #[serde(default)]
    dry_allowed_length: Option<usize>,
    #[serde(default)]
    dry_penalty_last_n: Option<i64>,
    #[serde(default)]
    xtc_probability: Option<f32>,
    #[serde(default)]
    xtc_threshold: Option<f32>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<Json>,
    #[serde(default)]
    ignore_eos: bool,
    #[serde(default)]
    n_probs: Option<usize>,
    #[serde(default)]
    json_schema: Option<Json>,
    #[serde(default)]
    grammar: Option<String>,
    #[serde(default)]
    return_tokens: bool,
    // /infill
    #[serde(default)]
    input_prefix: Option<String>,
    #[serde(default)]
    input_suffix: Option<String>,
}

/// llama-server's sampler defaults (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05).
fn llama_defaults() -> SamplingParams {
    SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05, repeat_penalty: 1.0, ..SamplingParams::neutral() }
}

impl CompletionReq {
    fn options(&self) -> Result<(GenOptions, Option<Constraint>), ApiError> {
        let mut o = GenOptions::new(llama_defaults());
        let s = &mut o.sampling;
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { s.$f = v; } )* };
        }
        set!(
            temperature,
            top_p,
            min_p,
            typical_p,
            repeat_penalty,
            presence_penalty,
            frequency_penalty,
            mirostat,
            mirostat_tau,
            mirostat_eta,
            dry_multiplier,
            dry_base,
            dry_allowed_length,
            xtc_probability,
            xtc_threshold
        );
        if let Some(k) = self.top_k {
            s.top_k = k.max(0) as usize;
        }
        if let Some(n) = self.repeat_last_n {
            s.repeat_last_n = if n < 0 { usize::MAX } else { n as usize };
        }
        if let Some(n) = self.dry_penalty_last_n {
            s.dry_penalty_last_n = if n < 0 { usize::MAX } else { n as usize };
        }
        if let Some(seed) = self.seed {
            s.seed = (seed >= 0).then_some(seed as u64);
        }
        if let Some(n) = self.n_probs.filter(|&n| n > 0) {
            s.logprobs = Some(n.min(20));
        }
        o.max_tokens = self.n_predict.and_then(|n| usize::try_from(n).ok());
        o.ignore_eos = self.ignore_eos;
        if let Some(st) = &self.stop {
            o.stop = options::stop_list("stop", st).map_err(|e| e.in_dialect(D))?;
        }
        let c = match (&self.json_schema, &self.grammar) {
            (Some(s), _) if s.is_object() => Some(Constraint::JsonSchema(s.to_string())),
            (_, Some(g)) if !g.trim().is_empty() => Some(Constraint::Grammar(g.clone())),
            _ => None,
        };
        Ok((o, c))
    }
}

/// A llama-server prompt: a string, token ids, or a mix of both.
fn prompt_tokens(b: &dyn crate::backend::Backend, p: Option<&Json>) -> Result<Vec<u32>, ApiError> {
    let bad = || ApiError::bad_request("\"prompt\" must be a string, a list of token ids, or a mix of both").in_dialect(D);
    let n_vocab = b.facts().n_vocab;
    let mut out = Vec::new();
    match p {
        Some(Json::String(s)) => out = b.raw_tokens(s, true, true).map_err(|e| ApiError::from(e).in_dialect(D))?,
        Some(Json::Array(items)) => {
            for (i, it) in items.iter().enumerate() {
                match it {
                    Json::Number(n) => {
                        let id = n
                            .as_u64()
                            .filter(|&x| (x as usize) < n_vocab)
                            .ok_or_else(|| ApiError::bad_request(format!("invalid token id {n}")).in_dialect(D))?;
                        out.push(id as u32);
                    }
                    // BOS only when the prompt starts with a string.
                    Json::String(s) => out.extend(b.raw_tokens(s, i == 0, true).map_err(|e| ApiError::from(e).in_dialect(D))?),
                    _ => return Err(bad()),
                }
            }
        }
        _ => return Err(bad()),
    }
    Ok(out)
}

/// llama-server's `timings` object of a finished request (also sent on `/v1/*`, as it does).
pub(crate) fn timings(f: &Finished) -> Json {
    let m = &f.metrics;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let per = |n: usize, d: std::time::Duration| if n > 0 { ms(d) / n as f64 } else { 0.0 };
    let rate = |n: usize, d: std::time::Duration| if d.as_secs_f64() > 0.0 { n as f64 / d.as_secs_f64() } else { 0.0 };
    let pn = m.prompt_eval_tokens();
    json!({
        "cache_n": m.cached_tokens, "prompt_n": pn, "prompt_ms": ms(m.prompt_time),
        "prompt_per_token_ms": per(pn, m.prompt_time), "prompt_per_second": rate(pn, m.prompt_time),
        "predicted_n": m.completion_tokens, "predicted_ms": ms(m.decode_time),
        "predicted_per_token_ms": per(m.completion_tokens, m.decode_time), "predicted_per_second": rate(m.completion_tokens, m.decode_time),
    })
}

fn probs(b: &dyn crate::backend::Backend, lps: &[rocmforge_engine::request::TokenLogprob]) -> Json {
    Json::Array(
        lps.iter()
            .map(|l| {
                let (t, bytes) = gen::token_text(b, l.token);
                let top: Vec<Json> = l
                    .top
                    .iter()
                    .map(|(id, p)| {
                        let (t, bytes) = gen::token_text(b, *id);
                        json!({ "id": id, "token": t, "logprob": p, "bytes": bytes })
                    })
                    .collect();
                json!({ "id": l.token, "token": t, "logprob": l.logprob, "bytes": bytes, "top_logprobs": top })
            })
            .collect(),
    )
}

fn stop_type(f: &Finished) -> &'static str {
    match (f.reason, &f.stopped_by) {
        (FinishReason::Length, _) => "limit",
        (FinishReason::Stop, Some(_)) => "word",
        (FinishReason::Stop, None) => "eos",
        _ => "none",
    }
}

fn final_object(model: &str, text: &str, tokens: &[u32], f: &Finished, n_ctx: usize, with_tokens: bool) -> Json {
    json!({
        "index": 0, "content": text, "tokens": if with_tokens { json!(tokens) } else { json!([]) }, "id_slot": 0, "stop": true,
        "model": model, "tokens_predicted": f.metrics.completion_tokens, "tokens_evaluated": f.metrics.prompt_tokens,
        "generation_settings": { "n_ctx": n_ctx }, "has_new_line": text.contains('\n'), "truncated": false,
        "stop_type": stop_type(f), "stopping_word": f.stopped_by.clone().unwrap_or_default(),
        "tokens_cached": f.metrics.prompt_tokens + f.metrics.completion_tokens, "timings": timings(f),
    })
}

async fn run_completion(
    st: Shared,
    req: CompletionReq,
    prompt_of: impl FnOnce(&dyn crate::backend::Backend) -> Result<Vec<u32>, ApiError>,
) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let (opts, constraint) = req.options()?;
    let lease = lease(&st, req.model.as_deref(), None).await?;
    let b = lease.model.backend.clone();
    let prompt = prompt_of(b.as_ref())?;
    let n_ctx = b.facts().n_ctx;
    if prompt.len() > n_ctx {
        return Err(ApiError::context_overflow(prompt.len(), n_ctx).in_dialect(D));
    }
    let model = lease.model.resolved.name.clone();
    let mut job = gen::submit(&st, lease, prompt, &opts, constraint, t0, D)?;
    let with_probs = opts.sampling.logprobs.is_some();
    if !req.stream {
        let d = gen::run_to_end(job).await;
        if d.fin.reason == FinishReason::Error {
            return Err(ApiError::internal(d.fin.error.unwrap_or_default()).in_dialect(D));
        }
        let mut v = final_object(&model, &d.text, &d.tokens, &d.fin, n_ctx, req.return_tokens);
        if with_probs {
            v["completion_probabilities"] = probs(d.backend.as_ref(), &d.logprobs);
        }
        return Ok(json_response(&v));
    }
    let _ = &mut job;
    struct S {
        job: Job,
        model: String,
        n_ctx: usize,
        n: usize,
        ended: bool,
        with_probs: bool,
    }
    let init = S { job, model, n_ctx, n: 0, ended: false, with_probs };
    let s = stream::unfold(init, |mut s| async move {
        if s.ended {
            return None;
        }
        loop {
            match s.job.next().await? {
                Event::Delta { text, tokens, logprobs } => {
                    if text.is_empty() && tokens.is_empty() {
                        continue;
                    }
                    s.n += tokens.len();
                    let mut v = json!({ "index": 0, "content": text, "tokens": tokens, "stop": false, "id_slot": 0, "tokens_predicted": s.n, "tokens_evaluated": s.job.prompt.len() });
                    if s.with_probs {
                        v["completion_probabilities"] = probs(s.job.backend().as_ref(), &logprobs);
                    }
                    return Some((Sse::Data(v), s));
                }
                Event::Done(f) => {
                    s.ended = true;
                    if f.reason == FinishReason::Error {
                        let e = json!({ "error": { "code": 500, "message": f.error.clone().unwrap_or_default(), "type": "server_error" } });
                        return Some((Sse::Data(e), s));
                    }
                    return Some((Sse::Data(final_object(&s.model, "", &[], &f, s.n_ctx, false)), s));
                }
            }
        }
    });
    Ok(sse(s))
}

pub async fn completion(State(st): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let req: CompletionReq = parse_body(&body, D)?;
    let p = req.prompt.clone();
    run_completion(st, req, move |b| prompt_tokens(b, p.as_ref())).await
}

/// `/infill`: fill-in-the-middle for models with FIM tokens.
pub async fn infill(State(st): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let req: CompletionReq = parse_body(&body, D)?;
    let (pre, suf) = (req.input_prefix.clone().unwrap_or_default(), req.input_suffix.clone().unwrap_or_default());
    let mid = match &req.prompt {
        Some(Json::String(s)) => s.clone(),
        _ => String::new(),
    };
    run_completion(st, req, move |b| {
        let t = b.tokenizer();
        let ids = ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"].map(|s| t.token_id(s));
        let ids2 = ["<fim_prefix>", "<fim_suffix>", "<fim_middle>"].map(|s| t.token_id(s));
        let [Some(p), Some(s), Some(m)] = (if ids.iter().all(Option::is_some) { ids } else { ids2 }) else {
            return Err(ApiError::not_supported("this model has no fill-in-the-middle tokens").in_dialect(D));
        };
        let enc = |x: &str| b.raw_tokens(x, false, false).map_err(|e| ApiError::from(e).in_dialect(D));
        let mut out = Vec::new();
        if t.add_bos() {
            out.extend(t.bos());
        }
        out.push(p);
        out.extend(enc(&pre)?);
        out.push(s);
        out.extend(enc(&suf)?);
        out.push(m);
        out.extend(enc(&mid)?);
        Ok(out)
    })
    .await
}

#[derive(Deserialize)]
struct TokenizeReq {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    content: String,
    #[serde(default)]
    add_special: bool,
    #[serde(default = "yes")]
    parse_special: bool,
    #[serde(default)]
    with_pieces: bool,
}

fn yes() -> bool {
    true
}

pub async fn tokenize(State(st): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let req: TokenizeReq = parse_body(&body, D)?;
    let lease = lease(&st, req.model.as_deref(), None).await?;
    let b = &lease.model.backend;
    let ids = b.raw_tokens(&req.content, req.add_special, req.parse_special).map_err(|e| ApiError::from(e).in_dialect(D))?;
    let tokens: Vec<Json> = if req.with_pieces {
        ids.iter()
            .map(|&id| {
                let bytes = b.tokenizer().token_to_piece(id);
                let piece = match String::from_utf8(bytes.clone()) {
                    Ok(s) => json!(s),
                    Err(_) => json!(bytes),
                };
                json!({ "id": id, "piece": piece })
            })
            .collect()
    } else {
        ids.iter().map(|&id| json!(id)).collect()
    };
    Ok(json_response(&json!({ "tokens": tokens })))
}

#[derive(Deserialize)]
struct DetokenizeReq {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    tokens: Vec<Json>,
}

pub async fn detokenize(State(st): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let req: DetokenizeReq = parse_body(&body, D)?;
    let lease = lease(&st, req.model.as_deref(), None).await?;
    let b = &lease.model.backend;
    let n_vocab = b.facts().n_vocab;
    let mut ids = Vec::with_capacity(req.tokens.len());
    for t in &req.tokens {
        match t.as_u64().filter(|&x| (x as usize) < n_vocab) {
            Some(x) => ids.push(x as u32),
            None => return Err(ApiError::bad_request(format!("invalid token id {t}")).in_dialect(D)),
        }
    }
    Ok(json_response(&json!({ "content": b.tokenizer().decode(&ids, false) })))
}

#[derive(Deserialize)]
struct ApplyTemplateReq {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    messages: Vec<ChatMessage>,
    #[serde(default)]
    tools: Option<Json>,
    #[serde(default)]
    chat_template_kwargs: Option<serde_json::Map<String, Json>>,
}

pub async fn apply_template(State(st): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let req: ApplyTemplateReq = parse_body(&body, D)?;
    let lease = lease(&st, req.model.as_deref(), None).await?;
    let mut messages = req.messages;
    let model = lease.model.resolved.name.clone();
    crate::openai::content_parts_for_template(&mut messages, lease.model.backend.facts().chat_template.as_deref(), &model)
        .map_err(|e| e.in_dialect(D))?;
    let mut rr = RenderRequest::new(&messages);
    rr.tools = req.tools.as_ref().filter(|t| !t.is_null());
    if let Some(kw) = req.chat_template_kwargs {
        rr.extra = kw;
    }
    let prompt = lease.model.backend.render_chat(&rr).map_err(|e| ApiError::from(e).in_dialect(D))?;
    Ok(json_response(&json!({ "prompt": prompt })))
}

#[derive(Deserialize)]
struct EmbeddingReq {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    content: Option<Json>,
    #[serde(default)]
    input: Option<Json>,
    #[serde(default)]
    embd_normalize: Option<i64>,
}

pub async fn embedding(State(st): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let req: EmbeddingReq = parse_body(&body, D)?;
    let inputs = crate::ollama::embed_inputs(req.content.as_ref().or(req.input.as_ref())).map_err(|e| e.in_dialect(D))?;
    if inputs.is_empty() {
        return Err(ApiError::bad_request("\"content\" must be a non-empty string or list of strings").in_dialect(D));
    }
    let lease = lease(&st, req.model.as_deref(), None).await?;
    let b = lease.model.backend.clone();
    let ids = embed_tokens(b.as_ref(), &inputs, true).map_err(|e| e.in_dialect(D))?;
    let mut vecs = b.embed(ids).await.map_err(|e| ApiError::from(e).in_dialect(D))?;
    let norm = req.embd_normalize.unwrap_or(2);
    for v in &mut vecs {
        match norm {
            2 => normalize(v),
            -1 => {}
            1 => {
                let s: f32 = v.iter().map(|x| x.abs()).sum();
                if s > 0.0 {
                    v.iter_mut().for_each(|x| *x /= s);
                }
            }
            0 => {
                let m = v.iter().fold(0f32, |a, x| a.max(x.abs()));
                if m > 0.0 {
                    v.iter_mut().for_each(|x| *x = (*x / m * 32760.0).round());
                }
            }
            p => {
                let p = p as f64;
                let n = v.iter().map(|x| (x.abs() as f64).powf(p)).sum::<f64>().powf(1.0 / p);
                if n > 0.0 {
                    v.iter_mut().for_each(|x| *x = (*x as f64 / n) as f32);
                }
            }
        }
    }
    let out: Vec<Json> = vecs.into_iter().enumerate().map(|(i, v)| json!({ "index": i, "embedding": [v] })).collect();
    Ok(json_response(&Json::Array(out)))
}

/// A loaded model's engine snapshot, waited for at most [`crate::metrics::STATS_TIMEOUT`].
async fn stats_of(m: &crate::manager::Resident) -> Option<crate::backend::EngineStats> {
    tokio::time::timeout(crate::metrics::STATS_TIMEOUT, m.backend.stats()).await.ok().flatten()
}

/// llama-server's sampler defaults as `/props` and `/slots` show them (`params`).
fn default_params() -> Json {
    let s = llama_defaults();
    json!({ "temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p, "min_p": s.min_p, "repeat_penalty": s.repeat_penalty, "n_predict": -1 })
}

/// `GET /props`: the default model (llama-server serves one). `total_slots` is how many
/// sequences an engine decodes together (`--max-num-seqs`); `is_processing` comes from the
/// engine when the model is loaded.
pub async fn props(State(st): State<Shared>) -> Result<Response, ApiError> {
    let r = pick_model(&st, None)?;
    let f = crate::describe::file_facts(&r.path);
    let resident = st.mgr.resident(&r);
    let n_ctx = resident.as_ref().map(|m| m.backend.facts().n_ctx).unwrap_or(0);
    let stats = match &resident {
        Some(m) => stats_of(m).await,
        None => None,
    };
    let processing = stats.as_ref().map(|s| s.running + s.waiting > 0).unwrap_or(false);
    Ok(json_response(&json!({
        "default_generation_settings": {
            "id": 0, "id_task": -1, "n_ctx": n_ctx, "speculative": false, "is_processing": processing,
            "params": default_params(),
        },
        "total_slots": st.cfg.max_num_seqs,
        "model_path": r.path.display().to_string(),
        "model_alias": r.name,
        "chat_template": f.chat_template.unwrap_or_default(),
        "chat_template_caps": {},
        "modalities": { "vision": false, "audio": false },
        "build_info": format!("rocmforge-{}", env!("CARGO_PKG_VERSION")),
        "is_sleeping": false,
    })))
}

#[derive(Deserialize, Default)]
pub struct SlotsQuery {
    #[serde(default)]
    fail_on_no_slot: Option<String>,
    #[serde(default)]
    action: Option<String>,
}

/// `GET /slots`: one entry per loaded model (ids in name order), in llama-server's slot shape
/// plus the engine's queue and KV state. Our engines batch up to `--max-num-seqs` sequences
/// each, so a "slot" here is a model's engine, not one sequence. `?fail_on_no_slot=1` answers
/// 503 when every loaded engine is full (requests queued, or all sequences busy).
pub async fn slots(State(st): State<Shared>, axum::extract::Query(q): axum::extract::Query<SlotsQuery>) -> Result<Response, ApiError> {
    let loads = crate::metrics::snapshot(&st.mgr).await;
    let mut out = Vec::new();
    let mut any_free = loads.is_empty();
    for (i, l) in loads.iter().enumerate() {
        let m = &l.model;
        let active = m.active.load(std::sync::atomic::Ordering::SeqCst);
        let mut v = json!({
            "id": i, "id_task": -1, "n_ctx": m.backend.facts().n_ctx, "speculative": false,
            "params": default_params(), "model": m.resolved.name,
        });
        match &l.stats {
            Some(s) => {
                any_free |= s.waiting == 0 && s.running < st.cfg.max_num_seqs;
                let busy = s.running + s.waiting > 0;
                v["is_processing"] = json!(busy);
                v["next_token"] = json!({ "has_next_token": s.running > 0, "has_new_line": false, "n_remain": -1, "n_decoded": 0 });
                v["n_requests_running"] = json!(s.running);
                v["n_requests_waiting"] = json!(s.waiting);
                v["kv_cache_usage_ratio"] = json!(s.kv_usage);
                v["kv_blocks_total"] = json!(s.kv_blocks_total);
                v["kv_blocks_free"] = json!(s.kv_blocks_free);
                v["prefix_cache_queries"] = json!(s.prefix_queries);
                v["prefix_cache_hits"] = json!(s.prefix_hits);
            }
            None => {
                // No snapshot (a stalled engine): what the HTTP side knows.
                v["is_processing"] = json!(active > 0);
                v["next_token"] = json!({ "has_next_token": active > 0, "has_new_line": false, "n_remain": -1, "n_decoded": 0 });
            }
        }
        out.push(v);
    }
    let fail = q.fail_on_no_slot.as_deref().is_some_and(|f| !matches!(f, "" | "0" | "false"));
    if fail && !any_free {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, crate::error::Kind::Unavailable, "no slot available").in_dialect(D));
    }
    Ok(json_response(&Json::Array(out)))
}

/// `POST /slots/{id}?action=erase`: drop the prefix cache of that loaded model (ids as `GET
/// /slots` lists them). `save` / `restore` are not supported (no slot files).
pub async fn slot_action(
    State(st): State<Shared>,
    axum::extract::Path(id): axum::extract::Path<String>,
    axum::extract::Query(q): axum::extract::Query<SlotsQuery>,
) -> Result<Response, ApiError> {
    let id: usize = id.parse().map_err(|_| ApiError::bad_request(format!("invalid slot id {id:?}")).in_dialect(D))?;
    match q.action.as_deref() {
        Some("erase") => {}
        Some("save" | "restore") => {
            return Err(ApiError::not_supported("saving and restoring slots is not supported").in_dialect(D));
        }
        other => {
            return Err(
                ApiError::bad_request(format!("invalid action {:?}: expected erase, save or restore", other.unwrap_or(""))).in_dialect(D)
            )
        }
    }
    let mut models = st.mgr.residents();
    models.sort_by(|a, b| a.resolved.name.cmp(&b.resolved.name).then(a.id.cmp(&b.id)));
    let m = models.get(id).ok_or_else(|| ApiError::not_found(format!("no slot {id} (loaded models: {})", models.len())).in_dialect(D))?;
    match tokio::time::timeout(crate::metrics::STATS_TIMEOUT, m.backend.reset_prefix_cache()).await.ok().flatten() {
        Some(true) => Ok(json_response(&json!({ "id_slot": id, "model": m.resolved.name, "prefix_cache_reset": true }))),
        Some(false) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            crate::error::Kind::Unavailable,
            "requests are running on this model: erase its cache when it is idle",
        )
        .in_dialect(D)),
        None => Err(ApiError::not_supported("this model has no prefix cache to erase").in_dialect(D)),
    }
}

/// `GET /metrics`: Prometheus text; the engines' gauges and counters are read now.
pub async fn metrics(State(st): State<Shared>) -> Response {
    let loads = crate::metrics::snapshot(&st.mgr).await;
    let totals = crate::metrics::EngineTotals::sum(&loads, st.mgr.ledger.totals());
    let mut text = st.metrics.render(&totals);
    text.push_str(&crate::request_cache::render_metrics(st.request_cache.as_deref()));
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
