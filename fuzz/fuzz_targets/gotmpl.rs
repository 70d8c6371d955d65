//! Fuzz target: a Go template (the input, as `/api/generate`'s `template` or a Modelfile
//! TEMPLATE could carry it) parsed the way Ollama parses it and rendered with a conversation
//! that uses every field Ollama passes (system, multi-turn, tools with nested properties, tool
//! calls with nested and null arguments, tool results, thinking), with `think` on and off, in
//! fill-in-the-middle mode, and as a plain template over JSON data; under small step and
//! output bounds, as a server would set them.
//! Oracle: `OllamaTemplate::parse` / `execute` and `GoTemplate` return text or a
//! `GoTemplateError`; never a panic, a hang (the step bound; libFuzzer's -timeout checks it), a
//! stack overflow (nesting bounds) or output past the bound.
#![no_main]

use std::sync::OnceLock;

use chrono::NaiveDate;
use libfuzzer_sys::fuzz_target;
use rocmforge_chat::gotmpl::{ExecOptions, GoTemplate, Limits, OllamaMessage, OllamaTemplate, OllamaToolCall, OllamaValues};

const LIMITS: Limits = Limits { fuel: 200_000, max_output: 1 << 16 };

struct Data {
    messages: Vec<OllamaMessage>,
    tools: serde_json::Value,
    plain: serde_json::Value,
}

fn data() -> &'static Data {
    static D: OnceLock<Data> = OnceLock::new();
    D.get_or_init(|| {
        let m = |role: &str, content: &str| OllamaMessage { role: role.into(), content: content.into(), ..Default::default() };
        let call = |id: &str, index: i64, name: &str, args: serde_json::Value| OllamaToolCall {
            id: id.into(),
            index,
            name: name.into(),
            arguments: Some(args),
        };
        let messages = vec![
            m("system", "You are terse."),
            m("user", "Weather in <Paris> & \"Rome\"?"),
            OllamaMessage {
                role: "assistant".into(),
                thinking: "Look it up.".into(),
                tool_calls: vec![
                    call(
                        "c1",
                        0,
                        "get_weather",
                        serde_json::json!({"city": "Paris", "days": 3, "tags": ["a", 1.5, null], "opts": {"x": true}}),
                    ),
                    OllamaToolCall { id: String::new(), index: 1, name: "noop".into(), arguments: None },
                ],
                ..Default::default()
            },
            OllamaMessage {
                role: "tool".into(),
                content: "{\"temp\": 21}".into(),
                tool_name: "get_weather".into(),
                tool_call_id: "c1".into(),
                ..Default::default()
            },
            m("assistant", "21C."),
            m("user", "Thanks ünïcödé 🐈"),
        ];
        let tools = serde_json::json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather.",
            "parameters": {"type": "object", "required": ["city"], "properties": {
                "city": {"type": "string", "description": "City"},
                "days": {"type": ["integer", "null"], "enum": [1, 2, 3]},
                "opts": {"type": "object", "properties": {"x": {"type": "boolean"}}},
                "mode": {"anyOf": [{"type": "string"}, {"type": "number"}]}}}}}]);
        let plain =
            serde_json::json!({"s": "hello", "n": 3, "f": 2.5, "list": ["a", "b"], "obj": {"k": "v", "nested": {"x": null}}, "t": true});
        Data { messages, tools, plain }
    })
}

fuzz_target!(|input: &[u8]| {
    let Ok(source) = std::str::from_utf8(input) else { return };
    let opts = ExecOptions { today: NaiveDate::from_ymd_opt(2026, 5, 4).unwrap_or_default(), limits: LIMITS };
    let d = data();
    if let Ok(t) = OllamaTemplate::parse(source) {
        let runs = [
            OllamaValues {
                messages: d.messages.clone(),
                tools: Some(&d.tools),
                think: true,
                think_level: "high".into(),
                is_think_set: true,
                ..Default::default()
            },
            OllamaValues { messages: d.messages[..2].to_vec(), ..Default::default() },
            OllamaValues { prompt: "def f(".into(), suffix: "return x".into(), ..Default::default() },
        ];
        for v in &runs {
            if let Ok(out) = t.execute(v, &opts) {
                assert!(out.len() <= LIMITS.max_output, "output past the bound");
            }
        }
        assert_eq!(t.source(), source);
    }
    if let Ok(t) = GoTemplate::parse(source) {
        if let Ok(out) = t.execute_json(&d.plain, &opts) {
            assert!(out.len() <= LIMITS.max_output, "output past the bound");
        }
    }
});
