//! Every reference chat template of llama.cpp (`.cache/llama.cpp/models/templates/*.jinja`) and
//! our ChatML fallback, rendered with three conversations, must equal Python jinja2 configured
//! like Hugging Face transformers.
//!
//! Expected outputs: `tests/fixtures/chat_templates.json`, produced by
//! `/work/venv/bin/python scripts/fixtures/chat_render.py` (the command is also in the file).
//! Each case expects exact text, `raised` (raise_exception: must be `ChatError::Raised` with the
//! same message) or `error` (any other Python exception: we must fail with an error of the same
//! jinja2 class, `error_class` in the fixture; see `common::same_class`).
//!
//! `KNOWN_DIFFERENCES` lists the renders where exact parity is not reached, with the reason;
//! those must still render without error (or fail the same way), and the test fails if one of
//! them starts matching, so the list stays minimal.

mod common;

use chrono::NaiveDateTime;
use common::same_class;
use rocmforge_chat::{ChatError, ChatMessage, ChatTemplate, RenderRequest};
use serde_json::Value as Json;
use std::path::PathBuf;

const CHATML_NAME: &str = "rocmforge-chatml-default";

/// (template, case, why the output differs from Python jinja2).
const KNOWN_DIFFERENCES: &[(&str, &str, &str)] = &[
    (
        "llama-cpp-deepseek-r1",
        "tools",
        "`tools | map(attribute='function') | tojson`: jinja2's map returns a generator that \
         json.dumps rejects (TypeError), minijinja's returns a list, so we render the prompt \
         (as llama.cpp's own engine, for which this template was written, does)",
    ),
    ("llama-cpp-deepseek-r1", "tools_first_turn", "as [tools]: jinja2's map returns a generator that json.dumps rejects"),
    ("llama-cpp-deepseek-r1", "tools_no_system", "as [tools]: jinja2's map returns a generator that json.dumps rejects"),
    ("llama-cpp-deepseek-r1", "tools_parallel", "as [tools]: jinja2's map returns a generator that json.dumps rejects"),
    (
        "meetkai-functionary-medium-v3.1",
        "tools",
        "`\"...\"|safe + t | tojson`: jinja2's Markup + str HTML-escapes the right operand \
         (the Python prompt has &#34; in the tool JSON); minijinja concatenates plain text",
    ),
    ("meetkai-functionary-medium-v3.1", "tools_first_turn", "as [tools]: jinja2's Markup + str HTML-escapes"),
    ("meetkai-functionary-medium-v3.1", "tools_no_system", "as [tools]: jinja2's Markup + str HTML-escapes"),
    ("meetkai-functionary-medium-v3.1", "tools_parallel", "as [tools]: jinja2's Markup + str HTML-escapes"),
    (
        "CohereForAI-c4ai-command-r-plus-tool_use",
        "tools_parallel",
        "`json_spec.items` on an array parameter: jinja2's `.` tries the attribute first, so it is \
         the dict method `items` and the type prints as `List[Union[]]`; minijinja's `.` reads the \
         key `items` and prints `List[str]`",
    ),
];

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fnv1a64(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn load_fixture() -> Json {
    let path = repo_root().join("host/chat/tests/fixtures/chat_templates.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn template_source(name: &str) -> String {
    let path = repo_root().join(format!(".cache/llama.cpp/models/templates/{name}.jinja"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}; run scripts/fetch-test-data.sh to get llama.cpp's templates", path.display()))
}

fn first_difference(a: &str, b: &str) -> String {
    let pos = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    let ctx = |s: &str| {
        let start = s.floor_char_boundary(pos.saturating_sub(60));
        let end = s.ceil_char_boundary((pos + 60).min(s.len()));
        s[start..end].to_string()
    };
    format!("at byte {pos}:\n    expected …{:?}…\n    actual   …{:?}…", ctx(a), ctx(b))
}

#[test]
fn reference_templates_match_python_jinja2() {
    let fixture = load_fixture();
    let now = NaiveDateTime::parse_from_str(fixture["now"].as_str().expect("now"), "%Y-%m-%dT%H:%M:%S").expect("fixture clock");
    let conversations = fixture["conversations"].as_object().expect("conversations");
    let templates = fixture["templates"].as_object().expect("templates");
    assert!(templates.len() >= 71, "expected llama.cpp's 70 templates plus ChatML");

    let mut failures = Vec::new();
    let mut exact = 0usize;
    let mut total = 0usize;
    let mut known_seen = Vec::new();
    let mut n_errors = 0usize;
    for (name, entry) in templates {
        let source = if name == CHATML_NAME { rocmforge_chat::CHATML_TEMPLATE.to_string() } else { template_source(name) };
        assert_eq!(
            fnv1a64(source.as_bytes()),
            entry["fnv1a64"].as_str().expect("hash"),
            "template {name} changed since the fixture was made: rerun {}",
            fixture["command"]
        );
        let template = if name == CHATML_NAME { Ok(ChatTemplate::chatml_default()) } else { ChatTemplate::new(&source) };
        let cases = entry["cases"].as_object().expect("cases");
        // No template may be checked through its errors alone (the tool-use templates fail on
        // every conversation without tools; TOOL_CONVERSATIONS in the generator give them some).
        let rendered = cases.values().filter(|c| c.get("output").is_some()).count();
        if rendered < 3 {
            failures.push(format!("{name}: only {rendered} of {} conversations render in Python: add cases to the generator", cases.len()));
        }
        for (case, expected) in cases {
            total += 1;
            n_errors += usize::from(expected.get("error").is_some());
            let conv = &conversations[case.as_str()];
            let messages: Vec<ChatMessage> = serde_json::from_value(conv["messages"].clone()).expect("messages");
            let tools = conv["tools"].clone();
            let req = RenderRequest {
                messages: &messages,
                tools: if tools.is_null() { None } else { Some(&tools) },
                add_generation_prompt: conv["add_generation_prompt"].as_bool().unwrap_or(true),
                bos_token: entry["bos_token"].as_str().expect("bos"),
                eos_token: entry["eos_token"].as_str().expect("eos"),
                extra: conv["kwargs"].as_object().cloned().unwrap_or_default(),
                now: Some(now),
            };
            let actual = template.as_ref().map_err(Clone::clone).and_then(|t| t.render(&req));
            let known = KNOWN_DIFFERENCES.iter().find(|(t, c, _)| t == name && c == case);
            let id = format!("{name} [{case}]");
            // (exact match, what differs, whether we at least rendered or raised the same way)
            let (ok, detail, sane) = match (expected.get("output"), expected.get("raised"), &actual) {
                (Some(want), _, Ok(got)) => {
                    let want = want.as_str().expect("output");
                    (want == got, first_difference(want, got), true)
                }
                (Some(_), _, Err(e)) => (false, format!("Python rendered, we failed: {e}"), false),
                (None, Some(msg), Err(ChatError::Raised { message })) => {
                    let msg = msg.as_str().expect("raised");
                    let same = msg == message;
                    (same, format!("raised {message:?}, Python raised {msg:?}"), same)
                }
                (None, Some(msg), other) => (false, format!("Python raised {msg}, we gave {other:?}"), false),
                (None, None, Err(ChatError::Raised { message })) => {
                    (false, format!("Python failed with {}, we raised {message:?}", expected["error"]), false)
                }
                (None, None, Err(e)) => {
                    let class = expected["error_class"].as_str().expect("error_class");
                    let same = same_class(e, class);
                    (same, format!("Python failed with {}, we failed with another class: {e:?}", expected["error"]), same)
                }
                (None, None, Ok(_)) => (false, format!("Python failed with {}, we rendered", expected["error"]), true),
            };
            match (ok, known) {
                (true, None) => exact += 1,
                (true, Some(_)) => failures.push(format!("{id}: listed in KNOWN_DIFFERENCES but now matches: remove it")),
                (false, Some((_, _, why))) if sane => known_seen.push(format!("{id}: {why}")),
                (false, Some(_)) => failures.push(format!("{id}: known difference got worse: {detail}")),
                (false, None) => failures.push(format!("{id}: {detail}")),
            }
        }
    }
    eprintln!("{exact}/{total} renders match Python jinja2 exactly ({n_errors} of them are errors of the same jinja2 class)");
    for k in &known_seen {
        eprintln!("known difference: {k}");
    }
    assert!(failures.is_empty(), "{} of {total} renders wrong:\n{}", failures.len(), failures.join("\n"));
}
