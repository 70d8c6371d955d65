//! Request options shared by the dialects: Ollama's `options` map (layered over server defaults
//! and the model's own parameters), `keep_alive` durations, `think`, and `format` /
//! `response_format` constraints, all mapped onto the engine's [`SamplingParams`].
//!
//! Invariants: unknown and removed option keys are accepted (a warning for unknown ones, silence
//! for the legacy keys old clients still send); `null` values are skipped; a value of the wrong
//! JSON type is an error naming the key. Nothing here panics on any JSON input.
//!
//! Modelled on Ollama's `api/types.go` (`Options.FromMap`, `Duration.UnmarshalJSON`,
//! `ThinkValue`) and the spec's §1.3, §1.5–1.7; our own code.

use std::time::Duration;

use rocmforge_engine::request::{Constraint, SamplingParams};
use serde_json::{Map, Value as Json};

use crate::error::ApiError;

/// Options that change how a model is loaded rather than how it samples.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadOptions {
    pub num_ctx: Option<usize>,
    /// `kv_cache_type` (f16, q8_0, fp8): a model loaded with another type is reloaded.
    pub kv_cache_type: Option<rocmforge_engine::KvCacheType>,
}

/// Everything an Ollama `options` map (or a dialect's flat fields) sets for one generation.
#[derive(Clone, Debug)]
pub struct GenOptions {
    pub sampling: SamplingParams,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub load: LoadOptions,
    /// Keep generating past end-of-generation tokens (llama-server `ignore_eos`).
    pub ignore_eos: bool,
}

impl GenOptions {
    pub fn new(sampling: SamplingParams) -> Self {
        GenOptions { sampling, max_tokens: None, stop: Vec::new(), load: LoadOptions::default(), ignore_eos: false }
    }
}

/// Keys Ollama removed that clients still send: accepted without a word.
const LEGACY_KEYS: &[&str] = &[
    "tfs_z",
    "penalize_newline",
    "numa",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mlock",
    "embedding_only",
    "num_gpu",
    "main_gpu",
    "use_mmap",
    "num_thread",
    "num_batch",
    "num_keep",
    "draft_num_predict",
];

fn want_int(key: &str, v: &Json) -> Result<i64, ApiError> {
    // Go decodes JSON numbers into float64 then truncates for int fields.
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
        .ok_or_else(|| ApiError::bad_request(format!("option \"{key}\" must be of type integer")))
}

fn want_float(key: &str, v: &Json) -> Result<f32, ApiError> {
    v.as_f64().map(|f| f as f32).ok_or_else(|| ApiError::bad_request(format!("option \"{key}\" must be of type float")))
}

fn want_bool(key: &str, v: &Json) -> Result<bool, ApiError> {
    v.as_bool().ok_or_else(|| ApiError::bad_request(format!("option \"{key}\" must be of type boolean")))
}

/// A count where negative means "no limit" (llama.cpp's -1).
fn count(v: i64) -> Option<usize> {
    usize::try_from(v).ok()
}

/// `stop` as a string list (a single string is accepted too, as the OpenAI dialects allow).
pub fn stop_list(key: &str, v: &Json) -> Result<Vec<String>, ApiError> {
    match v {
        Json::String(s) => Ok(vec![s.clone()]),
        Json::Array(a) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or_else(|| ApiError::bad_request(format!("invalid type for '{key}' field"))))
            .collect(),
        Json::Null => Ok(Vec::new()),
        _ => Err(ApiError::bad_request(format!("option \"{key}\" must be of type array"))),
    }
}

/// Apply one Ollama-named option. Returns false for a key it does not know.
pub fn apply_option(o: &mut GenOptions, key: &str, v: &Json) -> Result<bool, ApiError> {
    if v.is_null() {
        return Ok(true);
    }
    let s = &mut o.sampling;
    match key {
        "num_ctx" => o.load.num_ctx = count(want_int(key, v)?).filter(|&n| n > 0),
        "kv_cache_type" => {
            let s = v.as_str().ok_or_else(|| ApiError::bad_request(format!("option \"{key}\" must be of type string")))?;
            o.load.kv_cache_type = Some(s.parse().map_err(|e| ApiError::bad_request(format!("option \"{key}\": {e}")))?);
        }
        // -1: no limit; -2: until the context is full (both: the engine's context bound).
        "num_predict" => o.max_tokens = count(want_int(key, v)?),
        "seed" => {
            let n = want_int(key, v)?;
            s.seed = if n < 0 { None } else { Some(n as u64) }
        }
        "top_k" => s.top_k = count(want_int(key, v)?).unwrap_or(0),
        "top_p" => s.top_p = want_float(key, v)?,
        "min_p" => s.min_p = want_float(key, v)?,
        "typical_p" => s.typical_p = want_float(key, v)?,
        "repeat_last_n" => {
            let n = want_int(key, v)?;
            s.repeat_last_n = if n < 0 { usize::MAX } else { n as usize }
        }
        "temperature" => s.temperature = want_float(key, v)?,
        "repeat_penalty" => s.repeat_penalty = want_float(key, v)?,
        "presence_penalty" => s.presence_penalty = want_float(key, v)?,
        "frequency_penalty" => s.frequency_penalty = want_float(key, v)?,
        "mirostat" => s.mirostat = want_int(key, v)?.clamp(0, 2) as u8,
        "mirostat_tau" => s.mirostat_tau = want_float(key, v)?,
        "mirostat_eta" => s.mirostat_eta = want_float(key, v)?,
        "stop" => o.stop.extend(stop_list(key, v)?),
        // Removed or runner-only keys: accepted and ignored (bools still type-checked).
        "use_mlock" | "use_mmap" | "numa" | "low_vram" | "f16_kv" | "logits_all" | "vocab_only" | "embedding_only" | "penalize_newline" => {
            want_bool(key, v)?;
        }
        k if LEGACY_KEYS.contains(&k) => {}
        _ => return Ok(false),
    }
    Ok(true)
}

/// Apply an Ollama `options` object (or a model's params layer) on top of `o`.
pub fn apply_options(o: &mut GenOptions, options: Option<&Json>) -> Result<(), ApiError> {
    let Some(options) = options else { return Ok(()) };
    let map = match options {
        Json::Object(m) => m,
        Json::Null => return Ok(()),
        _ => return Err(ApiError::bad_request("options must be an object")),
    };
    for (k, v) in map {
        if !apply_option(o, k, v)? {
            tracing::warn!("invalid option provided: {k}");
        }
    }
    Ok(())
}

/// A model's default parameters (its params layer): the same keys, but `stop` from the model
/// replaces nothing the request sets later — it is appended first.
pub fn apply_model_params(o: &mut GenOptions, params: &Map<String, Json>) {
    for (k, v) in params {
        // A broken params layer must not make the model unusable: bad values are skipped.
        if let Err(e) = apply_option(o, k, v) {
            tracing::warn!("model parameter {k}: {e}");
        }
    }
}

/// How long a model stays loaded after a request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeepAlive {
    /// Unload as soon as the request ends (`0`).
    Unload,
    For(Duration),
    Forever,
}

/// Go's `time.ParseDuration` subset Ollama accepts: `"5m"`, `"1h30m"`, `"300ms"`, `"-1m"`, `"0"`.
pub fn parse_go_duration(s: &str) -> Result<(bool, Duration), String> {
    let err = || format!("time: invalid duration \"{s}\"");
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok((neg, Duration::ZERO));
    }
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_end == 0 {
            return Err(err());
        }
        let n: f64 = rest[..num_end].parse().map_err(|_| err())?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("time: missing unit in duration \"{s}\"")),
            _ => return Err(format!("time: unknown unit \"{unit}\" in duration \"{s}\"")),
        };
        total += n * scale;
    }
    if !total.is_finite() || total > 1e12 {
        return Err(err());
    }
    Ok((neg, Duration::from_secs_f64(total)))
}

impl KeepAlive {
    /// From a request's `keep_alive` (None: absent or null).
    pub fn parse(v: Option<&Json>) -> Result<Option<KeepAlive>, ApiError> {
        let from_secs = |f: f64| {
            if f < 0.0 {
                KeepAlive::Forever
            } else if f == 0.0 {
                KeepAlive::Unload
            } else {
                KeepAlive::For(Duration::from_secs_f64(f.min(1e12)))
            }
        };
        match v {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Number(n)) => Ok(Some(from_secs(n.as_f64().unwrap_or(0.0)))),
            Some(Json::String(s)) => {
                let (neg, d) = parse_go_duration(s).map_err(ApiError::bad_request)?;
                Ok(Some(if neg {
                    KeepAlive::Forever
                } else if d.is_zero() {
                    KeepAlive::Unload
                } else {
                    KeepAlive::For(d)
                }))
            }
            Some(_) => Err(ApiError::bad_request("keep_alive must be a number of seconds or a duration string")),
        }
    }

    /// `OLLAMA_KEEP_ALIVE`: a duration string or integer seconds; default 5 minutes.
    pub fn from_env(v: Option<&str>) -> KeepAlive {
        let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else { return KeepAlive::For(Duration::from_secs(300)) };
        if let Ok(n) = v.parse::<f64>() {
            return if n < 0.0 {
                KeepAlive::Forever
            } else if n == 0.0 {
                KeepAlive::Unload
            } else {
                KeepAlive::For(Duration::from_secs_f64(n))
            };
        }
        match parse_go_duration(v) {
            Ok((true, _)) => KeepAlive::Forever,
            Ok((false, d)) if d.is_zero() => KeepAlive::Unload,
            Ok((false, d)) => KeepAlive::For(d),
            Err(e) => {
                tracing::warn!("OLLAMA_KEEP_ALIVE: {e}; using 5m");
                KeepAlive::For(Duration::from_secs(300))
            }
        }
    }
}

/// Ollama's `think`: absent, a bool, or a level.
#[derive(Clone, Debug, PartialEq)]
pub enum Think {
    Off,
    On(String),
}

pub fn parse_think(v: Option<&Json>) -> Result<Option<Think>, ApiError> {
    match v {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Bool(false)) => Ok(Some(Think::Off)),
        Some(Json::Bool(true)) => Ok(Some(Think::On("medium".into()))),
        Some(Json::String(s)) if matches!(s.as_str(), "low" | "medium" | "high" | "max") => Ok(Some(Think::On(s.clone()))),
        Some(Json::String(s)) => Err(ApiError::bad_request(format!(
            "invalid think value: \"{s}\" (must be \"high\", \"medium\", \"low\", \"max\", true, or false)"
        ))),
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid think value: {other} (must be \"high\", \"medium\", \"low\", \"max\", true, or false)"
        ))),
    }
}

/// Ollama's `format`: `"json"`, a JSON Schema object, or nothing.
pub fn parse_format(v: Option<&Json>) -> Result<Option<Constraint>, ApiError> {
    match v {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) if s.is_empty() => Ok(None),
        Some(Json::String(s)) if s == "json" => Ok(Some(Constraint::Json)),
        Some(Json::Object(o)) => Ok(Some(Constraint::JsonSchema(Json::Object(o.clone()).to_string()))),
        Some(other) => Err(ApiError::bad_request(format!("invalid format: {other}; expected \"json\" or a valid JSON Schema object"))),
    }
}

/// OpenAI's `response_format`.
pub fn parse_response_format(v: Option<&Json>) -> Result<Option<Constraint>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(None) };
    match v.get("type").and_then(Json::as_str) {
        Some("text") => Ok(None),
        // llama-server also takes a schema inside json_object.
        Some("json_object") => Ok(Some(match v.get("schema") {
            Some(s) if s.is_object() => Constraint::JsonSchema(s.to_string()),
            _ => Constraint::Json,
        })),
        Some("json_schema") => {
            let schema = v.get("json_schema").and_then(|j| j.get("schema")).filter(|s| s.is_object());
            match schema {
                Some(s) => Ok(Some(Constraint::JsonSchema(s.to_string()))),
                None => Err(ApiError::bad_request("response_format json_schema needs json_schema.schema (an object)")),
            }
        }
        _ => Err(ApiError::bad_request("response_format.type must be one of 'text', 'json_object', 'json_schema'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn options_map() {
        let mut o = GenOptions::new(SamplingParams::ollama_defaults());
        apply_options(
            &mut o,
            Some(&json!({"temperature": 0, "top_k": 5.7, "num_predict": 8, "seed": 42, "stop": ["\n"], "num_ctx": 256,
                         "mirostat": 2, "tfs_z": 1.0, "use_mlock": true, "made_up": 1, "top_p": null, "repeat_last_n": -1})),
        )
        .unwrap();
        assert_eq!(o.sampling.temperature, 0.0);
        assert_eq!(o.sampling.top_k, 5);
        assert_eq!(o.max_tokens, Some(8));
        assert_eq!(o.sampling.seed, Some(42));
        assert_eq!(o.stop, vec!["\n"]);
        assert_eq!(o.load.num_ctx, Some(256));
        assert_eq!(o.sampling.mirostat, 2);
        assert_eq!(o.sampling.top_p, SamplingParams::ollama_defaults().top_p);
        assert_eq!(o.sampling.repeat_last_n, usize::MAX);
        let mut o2 = GenOptions::new(SamplingParams::ollama_defaults());
        apply_options(&mut o2, Some(&json!({"num_predict": -1, "seed": -1}))).unwrap();
        assert_eq!((o2.max_tokens, o2.sampling.seed), (None, None));
    }

    #[test]
    fn option_type_errors() {
        let mut o = GenOptions::new(SamplingParams::ollama_defaults());
        apply_options(&mut o, Some(&json!({"kv_cache_type": "Q8_0"}))).unwrap();
        assert_eq!(o.load.kv_cache_type, Some(rocmforge_engine::KvCacheType::Q8_0));
        let e = apply_options(&mut o, Some(&json!({"kv_cache_type": "q4_0"}))).unwrap_err();
        assert_eq!(e.message, "option \"kv_cache_type\": kv cache type 'q4_0' is not supported: use f16|q8_0|fp8");
        let e = apply_options(&mut o, Some(&json!({"kv_cache_type": 8}))).unwrap_err();
        assert_eq!(e.message, "option \"kv_cache_type\" must be of type string");
        let e = apply_options(&mut o, Some(&json!({"num_ctx": "big"}))).unwrap_err();
        assert_eq!(e.message, "option \"num_ctx\" must be of type integer");
        assert!(apply_options(&mut o, Some(&json!({"stop": [1]}))).is_err());
        assert!(apply_options(&mut o, Some(&json!({"use_mlock": 1}))).is_err());
        assert!(apply_options(&mut o, Some(&json!([1]))).is_err());
    }

    #[test]
    fn keep_alive() {
        let ka = |v: Json| KeepAlive::parse(Some(&v));
        assert_eq!(ka(json!(0)).unwrap(), Some(KeepAlive::Unload));
        assert_eq!(ka(json!("0")).unwrap(), Some(KeepAlive::Unload));
        assert_eq!(ka(json!(1.5)).unwrap(), Some(KeepAlive::For(Duration::from_millis(1500))));
        assert_eq!(ka(json!(-1)).unwrap(), Some(KeepAlive::Forever));
        assert_eq!(ka(json!("-1m")).unwrap(), Some(KeepAlive::Forever));
        assert_eq!(ka(json!("1h30m")).unwrap(), Some(KeepAlive::For(Duration::from_secs(5400))));
        assert_eq!(ka(json!("300ms")).unwrap(), Some(KeepAlive::For(Duration::from_millis(300))));
        assert_eq!(ka(json!("10")).unwrap_err().message, "time: missing unit in duration \"10\"");
        assert!(ka(json!("-1")).is_err());
        assert!(ka(json!("5x")).is_err());
        assert!(ka(json!([])).is_err());
        assert_eq!(KeepAlive::parse(None).unwrap(), None);
        assert_eq!(KeepAlive::from_env(Some("10")), KeepAlive::For(Duration::from_secs(10)));
        assert_eq!(KeepAlive::from_env(Some("-1")), KeepAlive::Forever);
        assert_eq!(KeepAlive::from_env(None), KeepAlive::For(Duration::from_secs(300)));
    }

    #[test]
    fn think_and_format() {
        assert_eq!(parse_think(Some(&json!(true))).unwrap(), Some(Think::On("medium".into())));
        assert_eq!(parse_think(Some(&json!("high"))).unwrap(), Some(Think::On("high".into())));
        assert!(parse_think(Some(&json!("x"))).is_err());
        assert!(parse_think(Some(&json!(1))).is_err());
        assert_eq!(parse_format(Some(&json!("json"))).unwrap(), Some(Constraint::Json));
        assert_eq!(parse_format(Some(&json!(""))).unwrap(), None);
        assert!(matches!(parse_format(Some(&json!({"type":"object"}))).unwrap(), Some(Constraint::JsonSchema(_))));
        assert!(parse_format(Some(&json!("xml"))).is_err());
        assert!(parse_format(Some(&json!([1]))).is_err());
        let rf = json!({"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object"}}});
        assert_eq!(parse_response_format(Some(&rf)).unwrap(), Some(Constraint::JsonSchema("{\"type\":\"object\"}".into())));
        assert_eq!(parse_response_format(Some(&json!({"type":"json_object"}))).unwrap(), Some(Constraint::Json));
        assert!(parse_response_format(Some(&json!({"type":"yaml"}))).is_err());
    }
}
