//! Fuzz target: a chat template (the input, as a GGUF `tokenizer.chat_template` or
//! `tokenizer_config.json` could carry it) compiled and rendered with a conversation that uses
//! every message feature (system, tools, tool calls with dict and string arguments, list
//! content, reasoning), under a small fuel and output bound as the server's would be.
//! Oracle: `ChatTemplate::with_limits` and `render` return text or a `ChatError`; never a
//! panic, a hang (fuel bounds every loop and recursion; libFuzzer's -timeout checks it) or a
//! runaway allocation (-rss_limit_mb / -malloc_limit_mb).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rocmforge_chat::{ChatError, ChatMessage, ChatTemplate, RenderRequest};

const FUEL: u64 = 200_000;
const MAX_OUTPUT: usize = 1 << 16;

fn conversation() -> &'static (Vec<ChatMessage>, serde_json::Value) {
    static C: OnceLock<(Vec<ChatMessage>, serde_json::Value)> = OnceLock::new();
    C.get_or_init(|| {
        let messages = serde_json::json!([
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "What is in <this> \"image\"?"}, {"type": "image"}]},
            {"role": "assistant", "content": "", "reasoning_content": "Look first.", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "look", "arguments": {"zoom": 2, "tags": ["a", "b"]}}},
                {"id": "c2", "type": "function", "function": {"name": "look", "arguments": "{\"zoom\": 3}"}}
            ]},
            {"role": "tool", "tool_call_id": "c1", "name": "look", "content": "{\"seen\": \"cat\"}"},
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "Thanks ünïcödé 🐈"}
        ]);
        let tools = serde_json::json!([{"type": "function", "function": {"name": "look", "description": "Look.",
            "parameters": {"type": "object", "properties": {"zoom": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["zoom"]}}}]);
        (serde_json::from_value(messages).expect("messages"), tools)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else { return };
    let t = match ChatTemplate::with_limits(source, FUEL, MAX_OUTPUT) {
        Ok(t) => t,
        Err(ChatError::Syntax { .. }) => return,
        Err(e) => panic!("compiling gave a non-syntax error: {e:?}"),
    };
    let (messages, tools) = conversation();
    let mut extra = serde_json::Map::new();
    extra.insert("enable_thinking".into(), serde_json::Value::Bool(false));
    for (with_tools, gen) in [(true, true), (false, false)] {
        let req = RenderRequest {
            messages,
            tools: with_tools.then_some(tools),
            add_generation_prompt: gen,
            bos_token: "<s>",
            eos_token: "</s>",
            extra: extra.clone(),
            now: Some(chrono::NaiveDateTime::default()),
        };
        match t.render(&req) {
            Ok(out) => assert!(out.len() <= MAX_OUTPUT, "output past the bound"),
            Err(e) => {
                std::hint::black_box(e.to_string());
            }
        }
    }
});
