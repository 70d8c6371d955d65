//! Tool calls parsed out of a model's text, for requests that passed `tools`.
//!
//! Formats recognised (the families whose templates ship tool support):
//! * Hermes / Qwen 2.5+: `<tool_call>{"name": …, "arguments": {…}}</tool_call>` (repeatable);
//! * Mistral: `[TOOL_CALLS] [{"name": …, "arguments": {…}}, …]`;
//! * Llama 3.1+: the whole reply is `{"name": …, "parameters": {…}}` (optionally after
//!   `<|python_tag|>`), or a list of such objects.
//!
//! Streaming rule: while the reply so far could still be the start of a tool call (it begins
//! with one of the markers above, or with `{` / `[`), text is held back; once it cannot, it is
//! released as content. Held text that does not parse as calls at the end is released as
//! content too, so nothing the model wrote is lost.
//! Invariants: a parsed call always has a non-empty `name` and an object `arguments`.

use serde_json::{Map, Value as Json};

#[derive(Clone, Debug, PartialEq)]
pub struct ParsedCall {
    pub name: String,
    pub arguments: Map<String, Json>,
}

fn call_from(v: &Json) -> Option<ParsedCall> {
    let name = v.get("name")?.as_str()?.to_string();
    if name.is_empty() {
        return None;
    }
    let args = v.get("arguments").or_else(|| v.get("parameters"));
    let arguments = match args {
        Some(Json::Object(m)) => m.clone(),
        Some(Json::String(s)) => match serde_json::from_str::<Json>(s) {
            Ok(Json::Object(m)) => m,
            _ => return None,
        },
        None | Some(Json::Null) => Map::new(),
        _ => return None,
    };
    Some(ParsedCall { name, arguments })
}

fn calls_from(v: &Json) -> Option<Vec<ParsedCall>> {
    match v {
        Json::Array(a) if !a.is_empty() => a.iter().map(call_from).collect(),
        Json::Object(_) => call_from(v).map(|c| vec![c]),
        _ => None,
    }
}

/// Parse a whole reply: `(content left, calls)`. No calls: the text comes back unchanged.
pub fn parse(text: &str) -> (String, Vec<ParsedCall>) {
    let t = text.trim();
    if t.contains("<tool_call>") {
        let mut calls = Vec::new();
        let mut content = String::new();
        let mut rest = text;
        while let Some(i) = rest.find("<tool_call>") {
            content.push_str(&rest[..i]);
            let after = &rest[i + "<tool_call>".len()..];
            let (body, next) = match after.find("</tool_call>") {
                Some(j) => (&after[..j], &after[j + "</tool_call>".len()..]),
                None => (after, ""),
            };
            match serde_json::from_str::<Json>(body.trim()).ok().as_ref().and_then(calls_from) {
                Some(c) => calls.extend(c),
                None => return (text.to_string(), Vec::new()),
            }
            rest = next;
        }
        content.push_str(rest);
        return (content.trim().to_string(), calls);
    }
    let body = t.strip_prefix("[TOOL_CALLS]").or_else(|| t.strip_prefix("<|python_tag|>")).unwrap_or(t).trim();
    if body.starts_with('{') || body.starts_with('[') {
        if let Some(c) = serde_json::from_str::<Json>(body).ok().as_ref().and_then(calls_from) {
            return (String::new(), c);
        }
    }
    (text.to_string(), Vec::new())
}

/// Could `prefix` (the reply so far) still turn into a tool call?
pub fn may_be_call(prefix: &str) -> bool {
    let t = prefix.trim_start();
    if t.is_empty() {
        return true;
    }
    ["<tool_call>", "[TOOL_CALLS]", "<|python_tag|>"].iter().any(|m| m.starts_with(t) || t.starts_with(m))
        || t.starts_with('{')
        || t.starts_with('[')
}

/// Streaming helper: holds text back while it may be a tool call.
#[derive(Default)]
pub struct ToolStream {
    held: String,
    released: bool,
}

impl ToolStream {
    /// Text that can be shown now.
    pub fn push(&mut self, text: &str) -> String {
        if self.released {
            return text.to_string();
        }
        self.held.push_str(text);
        if may_be_call(&self.held) {
            return String::new();
        }
        self.released = true;
        std::mem::take(&mut self.held)
    }

    /// At the end: content still held (if it was not calls) and the calls.
    pub fn finish(&mut self) -> (String, Vec<ParsedCall>) {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return (String::new(), Vec::new());
        }
        parse(&held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats() {
        let (c, calls) = parse("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Tokyo\"}}\n</tool_call>");
        assert_eq!(c, "");
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(Json::Object(calls[0].arguments.clone()), json!({"city": "Tokyo"}));
        let (_, calls) = parse("[TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {}}, {\"name\": \"b\", \"arguments\": {\"x\": 1}}]");
        assert_eq!(calls.len(), 2);
        let (_, calls) = parse("{\"name\": \"f\", \"parameters\": {\"q\": \"x\"}}");
        assert_eq!(calls[0].arguments["q"], "x");
        let (c, calls) = parse("Sure! {\"name\": 1}");
        assert_eq!((c.as_str(), calls.len()), ("Sure! {\"name\": 1}", 0));
        let (c, calls) = parse("{\"not\": \"a call\"}");
        assert_eq!((c.as_str(), calls.len()), ("{\"not\": \"a call\"}", 0));
        let (c, calls) = parse("<tool_call>broken</tool_call>");
        assert_eq!((c.as_str(), calls.len()), ("<tool_call>broken</tool_call>", 0));
    }

    #[test]
    fn streaming() {
        let mut s = ToolStream::default();
        assert_eq!(s.push("<tool"), "");
        assert_eq!(s.push("_call>{\"name\":\"f\",\"arguments\":{}}"), "");
        assert_eq!(s.push("</tool_call>"), "");
        let (c, calls) = s.finish();
        assert_eq!((c.as_str(), calls.len()), ("", 1));
        let mut s = ToolStream::default();
        assert_eq!(s.push(" Hel"), " Hel");
        assert_eq!(s.push("lo"), "lo");
        assert_eq!(s.finish(), (String::new(), vec![]));
    }
}
