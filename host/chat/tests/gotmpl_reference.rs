//! The Go-template engine against Go's own `text/template`: every case of
//! `tests/fixtures/gotmpl.json` must give Go's output byte for byte, or Go's error message
//! exactly (a case where Ollama's own code panics must fail with an error).
//!
//! The fixture holds Ollama's real templates (llama3, llama3.2 and qwen2.5 with tools, mistral,
//! gemma, gemma3, phi-3, chatml, command-r, firefunction, llama2, alpaca, and Ollama's earlier
//! `.Prompt`-style templates) rendered with every conversation it stores (multi-turn, system
//! prompts, collated turns, prefill, tools, tool calls and results, thinking,
//! fill-in-the-middle), plus edge cases of the language (trim markers, scoping, break/continue,
//! comparisons, missing map keys vs struct fields, printf, literals, parse and execution errors)
//! and of Ollama's data. It is made by `scripts/fixtures/gotmpl_reference` (Go 1.27.3; the
//! command is in the file); never edit it by hand.

use chrono::NaiveDate;
use rocmforge_chat::gotmpl::{ExecOptions, GoTemplate, Limits, OllamaMessage, OllamaTemplate, OllamaToolCall, OllamaValues};
use serde_json::Value as Json;

fn fixture() -> Json {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gotmpl.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("read gotmpl.json")).expect("parse gotmpl.json")
}

fn s(v: &Json, k: &str) -> String {
    v.get(k).and_then(Json::as_str).unwrap_or_default().to_string()
}

/// Ollama's API message JSON.
fn message(m: &Json) -> OllamaMessage {
    let tool_calls = m
        .get("tool_calls")
        .and_then(Json::as_array)
        .map(|calls| {
            calls
                .iter()
                .map(|c| {
                    let f = &c["function"];
                    OllamaToolCall {
                        id: s(c, "id"),
                        index: f.get("index").and_then(Json::as_i64).unwrap_or(0),
                        name: s(f, "name"),
                        arguments: f.get("arguments").cloned(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    OllamaMessage {
        role: s(m, "role").to_lowercase(),
        content: s(m, "content"),
        thinking: s(m, "thinking"),
        tool_calls,
        tool_name: s(m, "tool_name"),
        tool_call_id: s(m, "tool_call_id"),
    }
}

fn values(d: &Json) -> OllamaValues<'_> {
    OllamaValues {
        messages: d.get("messages").and_then(Json::as_array).map(|a| a.iter().map(message).collect()).unwrap_or_default(),
        tools: d.get("tools").filter(|t| !t.is_null()),
        prompt: s(d, "prompt"),
        suffix: s(d, "suffix"),
        think: d.get("think").and_then(Json::as_bool).unwrap_or(false),
        think_level: s(d, "think_level"),
        is_think_set: d.get("is_think_set").and_then(Json::as_bool).unwrap_or(false),
    }
}

#[test]
fn matches_go_text_template() {
    let fx = fixture();
    let today = NaiveDate::parse_from_str(fx["today"].as_str().unwrap(), "%Y-%m-%d").unwrap();
    let opts = ExecOptions { today, limits: Limits::default() };
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() > 250, "fixture too small: {}", cases.len());
    let null = Json::Null;
    let mut failures = Vec::new();
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let template = match c.get("template_name").and_then(Json::as_str) {
            Some(t) => fx["templates"][t].as_str().unwrap().to_string(),
            None => s(c, "template"),
        };
        let data = match c.get("conversation").and_then(Json::as_str) {
            Some(conv) => &fx["conversations"][conv],
            None => c.get("data").unwrap_or(&null),
        };
        let got = match c["mode"].as_str().unwrap() {
            "ollama" => OllamaTemplate::parse(&template).and_then(|t| t.execute(&values(data), &opts)),
            "json" => GoTemplate::parse(&template).and_then(|t| t.execute_json(data, &opts)),
            m => panic!("{name}: unknown mode {m}"),
        };
        let ok = match (&got, c.get("output"), c.get("error"), c.get("panic")) {
            (Ok(out), Some(want), _, _) => out == want.as_str().unwrap(),
            (Err(e), _, Some(want), _) => e.message == want.as_str().unwrap(),
            (Err(_), _, _, Some(_)) => true,
            _ => false,
        };
        if !ok {
            let want = c.get("output").or(c.get("error")).or(c.get("panic")).cloned().unwrap_or_default();
            failures.push(format!("{name}:\n  template: {template:?}\n  want: {want}\n  got:  {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ from Go:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
