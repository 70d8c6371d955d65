//! Compiling and rendering a chat template the way Hugging Face transformers does.
//!
//! Modelled on transformers' `apply_chat_template` (`utils/chat_template_utils.py`): a sandboxed
//! jinja2 environment with `trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension, the
//! `generation` tag, the globals `raise_exception` and `strftime_now`, and a `tojson` filter that
//! is `json.dumps(..., ensure_ascii=False)`. The context is `messages`, `tools` (None when
//! absent), `documents` (None), `add_generation_prompt`, the special tokens, then the caller's
//! template kwargs. Python string/dict methods come from minijinja-contrib's pycompat;
//! dicts/lists print as Python `repr`.
//!
//! Invariants:
//! * A template is compiled once (`ChatTemplate::new`); rendering takes `&self` and is
//!   deterministic when the request carries `now`.
//! * Every render is bounded: fuel ([`DEFAULT_FUEL`] VM steps) stops templates that loop for ever
//!   (`range(10**9)`), minijinja's recursion limit stops runaway macro recursion (both give
//!   [`ChatError::TooComplex`]), and output past [`DEFAULT_MAX_OUTPUT`] bytes gives
//!   [`ChatError::OutputTooLarge`].
//! * `raise_exception(msg)` always surfaces as [`ChatError::Raised`] with `msg` unchanged.

use crate::error::{ChatError, RenderErrorKind};
use crate::message::ChatMessage;
use crate::{pycompat, pyfmt};
use chrono::format::{Item, StrftimeItems};
use chrono::NaiveDateTime;
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Serde, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, Value};
use std::fmt::Write as _;
use std::io;

/// VM steps one render may take. Real templates with tools use well under 1% of this.
pub const DEFAULT_FUEL: u64 = 20_000_000;
/// Largest rendered prompt, in bytes.
pub const DEFAULT_MAX_OUTPUT: usize = 16 << 20;

const TEMPLATE_NAME: &str = "chat_template";
/// Context variable through which `strftime_now` reads the request's clock.
const NOW_VAR: &str = "__rocmforge_now";
const NOW_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.f";
/// Filter the rewrite puts on `{% for %}` iterables (see `pycompat::py_iterable`).
const PY_ITERABLE_FILTER: &str = "__py_iterable";

/// ROCmForge's ChatML fallback (see `chatml.jinja`).
pub const CHATML_TEMPLATE: &str = include_str!("chatml.jinja");

/// The turn markers `chatml.jinja` writes: a model running on the fallback template may only
/// produce them as text (its vocabulary need not have them as tokens), so generation stops there.
pub const CHATML_STOPS: [&str; 2] = ["<|im_end|>", "<|im_start|>"];

/// Everything a render needs besides the template.
#[derive(Debug, Clone)]
pub struct RenderRequest<'a> {
    pub messages: &'a [ChatMessage],
    /// The OpenAI `tools` list (passed as-is; `None` renders as Python `None`).
    pub tools: Option<&'a serde_json::Value>,
    pub add_generation_prompt: bool,
    pub bos_token: &'a str,
    pub eos_token: &'a str,
    /// Template kwargs (`enable_thinking`, `reasoning_effort`, ...). The named fields above win
    /// over keys of the same name here.
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// The clock `strftime_now` reads; `None` means the local time now.
    pub now: Option<NaiveDateTime>,
}

impl<'a> RenderRequest<'a> {
    /// A request with no tools, no kwargs, the generation prompt on and empty special tokens.
    pub fn new(messages: &'a [ChatMessage]) -> Self {
        RenderRequest {
            messages,
            tools: None,
            add_generation_prompt: true,
            bos_token: "",
            eos_token: "",
            extra: serde_json::Map::new(),
            now: None,
        }
    }
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    max_output: usize,
    /// Text that ends an assistant turn and is not a token of every vocabulary (see
    /// `stop_strings`).
    stops: &'static [&'static str],
}

/// Marks the error that `raise_exception` produces so it can be told from engine errors.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// Marks a call of a mutating list/dict method, which jinja2's sandbox refuses (`SecurityError`).
#[derive(Debug)]
struct Unsafe;

impl std::fmt::Display for Unsafe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unsafe method")
    }
}

impl std::error::Error for Unsafe {}

/// The methods jinja2's `ImmutableSandboxedEnvironment` refuses (`sandbox.py` `_mutable_spec`:
/// MutableSequence, MutableMapping; sets do not occur in templates' data).
fn is_mutating_method(value: &Value, method: &str) -> bool {
    match value.kind() {
        ValueKind::Seq => matches!(method, "append" | "clear" | "pop" | "reverse" | "insert" | "sort" | "extend" | "remove"),
        ValueKind::Map => matches!(method, "clear" | "pop" | "popitem" | "setdefault" | "update"),
        _ => false,
    }
}

/// minijinja-contrib's Python methods, after refusing the mutating ones the way jinja2's
/// sandbox does.
fn unknown_method(state: &mut State, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    if is_mutating_method(value, method) {
        let ty = if value.kind() == ValueKind::Seq { "list" } else { "dict" };
        let msg = format!("access to attribute '{method}' of '{ty}' object is unsafe");
        return Err(Error::new(ErrorKind::InvalidOperation, msg).with_source(Unsafe));
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

impl ChatTemplate {
    /// Compiles `source` (after [`rewrite_source`]).
    pub fn new(source: &str) -> Result<Self, ChatError> {
        Self::with_limits(source, DEFAULT_FUEL, DEFAULT_MAX_OUTPUT)
    }

    /// Like [`ChatTemplate::new`] with explicit fuel and output limits.
    pub fn with_limits(source: &str, fuel: u64, max_output: usize) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().map_err(|e| syntax_error(&e))?;
        env.set_syntax(syntax);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_fuel(Some(fuel));
        env.set_unknown_method_callback(unknown_method);
        env.set_formatter(python_formatter);
        env.add_filter("tojson", pyfmt::tojson);
        env.add_filter("indent", pycompat::indent);
        env.add_filter(PY_ITERABLE_FILTER, pycompat::py_iterable);
        env.add_test("iterable", pycompat::is_iterable);
        env.add_test("sequence", pycompat::is_sequence);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, rewrite_source(source)).map_err(|e| syntax_error(&e))?;
        Ok(ChatTemplate { env, max_output, stops: &[] })
    }

    /// The ChatML fallback for models without a template. Callers should log that it is used.
    pub fn chatml_default() -> Self {
        // CHATML_TEMPLATE is a constant of this crate, compiled in a unit test; failing here
        // would be a build defect, not something a user or file controls.
        #[allow(clippy::expect_used)]
        let t = Self::new(CHATML_TEMPLATE).expect("built-in ChatML template compiles");
        ChatTemplate { stops: &CHATML_STOPS, ..t }
    }

    /// Stop strings this template implies: the fallback's turn markers; none for a model's own
    /// template (its end-of-turn is an end-of-generation token of its vocabulary).
    pub fn stop_strings(&self) -> &'static [&'static str] {
        self.stops
    }

    /// The model's template when it has one, else the ChatML fallback (logged, since prompts
    /// then may not match what the model was trained on).
    pub fn or_chatml(source: Option<&str>) -> Result<Self, ChatError> {
        match source {
            Some(src) => Self::new(src),
            None => {
                tracing::info!("model has no chat template; using the built-in ChatML template");
                Ok(Self::chatml_default())
            }
        }
    }

    /// Renders the prompt for `req`.
    pub fn render(&self, req: &RenderRequest<'_>) -> Result<String, ChatError> {
        let now = req.now.unwrap_or_else(|| chrono::Local::now().naive_local());
        let mut pairs: Vec<(String, Value)> = req.extra.iter().map(|(k, v)| (k.clone(), Value::from(Serde(v)))).collect();
        let tools = match req.tools {
            Some(t) => Value::from(Serde(t)),
            None => Value::from(()),
        };
        pairs.extend([
            ("messages".to_string(), Value::from(Serde(req.messages))),
            ("tools".to_string(), tools),
            ("documents".to_string(), Value::from(())),
            ("add_generation_prompt".to_string(), Value::from(req.add_generation_prompt)),
            ("bos_token".to_string(), Value::from(req.bos_token)),
            ("eos_token".to_string(), Value::from(req.eos_token)),
            (NOW_VAR.to_string(), Value::from(now.format(NOW_FORMAT).to_string())),
        ]);
        let ctx = Value::from_pairs(pairs);

        let template = self.env.get_template(TEMPLATE_NAME).map_err(|e| syntax_error(&e))?;
        let mut out = LimitedWriter { buf: Vec::new(), limit: self.max_output, exceeded: false };
        let result = template.render_captured_to(ctx, &mut out).map(|_| ());
        if out.exceeded {
            return Err(ChatError::OutputTooLarge { limit: self.max_output });
        }
        result.map_err(|e| render_error(&e))?;
        String::from_utf8(out.buf).map_err(|e| ChatError::Render {
            line: None,
            kind: RenderErrorKind::Other,
            message: format!("output is not UTF-8: {e}"),
        })
    }
}

/// Rewrites constructs minijinja does not parse into equivalents it does.
///
/// * `{% generation %}` / `{% endgeneration %}` (transformers' AssistantTracker tag, which
///   renders its body unchanged outside assistant-mask tracking) become `{% if true %}` /
///   `{% endif %}`: another block tag, so trim/lstrip whitespace handling is unchanged.
/// * `{% for x in a.b %}` becomes `{% for x in a.b|__py_iterable %}` when the iterable is a plain
///   name with attribute/subscript access, so looping over `None` fails as in Python (minijinja
///   loops zero times). Other iterables are left alone.
pub fn rewrite_source(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        // The closing `%}` starts after the opening `{%` (in `{%}` they overlap).
        let Some(end) = tag[2..].find("%}").map(|i| i + 2) else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (open_ws, body) = split_ws_marker_front(inner);
        let (body, close_ws) = split_ws_marker_back(body);
        let replacement = match body.trim() {
            "generation" => Some("if true".to_string()),
            "endgeneration" => Some("endif".to_string()),
            other => rewrite_for(other),
        };
        match replacement {
            Some(r) => {
                let _ = write!(out, "{{%{open_ws} {r} {close_ws}%}}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// `for TARGET in EXPR [if COND] [recursive]` with a simple EXPR gets the iterable check.
fn rewrite_for(body: &str) -> Option<String> {
    let rest = body.strip_prefix("for")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let in_pos = rest.find(" in ")?;
    let (target, after) = (&rest[..in_pos], rest[in_pos + 4..].trim_start());
    let expr_end = after.find(char::is_whitespace).unwrap_or(after.len());
    let (expr, tail) = (&after[..expr_end], after[expr_end..].trim());
    let simple = expr.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && expr.chars().all(|c| c.is_ascii_alphanumeric() || "_.[]'\"".contains(c));
    let tail_ok = tail.is_empty() || tail.starts_with("if ") || tail == "recursive";
    if !simple || !tail_ok {
        return None;
    }
    Some(format!("for{target} in {expr}|{PY_ITERABLE_FILTER} {tail}"))
}

fn split_ws_marker_front(s: &str) -> (&str, &str) {
    match s.chars().next() {
        Some('-') | Some('+') => (&s[..1], &s[1..]),
        _ => ("", s),
    }
}

fn split_ws_marker_back(s: &str) -> (&str, &str) {
    match s.chars().last() {
        Some('-') | Some('+') => (&s[..s.len() - 1], &s[s.len() - 1..]),
        _ => (s, ""),
    }
}

/// Prints like jinja2: containers and floats as Python `repr`, everything else via minijinja's
/// default (which already spells `True`/`False`/`None` like Python).
fn python_formatter(out: &mut minijinja::Output, state: &mut State, value: &Value) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Number if !value.is_integer() => {
            let mut s = String::new();
            pyfmt::write_repr(&mut s, value, 0)?;
            out.write_str(&s).map_err(|e| Error::new(ErrorKind::WriteFailure, "write failed").with_source(e))
        }
        ValueKind::Seq | ValueKind::Map => {
            let mut s = String::new();
            pyfmt::write_repr(&mut s, value, 0)?;
            state.consume_fuel((s.len() / 64) as u64)?;
            out.write_str(&s).map_err(|e| Error::new(ErrorKind::WriteFailure, "write failed").with_source(e))
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

fn raise_exception(message: Value) -> Result<Value, Error> {
    let message = message.to_string();
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

/// `strftime_now(format)`: the request's clock formatted with C strftime codes.
fn strftime_now(state: &State, format: String) -> Result<String, Error> {
    let now = state
        .lookup(NOW_VAR)
        .and_then(|v| v.as_str().and_then(|s| NaiveDateTime::parse_from_str(s, NOW_FORMAT).ok()))
        .unwrap_or_else(|| chrono::Local::now().naive_local());
    let items: Vec<Item<'_>> = StrftimeItems::new(&format).collect();
    if items.iter().any(|i| matches!(i, Item::Error)) {
        return Err(Error::new(ErrorKind::InvalidOperation, format!("strftime_now: invalid format {format:?}")));
    }
    let mut s = String::new();
    write!(s, "{}", now.format_with_items(items.into_iter()))
        .map_err(|_| Error::new(ErrorKind::InvalidOperation, format!("strftime_now: cannot format {format:?}")))?;
    Ok(s)
}

/// Collects the output and refuses to grow past `limit` bytes.
struct LimitedWriter {
    buf: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl io::Write for LimitedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("chat template output limit exceeded"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn syntax_error(e: &Error) -> ChatError {
    ChatError::Syntax { line: e.line(), message: e.to_string() }
}

fn render_error(e: &Error) -> ChatError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(raised) = err.downcast_ref::<Raised>() {
            return ChatError::Raised { message: raised.0.clone() };
        }
        cur = err.source();
    }
    // minijinja's recursion limit and its range() cap (100,000 items, the same cap as jinja2's
    // sandbox MAX_RANGE) are the other two guards against runaway templates.
    let bounded = e.kind() == ErrorKind::InvalidOperation
        && e.detail().is_some_and(|d| d.contains("recursion limit exceeded") || d.contains("range has too many elements"));
    if e.kind() == ErrorKind::OutOfFuel || bounded {
        return ChatError::TooComplex { message: e.to_string() };
    }
    if e.kind() == ErrorKind::SyntaxError {
        return syntax_error(e);
    }
    ChatError::Render { line: e.line(), kind: render_error_kind(e), message: e.to_string() }
}

/// minijinja's "tried to use + operator on unsupported types string and undefined".
fn operand_is_undefined(detail: &str) -> bool {
    detail
        .split_once("unsupported types ")
        .is_some_and(|(_, types)| types.split(" and ").take(2).any(|t| t.split_whitespace().next() == Some("undefined")))
}

/// jinja2's exception class for a minijinja error (see [`RenderErrorKind`]).
fn render_error_kind(e: &Error) -> RenderErrorKind {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<Unsafe>().is_some() {
            return RenderErrorKind::Unsafe;
        }
        cur = err.source();
    }
    match e.kind() {
        // jinja2's Undefined raises UndefinedError from any operator (`'x' + undefined`);
        // minijinja reports an invalid operation on the kind `undefined`.
        ErrorKind::InvalidOperation if e.detail().is_some_and(operand_is_undefined) => RenderErrorKind::Undefined,
        ErrorKind::UndefinedError | ErrorKind::UnknownMethod => RenderErrorKind::Undefined,
        ErrorKind::UnknownFilter | ErrorKind::UnknownTest | ErrorKind::UnknownFunction => RenderErrorKind::UnknownName,
        ErrorKind::InvalidOperation
        | ErrorKind::NonPrimitive
        | ErrorKind::NonKey
        | ErrorKind::TooManyArguments
        | ErrorKind::MissingArgument
        | ErrorKind::BadSerialization
        | ErrorKind::CannotDeserialize
        | ErrorKind::CannotUnpack => RenderErrorKind::Type,
        _ => RenderErrorKind::Other,
    }
}
