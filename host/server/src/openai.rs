//! The OpenAI API: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/models`,
//! `/v1/models/{id}`.
//!
//! Unlike Ollama's OpenAI layer, fields left unset take the *model's* defaults (its params
//! layer, GGUF `general.sampling.*`, HF `generation_config.json`), then OpenAI's (temperature 1,
//! top_p 1, everything else off); `max_completion_tokens`, `n`, `seed`, `logprobs`,
//! `response_format` and `stop` are honoured, and Ollama extras (`options`, `num_ctx`,
//! `keep_alive`) are accepted as extra body fields (spec §6.5/§6.6).
//!
//! SSE sequence (spec §2.3): a first chunk with `role` per choice, content chunks, a finish
//! chunk with an empty delta per choice, the usage chunk (`include_usage`), then `[DONE]`.
//! An error after streaming began is `data: {"error": {...}}` before `[DONE]`.

use std::time::{Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::response::Response;
use base64::Engine as _;
use futures_util::stream::{self, StreamExt};
use rocmforge_chat::{ChatMessage, RenderRequest};
use rocmforge_engine::request::{Constraint, Event, FinishReason, SamplingParams};
use serde::Deserialize;
use serde_json::{json, Value as Json};

use crate::error::{ApiError, Dialect};
use crate::gen::{self, Job};
use crate::manager::Resolved;
use crate::ollama::{embed_tokens, normalize, ThinkSplit};
use crate::options::{self, GenOptions, KeepAlive};
use crate::wire::{self, json_response, parse_body, sse, Sse};
use crate::Shared;

const D: Dialect = Dialect::OpenAi;

/// Sampling fields shared by chat and text completions (plus llama-server's extras).
#[derive(Deserialize, Default)]
pub struct SamplingFields {
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub min_p: Option<f32>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub repeat_penalty: Option<f32>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub stop: Option<Json>,
    #[serde(default)]
    pub logit_bias: Option<Json>,
    // Ollama extensions on /v1.
    #[serde(default)]
    pub options: Option<Json>,
    #[serde(default)]
    pub num_ctx: Option<usize>,
    #[serde(default)]
    pub keep_alive: Option<Json>,
    /// llama-server's and vLLM's extension: keep generating past end-of-generation tokens.
    #[serde(default)]
    pub ignore_eos: bool,
}

impl SamplingFields {
    /// Model defaults over OpenAI's neutral defaults, then the request.
    pub fn options(&self, r: &Resolved, n_vocab: usize) -> Result<GenOptions, ApiError> {
        let mut o = GenOptions::new(SamplingParams::neutral());
        o.sampling.repeat_last_n = 64;
        options::apply_model_params(&mut o, &r.params);
        options::apply_options(&mut o, self.options.as_ref()).map_err(|e| e.in_dialect(D))?;
        o.ignore_eos |= self.ignore_eos;
        let s = &mut o.sampling;
        if let Some(t) = self.temperature {
            s.temperature = t;
        }
        if let Some(p) = self.top_p {
            s.top_p = p;
        }
        if let Some(k) = self.top_k {
            s.top_k = k.max(0) as usize;
        }
        if let Some(p) = self.min_p {
            s.min_p = p;
        }
        if let Some(seed) = self.seed {
            s.seed = (seed >= 0).then_some(seed as u64);
        }
        if let Some(p) = self.presence_penalty {
            s.presence_penalty = p;
        }
        if let Some(p) = self.frequency_penalty {
            s.frequency_penalty = p;
        }
        if let Some(p) = self.repeat_penalty {
            s.repeat_penalty = p;
        }
        if let Some(Json::Object(bias)) = &self.logit_bias {
            for (k, v) in bias {
                let (Ok(id), Some(b)) = (k.parse::<u32>(), v.as_f64()) else {
                    return Err(ApiError::bad_request(format!("invalid logit_bias entry {k:?}")).in_dialect(D));
                };
                if id as usize >= n_vocab {
                    return Err(ApiError::bad_request(format!("logit_bias token {id} is out of range")).in_dialect(D));
                }
                s.logit_bias.push((id, if b <= -100.0 { f32::NEG_INFINITY } else { b as f32 }));
            }
        }
        if let Some(m) = self.max_completion_tokens.or(self.max_tokens) {
            if m < 0 {
                return Err(ApiError::bad_request("max_tokens must be at least 0").in_dialect(D));
            }
            o.max_tokens = Some(m as usize);
        }
        if let Some(st) = &self.stop {
            o.stop.extend(options::stop_list("stop", st).map_err(|e| e.in_dialect(D))?);
        }
        if let Some(n) = self.num_ctx {
            o.load.num_ctx = Some(n);
        }
        Ok(o)
    }
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct ChatReq {
    #[serde(default)]
    model: String,
    #[serde(default)]
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<usize>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<usize>,
    #[serde(default)]
    response_format: Option<Json>,
    #[serde(default)]
    tools: Option<Json>,
    #[serde(default)]
    tool_choice: Option<Json>,
    #[serde(default)]
    chat_template_kwargs: Option<serde_json::Map<String, Json>>,
    #[serde(default)]
    add_generation_prompt: Option<bool>,
    #[serde(flatten)]
    sampling: SamplingFields,
}

#[allow(clippy::too_many_arguments)]
/// One generation per choice (`n`), each with its own lease and, when the request fixes a
/// seed, its own seed (seed + index).
async fn submit_n(
    st: &Shared,
    r: &Resolved,
    first: crate::manager::Lease,
    prompt: Vec<u32>,
    opts: &GenOptions,
    c: Option<Constraint>,
    t0: Instant,
    n: usize,
) -> Result<Vec<Job>, ApiError> {
    let mut leases = vec![first];
    for _ in 1..n {
        leases.push(gen::lease_resolved(st, r, None, None, D).await?);
    }
    let mut jobs = Vec::with_capacity(n);
    for (i, l) in leases.into_iter().enumerate() {
        let mut o = opts.clone();
        if let Some(seed) = o.sampling.seed {
            o.sampling.seed = Some(seed.wrapping_add(i as u64));
        }
        jobs.push(gen::submit(st, l, prompt.clone(), &o, c.clone(), t0, D)?);
    }
    Ok(jobs)
}

fn finish_reason(r: FinishReason) -> Json {
    match r {
        FinishReason::Stop => json!("stop"),
        FinishReason::Length => json!("length"),
        _ => Json::Null,
    }
}

fn usage(prompt: usize, completion: usize, cached: usize) -> Json {
    json!({
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": { "cached_tokens": cached },
    })
}

pub async fn chat_completions(State(st): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let req: ChatReq = parse_body(&body, D)?;
    if req.model.trim().is_empty() {
        return Err(ApiError::bad_request("model is required").in_dialect(D));
    }
    if req.messages.is_empty() {
        return Err(ApiError::bad_request("[] is too short - 'messages'").in_dialect(D));
    }
    let n = req.n.unwrap_or(1);
    if !(1..=16).contains(&n) {
        return Err(ApiError::bad_request("n must be between 1 and 16").in_dialect(D));
    }
    if req.top_logprobs.is_some_and(|t| t > 20) {
        return Err(ApiError::bad_request("top_logprobs must be between 0 and 20").in_dialect(D));
    }
    let constraint = options::parse_response_format(req.response_format.as_ref()).map_err(|e| e.in_dialect(D))?;
    let ka = KeepAlive::parse(req.sampling.keep_alive.as_ref()).map_err(|e| e.in_dialect(D))?;
    let r = st.mgr.resolve(&req.model).map_err(|e| ApiError::from(e).in_dialect(D))?;
    let pre_opts = req.sampling.options(&r, usize::MAX)?;
    let lease = gen::lease_load(&st, &r, &pre_opts.load, ka, D).await?;
    let b = lease.model.backend.clone();
    if b.facts().is_embedding {
        return Err(ApiError::bad_request(format!("\"{}\" does not support chat", req.model)).in_dialect(D));
    }
    let mut opts = req.sampling.options(&r, b.facts().n_vocab)?;
    if req.logprobs.unwrap_or(false) {
        opts.sampling.logprobs = Some(req.top_logprobs.unwrap_or(0));
    }
    // The model's Go template (Modelfile TEMPLATE), if any, renders the prompt as /api/chat does.
    let go = crate::gotemplate::select(None, &r).map_err(|e| e.in_dialect(D))?;
    if go.is_none() {
        opts.stop.extend(b.facts().template_stops.iter().cloned());
    }
    let tools_off = req.tool_choice.as_ref().is_some_and(|c| c == "none");
    let mut tools = req.tools.as_ref().filter(|t| !tools_off && t.as_array().is_some_and(|a| !a.is_empty()));
    let tools_ok = match &go {
        Some(t) => t.vars().iter().any(|v| v == "tools"),
        None => crate::describe::file_facts(&r.path).capabilities.contains(&"tools"),
    };
    if tools.is_some() && !tools_ok {
        // A template without tool support cannot show the tools: with `tool_choice` "auto" (or
        // unset) the model answers without them, as /api/chat does; a required call cannot be
        // honoured.
        let forced = req.tool_choice.as_ref().is_some_and(|c| c == "required" || c.is_object());
        if forced {
            return Err(ApiError::bad_request(format!("\"{}\" does not support tools", req.model)).in_dialect(D));
        }
        tracing::debug!("{}: the chat template has no tool support; ignoring the request's tools", r.name);
        tools = None;
    }
    let has_tools = tools.is_some();
    let mut msgs: Vec<ChatMessage> = Vec::new();
    let first_is_system = req.messages.first().is_some_and(|m| m.role == "system" || m.role == "developer");
    if !first_is_system {
        if let Some(s) = r.system.clone().filter(|s| !s.is_empty()) {
            msgs.push(ChatMessage::text("system", s));
        }
    }
    for mut m in req.messages {
        if m.role == "developer" {
            m.role = "system".into();
        }
        msgs.push(m);
    }
    content_parts_for_template(&mut msgs, b.facts().chat_template.as_deref(), &req.model).map_err(|e| e.in_dialect(D))?;
    let mut rr = RenderRequest::new(&msgs);
    rr.tools = tools;
    if let Some(kw) = req.chat_template_kwargs {
        rr.extra = kw;
    }
    if let Some(a) = req.add_generation_prompt {
        rr.add_generation_prompt = a;
    }
    let prompt = match &go {
        Some(t) => {
            let values = rocmforge_chat::gotmpl::OllamaValues {
                messages: msgs.iter().map(crate::gotemplate::message).collect(),
                tools: rr.tools,
                ..Default::default()
            };
            let text = crate::gotemplate::render(t, &values).map_err(|e| e.in_dialect(D))?;
            crate::gotemplate::tokens(b.as_ref(), &text).map_err(|e| e.in_dialect(D))?
        }
        None => b.chat_tokens(&rr).map_err(|e| ApiError::from(e).in_dialect(D))?,
    };
    let n_ctx = b.facts().n_ctx;
    if prompt.len() > n_ctx {
        return Err(ApiError::context_overflow(prompt.len(), n_ctx).in_dialect(D));
    }
    let thinking = crate::describe::file_facts(&r.path).capabilities.contains(&"thinking")
        && rr.extra.get("enable_thinking").is_none_or(|v| v != &json!(false));
    let jobs = submit_n(&st, &r, lease, prompt, &opts, constraint, t0, n).await?;
    let ctx = Ctx {
        id: format!("chatcmpl-{}", wire::random_id(24)),
        created: wire::unix_secs(SystemTime::now()),
        model: req.model.clone(),
        chat: true,
        thinking,
        tools: has_tools,
    };
    if req.stream {
        let usage_on = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
        Ok(stream_choices(jobs, ctx, usage_on))
    } else {
        collect_choices(jobs, ctx).await
    }
}

/// Whether a chat template reads list content itself (`{% for part in message['content'] %}`,
/// `content is string` tests), as multimodal templates do; others concatenate `content` as a
/// string and fail (or print a list) on OpenAI's content parts.
fn template_takes_parts(t: &str) -> bool {
    let t: String = t.chars().filter(|c| !c.is_whitespace()).collect();
    [
        "inmessage['content']",
        "inmessage[\"content\"]",
        "inmessage.content",
        "incontent%}",
        "isstring",
        "isnotstring",
        "isiterable",
        "issequence",
        "ismapping",
    ]
    .iter()
    .any(|p| t.contains(p))
}

/// OpenAI content parts, made fit for the model: image parts are refused (our models are
/// text-only: better a clear 400 than an answer that ignored the picture), and for templates
/// that take `content` as a string, text parts are joined with newlines (as vLLM does).
pub(crate) fn content_parts_for_template(msgs: &mut [ChatMessage], template: Option<&str>, model: &str) -> Result<(), ApiError> {
    use rocmforge_chat::{ContentPart, MessageContent};
    let keep_parts = template.is_some_and(template_takes_parts);
    for m in msgs.iter_mut() {
        let Some(MessageContent::Parts(parts)) = &m.content else { continue };
        if parts.iter().any(|p| !matches!(p, ContentPart::Text { .. })) {
            return Err(ApiError::bad_request(format!("\"{model}\" does not support vision")));
        }
        if !keep_parts {
            let text: Vec<&str> = parts
                .iter()
                .filter_map(|p| match p {
                    ContentPart::Text { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect();
            m.content = Some(MessageContent::Text(text.join("\n")));
        }
    }
    Ok(())
}

/// What every chunk repeats.
#[derive(Clone)]
struct Ctx {
    id: String,
    created: u64,
    model: String,
    chat: bool,
    thinking: bool,
    /// Parse tool calls out of the content (the request passed `tools`).
    tools: bool,
}

/// OpenAI's tool-call objects (`arguments` as a JSON string).
fn tool_calls_json(calls: &[crate::toolcall::ParsedCall]) -> Json {
    Json::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({ "index": i, "id": format!("call_{}", wire::random_id(24)), "type": "function",
                        "function": { "name": c.name, "arguments": Json::Object(c.arguments.clone()).to_string() } })
            })
            .collect(),
    )
}

impl Ctx {
    fn chunk(&self, choices: Json) -> Json {
        json!({
            "id": self.id, "object": if self.chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.created, "model": self.model, "system_fingerprint": "fp_rocmforge", "choices": choices,
        })
    }
}

fn oai_logprobs(b: &dyn crate::backend::Backend, lps: &[rocmforge_engine::request::TokenLogprob], chat: bool) -> Json {
    if chat {
        json!({ "content": gen::logprobs_json(b, lps, true) })
    } else {
        // Legacy completions shape.
        let tokens: Vec<String> = lps.iter().map(|l| gen::token_text(b, l.token).0).collect();
        let lp: Vec<f32> = lps.iter().map(|l| l.logprob).collect();
        let top: Vec<Json> = lps
            .iter()
            .map(|l| {
                let m: serde_json::Map<String, Json> = l.top.iter().map(|(id, p)| (gen::token_text(b, *id).0, json!(p))).collect();
                Json::Object(m)
            })
            .collect();
        json!({ "tokens": tokens, "token_logprobs": lp, "top_logprobs": top, "text_offset": [] })
    }
}

/// Merge the choices' events into one SSE stream.
fn stream_choices(jobs: Vec<Job>, ctx: Ctx, include_usage: bool) -> Response {
    let n = jobs.len();
    let backend = jobs[0].backend().clone();
    let streams = jobs.into_iter().enumerate().map(|(i, job)| {
        stream::unfold(Some(job), move |job| async move {
            let mut job = job?;
            let ev = job.next().await?;
            let done = matches!(ev, Event::Done(_));
            Some(((i, ev), if done { None } else { Some(job) }))
        })
        .boxed()
    });
    let merged = stream::select_all(streams);
    struct St {
        merged: stream::SelectAll<stream::BoxStream<'static, (usize, Event)>>,
        ctx: Ctx,
        splits: Vec<ThinkSplit>,
        toolstreams: Vec<crate::toolcall::ToolStream>,
        first_sent: Vec<bool>,
        open: usize,
        prompt_tokens: usize,
        cached: usize,
        completion: usize,
        include_usage: bool,
        backend: std::sync::Arc<dyn crate::backend::Backend>,
        tail: Vec<Sse>,
        finished: bool,
    }
    let splits = (0..n).map(|_| ThinkSplit::new(ctx.thinking)).collect();
    let init = St {
        merged,
        ctx,
        splits,
        toolstreams: (0..n).map(|_| Default::default()).collect(),
        first_sent: vec![false; n],
        open: n,
        prompt_tokens: 0,
        cached: 0,
        completion: 0,
        include_usage,
        backend,
        tail: Vec::new(),
        finished: false,
    };
    let s = stream::unfold(init, |mut s| async move {
        loop {
            if let Some(t) = s.tail.pop() {
                return Some((t, s));
            }
            if s.finished {
                return None;
            }
            let Some((i, ev)) = s.merged.next().await else {
                s.finished = true;
                let mut tail = Vec::new();
                if s.include_usage {
                    let mut u = s.ctx.chunk(json!([]));
                    u["usage"] = usage(s.prompt_tokens, s.completion, s.cached);
                    tail.push(Sse::Data(u));
                }
                tail.push(Sse::Done);
                tail.reverse();
                s.tail = tail;
                continue;
            };
            match ev {
                Event::Delta { text, logprobs, .. } => {
                    let (th, co) = s.splits[i].push(&text);
                    let co = if s.ctx.tools { s.toolstreams[i].push(&co) } else { co };
                    let want_lp = !logprobs.is_empty();
                    if th.is_empty() && co.is_empty() && !want_lp && s.first_sent[i] {
                        continue;
                    }
                    let mut choice = if s.ctx.chat {
                        let mut delta = json!({ "content": co });
                        if !s.first_sent[i] {
                            delta = json!({ "role": "assistant", "content": co });
                        }
                        if !th.is_empty() {
                            delta["reasoning_content"] = json!(th);
                        }
                        json!({ "index": i, "delta": delta, "finish_reason": null })
                    } else {
                        json!({ "index": i, "text": co, "finish_reason": null })
                    };
                    s.first_sent[i] = true;
                    if want_lp {
                        choice["logprobs"] = oai_logprobs(s.backend.as_ref(), &logprobs, s.ctx.chat);
                    }
                    return Some((Sse::Data(s.ctx.chunk(json!([choice]))), s));
                }
                Event::Done(fin) => {
                    s.open -= 1;
                    if fin.reason == FinishReason::Error {
                        let msg = fin.error.unwrap_or_else(|| "the model failed".into());
                        s.finished = true;
                        s.tail = vec![Sse::Done];
                        return Some((
                            Sse::Data(json!({ "error": { "message": msg, "type": "server_error", "param": null, "code": null } })),
                            s,
                        ));
                    }
                    // Once per request, not per choice: the prompt is shared.
                    s.prompt_tokens = fin.metrics.prompt_tokens;
                    s.cached = s.cached.max(fin.metrics.cached_tokens);
                    s.completion += fin.metrics.completion_tokens;
                    let (th, mut co) = s.splits[i].finish();
                    let mut calls = Vec::new();
                    if s.ctx.tools {
                        co = s.toolstreams[i].push(&co);
                        let (held, c) = s.toolstreams[i].finish();
                        co.push_str(&held);
                        calls = c;
                    }
                    let mut out = Vec::new();
                    if !th.is_empty() || !co.is_empty() || !s.first_sent[i] {
                        let mut delta = json!({ "content": co });
                        if !s.first_sent[i] {
                            delta["role"] = json!("assistant");
                        }
                        if !th.is_empty() {
                            delta["reasoning_content"] = json!(th);
                        }
                        let choice = if s.ctx.chat {
                            json!({ "index": i, "delta": delta, "finish_reason": null })
                        } else {
                            json!({ "index": i, "text": co, "finish_reason": null })
                        };
                        out.push(Sse::Data(s.ctx.chunk(json!([choice]))));
                        s.first_sent[i] = true;
                    }
                    if !calls.is_empty() {
                        let delta = json!({ "content": "", "tool_calls": tool_calls_json(&calls) });
                        out.push(Sse::Data(s.ctx.chunk(json!([{ "index": i, "delta": delta, "finish_reason": null }]))));
                    }
                    let fr = if calls.is_empty() { finish_reason(fin.reason) } else { json!("tool_calls") };
                    let choice = if s.ctx.chat {
                        json!({ "index": i, "delta": {}, "finish_reason": fr })
                    } else {
                        json!({ "index": i, "text": "", "finish_reason": fr })
                    };
                    // llama-server's `timings` on the finish chunk: Open WebUI's OpenAI connection
                    // turns them into the token counts and speeds it shows when the request did
                    // not ask for a usage chunk.
                    let mut last = s.ctx.chunk(json!([choice]));
                    last["timings"] = crate::llama::timings(&fin);
                    out.push(Sse::Data(last));
                    out.reverse();
                    s.tail = out;
                    continue;
                }
            }
        }
    });
    sse(s)
}

async fn collect_choices(jobs: Vec<Job>, ctx: Ctx) -> Result<Response, ApiError> {
    let mut choices = Vec::new();
    let (mut prompt_tokens, mut completion, mut cached) = (0, 0, 0);
    let mut timings = Json::Null;
    for (i, job) in jobs.into_iter().enumerate() {
        let d = gen::run_to_end(job).await;
        if d.fin.reason == FinishReason::Error {
            return Err(ApiError::internal(d.fin.error.unwrap_or_else(|| "the model failed".into())).in_dialect(D));
        }
        timings = crate::llama::timings(&d.fin);
        prompt_tokens = d.fin.metrics.prompt_tokens;
        cached = cached.max(d.fin.metrics.cached_tokens);
        completion += d.fin.metrics.completion_tokens;
        let mut split = ThinkSplit::new(ctx.thinking);
        let (mut th, mut co) = split.push(&d.text);
        let (t2, c2) = split.finish();
        th.push_str(&t2);
        co.push_str(&c2);
        let lp = if d.logprobs.is_empty() { Json::Null } else { oai_logprobs(d.backend.as_ref(), &d.logprobs, ctx.chat) };
        let mut calls = Vec::new();
        if ctx.tools {
            (co, calls) = crate::toolcall::parse(&co);
        }
        let choice = if ctx.chat {
            let mut msg = json!({ "role": "assistant", "content": co });
            if !th.is_empty() {
                msg["reasoning_content"] = json!(th);
            }
            let mut fr = finish_reason(d.fin.reason);
            if !calls.is_empty() {
                msg["tool_calls"] = tool_calls_json(&calls);
                if co.is_empty() {
                    msg["content"] = Json::Null;
                }
                fr = json!("tool_calls");
            }
            json!({ "index": i, "message": msg, "finish_reason": fr, "logprobs": lp })
        } else {
            json!({ "index": i, "text": co, "finish_reason": finish_reason(d.fin.reason), "logprobs": lp })
        };
        choices.push(choice);
    }
    Ok(json_response(&json!({
        "id": ctx.id, "object": if ctx.chat { "chat.completion" } else { "text_completion" },
        "created": ctx.created, "model": ctx.model, "system_fingerprint": "fp_rocmforge",
        "choices": choices, "usage": usage(prompt_tokens, completion, cached), "timings": timings,
    })))
}

#[derive(Deserialize)]
struct CompletionReq {
    #[serde(default)]
    model: String,
    #[serde(default)]
    prompt: Option<Json>,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<usize>,
    #[serde(default)]
    logprobs: Option<usize>,
    #[serde(default)]
    echo: bool,
    #[serde(default)]
    response_format: Option<Json>,
    #[serde(flatten)]
    sampling: SamplingFields,
}

pub async fn completions(State(st): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let req: CompletionReq = parse_body(&body, D)?;
    if req.model.trim().is_empty() {
        return Err(ApiError::bad_request("model is required").in_dialect(D));
    }
    if req.echo {
        return Err(ApiError::bad_request("echo is not supported").in_dialect(D));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request("suffix is not supported on /v1/completions; use /api/generate or /infill").in_dialect(D));
    }
    let n = req.n.unwrap_or(1);
    if !(1..=16).contains(&n) {
        return Err(ApiError::bad_request("n must be between 1 and 16").in_dialect(D));
    }
    let constraint = options::parse_response_format(req.response_format.as_ref()).map_err(|e| e.in_dialect(D))?;
    let ka = KeepAlive::parse(req.sampling.keep_alive.as_ref()).map_err(|e| e.in_dialect(D))?;
    let r = st.mgr.resolve(&req.model).map_err(|e| ApiError::from(e).in_dialect(D))?;
    let pre = req.sampling.options(&r, usize::MAX)?;
    let lease = gen::lease_load(&st, &r, &pre.load, ka, D).await?;
    let b = lease.model.backend.clone();
    let mut opts = req.sampling.options(&r, b.facts().n_vocab)?;
    if let Some(k) = req.logprobs {
        opts.sampling.logprobs = Some(k.min(20));
    }
    let prompt = match req.prompt {
        Some(Json::String(s)) => b.raw_tokens(&s, true, true).map_err(|e| ApiError::from(e).in_dialect(D))?,
        Some(Json::Array(a)) if a.len() == 1 && a[0].is_string() => {
            b.raw_tokens(a[0].as_str().unwrap_or(""), true, true).map_err(|e| ApiError::from(e).in_dialect(D))?
        }
        Some(Json::Array(a)) if !a.is_empty() && a.iter().all(Json::is_u64) => {
            let ids: Vec<u32> = a.iter().filter_map(Json::as_u64).map(|x| x as u32).collect();
            if ids.iter().any(|&t| t as usize >= b.facts().n_vocab) {
                return Err(ApiError::bad_request("prompt token id out of range").in_dialect(D));
            }
            ids
        }
        _ => return Err(ApiError::bad_request("prompt must be a string (or one list of token ids)").in_dialect(D)),
    };
    let n_ctx = b.facts().n_ctx;
    if prompt.len() > n_ctx {
        return Err(ApiError::context_overflow(prompt.len(), n_ctx).in_dialect(D));
    }
    let jobs = submit_n(&st, &r, lease, prompt, &opts, constraint, t0, n).await?;
    let ctx = Ctx {
        id: format!("cmpl-{}", wire::random_id(24)),
        created: wire::unix_secs(SystemTime::now()),
        model: req.model.clone(),
        chat: false,
        thinking: false,
        tools: false,
    };
    if req.stream {
        let usage_on = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
        Ok(stream_choices(jobs, ctx, usage_on))
    } else {
        collect_choices(jobs, ctx).await
    }
}

#[derive(Deserialize)]
struct EmbeddingsReq {
    #[serde(default)]
    model: String,
    #[serde(default)]
    input: Option<Json>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
}

pub async fn embeddings(State(st): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let req: EmbeddingsReq = parse_body(&body, D)?;
    let base64 = match req.encoding_format.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "Invalid value for 'encoding_format' = {}. Supported values: ['float', 'base64'].",
                req.encoding_format.unwrap_or_default()
            ))
            .in_dialect(D))
        }
    };
    // Strings, or token-id lists.
    enum In {
        Text(Vec<String>),
        Tokens(Vec<Vec<u32>>),
    }
    let input = match &req.input {
        Some(Json::String(s)) => In::Text(vec![s.clone()]),
        Some(Json::Array(a)) if !a.is_empty() && a.iter().all(Json::is_string) => {
            In::Text(a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        }
        Some(Json::Array(a)) if !a.is_empty() && a.iter().all(Json::is_u64) => {
            In::Tokens(vec![a.iter().filter_map(Json::as_u64).map(|x| x as u32).collect()])
        }
        Some(Json::Array(a))
            if !a.is_empty() && a.iter().all(|x| x.as_array().is_some_and(|v| !v.is_empty() && v.iter().all(Json::is_u64))) =>
        {
            In::Tokens(
                a.iter()
                    .map(|x| x.as_array().map(|v| v.iter().filter_map(Json::as_u64).map(|t| t as u32).collect()).unwrap_or_default())
                    .collect(),
            )
        }
        _ => return Err(ApiError::bad_request("invalid input").in_dialect(D)),
    };
    let r = st.mgr.resolve(&req.model).map_err(|e| ApiError::from(e).in_dialect(D))?;
    let lease = gen::lease_resolved(&st, &r, None, None, D).await?;
    let b = lease.model.backend.clone();
    let ids = match input {
        In::Text(t) => embed_tokens(b.as_ref(), &t, true).map_err(|e| e.in_dialect(D))?,
        In::Tokens(t) => {
            if t.iter().flatten().any(|&x| x as usize >= b.facts().n_vocab) {
                return Err(ApiError::bad_request("input token id out of range").in_dialect(D));
            }
            t
        }
    };
    let n_tokens: usize = ids.iter().map(Vec::len).sum();
    let vecs = b.embed(ids).await.map_err(|e| ApiError::from(e).in_dialect(D))?;
    let data: Vec<Json> = vecs
        .into_iter()
        .enumerate()
        .map(|(i, mut v)| {
            if let Some(d) = req.dimensions.filter(|&d| d > 0 && d < v.len()) {
                v.truncate(d);
            }
            normalize(&mut v);
            let emb = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({ "object": "embedding", "embedding": emb, "index": i })
        })
        .collect();
    Ok(json_response(
        &json!({ "object": "list", "data": data, "model": req.model, "usage": { "prompt_tokens": n_tokens, "total_tokens": n_tokens } }),
    ))
}

fn model_object(r: &Resolved, id: &str) -> Json {
    let owner = rocmforge_store::ModelName::parse(&r.name).map(|n| n.namespace).unwrap_or_else(|_| "rocmforge".into());
    json!({ "id": id, "object": "model", "created": wire::unix_secs(r.modified), "owned_by": owner })
}

pub async fn models(State(st): State<Shared>) -> Response {
    let mgr = st.mgr.clone();
    let list = tokio::task::spawn_blocking(move || mgr.list()).await.unwrap_or_default();
    let data: Vec<Json> = list.iter().map(|r| model_object(r, &r.name)).collect();
    json_response(&json!({ "object": "list", "data": data }))
}

pub async fn model(State(st): State<Shared>, UrlPath(id): UrlPath<String>) -> Result<Response, ApiError> {
    let r = st.mgr.resolve(&id).map_err(|e| ApiError::from(e).in_dialect(D))?;
    Ok(json_response(&model_object(&r, &id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_parts() {
        use rocmforge_chat::{ContentPart, MessageContent};
        assert!(!template_takes_parts("{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] }}"));
        assert!(template_takes_parts("{%- if message['content'] is string %}{{ message['content'] }}{% endif %}"));
        assert!(template_takes_parts("{% for item in message.content %}{{ item.text }}{% endfor %}"));
        let parts = |ps: Vec<ContentPart>| {
            vec![ChatMessage { role: "user".into(), content: Some(MessageContent::Parts(ps)), ..Default::default() }]
        };
        let text = |t: &str| ContentPart::Text { text: t.into() };
        let mut m = parts(vec![text("a"), text("b")]);
        content_parts_for_template(&mut m, Some("{{ message['content'] }}"), "m").unwrap();
        assert_eq!(m[0].content, Some(MessageContent::Text("a\nb".into())));
        let mut m = parts(vec![text("a")]);
        content_parts_for_template(&mut m, Some("{% for p in message['content'] %}{% endfor %}"), "m").unwrap();
        assert!(matches!(m[0].content, Some(MessageContent::Parts(_))));
        let mut m = parts(vec![text("a"), ContentPart::ImageUrl { image_url: serde_json::json!({"url": "data:image/png;base64,AA"}) }]);
        assert_eq!(content_parts_for_template(&mut m, None, "m").unwrap_err().message, "\"m\" does not support vision");
    }
}
