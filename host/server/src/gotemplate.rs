//! Prompts from Go templates, as Ollama builds them: a model's `TEMPLATE` (an Ollama store's
//! template layer, `/api/create`'s `template`) or `/api/generate`'s `template` renders the prompt
//! instead of the model's Jinja chat template. Without one, nothing here runs and the Jinja path
//! is unchanged.
//!
//! Rules: the request's template wins over the model's; a template that does not parse, fails
//! while rendering or runs past its bounds is a 400 carrying Go's message (Ollama answers 500
//! with the same text); the rendered text is tokenized like a chat template's output (special
//! tokens parsed, BOS added unless the text starts with it), as llama-server, which Ollama
//! hands the text to, does.
//!
//! Modelled on Ollama's `server/routes.go` (GenerateHandler) and `server/prompt.go`.

use rocmforge_chat::gotmpl::{ExecOptions, OllamaMessage, OllamaTemplate, OllamaToolCall, OllamaValues};
use rocmforge_chat::{ChatMessage, MessageContent};
use serde_json::Value as Json;

use crate::backend::Backend;
use crate::error::ApiError;
use crate::manager::Resolved;
use crate::options::Think;

/// The Go template to use: the request's (`/api/generate`'s `template`), else the model's.
pub fn select(request: Option<&str>, r: &Resolved) -> Result<Option<OllamaTemplate>, ApiError> {
    let src = request.filter(|t| !t.is_empty()).or(r.go_template.as_deref().filter(|t| !t.is_empty()));
    src.map(parse).transpose()
}

/// Parses a template; its error is the client's (400).
pub fn parse(src: &str) -> Result<OllamaTemplate, ApiError> {
    OllamaTemplate::parse(src).map_err(|e| ApiError::bad_request(e.message))
}

/// Renders `values`; a template error is a 400 with Go's message.
pub fn render(t: &OllamaTemplate, values: &OllamaValues<'_>) -> Result<String, ApiError> {
    t.execute(values, &ExecOptions::now()).map_err(|e| ApiError::bad_request(e.message))
}

/// Ollama's `think`, `ThinkLevel`, `IsThinkSet` for a request's `think`.
pub fn think_values(think: &Option<Think>) -> (bool, String, bool) {
    match think {
        None => (false, String::new(), false),
        Some(Think::Off) => (false, String::new(), true),
        Some(Think::On(level)) => (true, level.clone(), true),
    }
}

/// A chat message as Ollama's template data (arguments stay JSON objects in their order).
pub fn message(m: &ChatMessage) -> OllamaMessage {
    let content = match &m.content {
        None => String::new(),
        Some(MessageContent::Text(t)) => t.clone(),
        Some(MessageContent::Parts(parts)) => parts
            .iter()
            .filter_map(|p| match p {
                rocmforge_chat::ContentPart::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
    };
    let tool_calls = m
        .tool_calls
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| OllamaToolCall {
            id: c.id.clone().unwrap_or_default(),
            // Ollama's clients number calls by position; ChatMessage keeps no index.
            index: i as i64,
            name: c.function.name.clone(),
            arguments: match &c.function.arguments {
                Json::Null => None,
                other => Some(other.clone()),
            },
        })
        .collect();
    OllamaMessage {
        role: m.role.clone(),
        content,
        thinking: m.reasoning_content.clone().unwrap_or_default(),
        tool_calls,
        tool_name: m.name.clone().unwrap_or_default(),
        tool_call_id: m.tool_call_id.clone().unwrap_or_default(),
    }
}

/// Tokens of a rendered prompt: special tokens parsed; the vocabulary's BOS first unless the
/// template wrote it (a second BOS changes Llama-family outputs).
pub fn tokens(b: &dyn Backend, text: &str) -> Result<Vec<u32>, ApiError> {
    let tok = b.tokenizer();
    let bos_text = tok.bos().and_then(|id| tok.token_text(id)).unwrap_or_default();
    let mut ids = Vec::new();
    if tok.add_bos() && (bos_text.is_empty() || !text.starts_with(bos_text)) {
        ids.extend(tok.bos());
    }
    ids.extend(b.raw_tokens(text, false, true)?);
    Ok(ids)
}
