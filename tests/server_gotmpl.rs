//! Go templates on the real server with the real SmolLM2-135M: `/api/generate`'s `template`
//! and a model created with a TEMPLATE render the prompt instead of the GGUF's Jinja template;
//! a broken template is a 400 naming Go's error. The engine itself is checked against Go's
//! `text/template` in `host/chat/tests/gotmpl_reference.rs`.
//!
//! The oracle here is `raw` mode: a prompt rendered by a Go template must reach the model as
//! exactly the same tokens (and so the same greedy output) as that text sent raw.

mod server_util;

use rocmforge_chat::gotmpl::{ExecOptions, OllamaMessage, OllamaTemplate, OllamaValues};
use serde_json::{json, Value as Json};
use server_util::{Server, SMOL};

fn user(content: &str) -> OllamaMessage {
    OllamaMessage { role: "user".into(), content: content.into(), ..Default::default() }
}

/// What the engine (checked against Go in host/chat) renders for these messages.
fn expected(template: &str, messages: &[(&str, &str)]) -> String {
    let messages =
        messages.iter().map(|(r, c)| OllamaMessage { role: r.to_string(), content: c.to_string(), ..Default::default() }).collect();
    OllamaTemplate::parse(template).unwrap().execute(&OllamaValues { messages, ..Default::default() }, &ExecOptions::now()).unwrap()
}

fn greedy(extra: Json) -> Json {
    let mut body = json!({"model": SMOL, "stream": false, "options": {"num_predict": 8, "temperature": 0, "seed": 1}});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

fn generate(s: &Server, extra: Json) -> Json {
    let (st, v) = s.json("/api/generate", &greedy(extra));
    assert_eq!(st, 200, "{v}");
    v
}

fn text(v: &Json) -> String {
    v["response"].as_str().unwrap().to_string()
}

/// Prompt tokens of a (non-raw) generate: its `context` less the generated tokens.
/// (`prompt_eval_count` leaves out tokens the prefix cache already held.)
fn prompt_len(v: &Json) -> u64 {
    v["context"].as_array().unwrap().len() as u64 - v["eval_count"].as_u64().unwrap()
}

/// How many tokens `text` is as a raw prompt (`/v1/completions` tokenizes like `raw`).
fn raw_len(s: &Server, model: &str, text: &str) -> u64 {
    let (st, v) = s.json("/v1/completions", &json!({"model": model, "prompt": text, "max_tokens": 1, "temperature": 0}));
    assert_eq!(st, 200, "{v}");
    v["usage"]["prompt_tokens"].as_u64().unwrap()
}

#[test]
fn generate_with_a_template() {
    let s = Server::start(&[]);
    let prompt = "The capital of France is";

    // `{{ .Prompt }}` makes the prompt the bare text: the same tokens and output as `raw`.
    let raw = generate(&s, json!({"prompt": prompt, "raw": true}));
    let tmpl = generate(&s, json!({"prompt": prompt, "template": "{{ .Prompt }}"}));
    assert_eq!(text(&tmpl), text(&raw), "a {{{{ .Prompt }}}} template must equal raw mode");
    assert_eq!(prompt_len(&tmpl), raw_len(&s, SMOL, prompt));
    // The model's own (Jinja) chat template adds its turn markers: more prompt tokens.
    let jinja = generate(&s, json!({"prompt": prompt}));
    assert!(prompt_len(&jinja) > prompt_len(&tmpl) + 2, "jinja {jinja} vs template {tmpl}");

    // A template with the system prompt and ChatML markers: the rendered text, sent raw, gives
    // the same prompt and output; `_debug_render_only` shows what was rendered.
    let chatml = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n";
    let (st, dbg) = s.json(
        "/api/generate",
        &json!({"model": SMOL, "prompt": prompt, "system": "Be brief.", "template": chatml, "_debug_render_only": true}),
    );
    assert_eq!(st, 200, "{dbg}");
    let rendered = dbg["_debug_info"]["rendered_template"].as_str().unwrap().to_string();
    assert_eq!(rendered, expected(chatml, &[("system", "Be brief."), ("user", prompt)]));
    let via_template = generate(&s, json!({"prompt": prompt, "system": "Be brief.", "template": chatml}));
    let via_raw = generate(&s, json!({"prompt": rendered, "raw": true}));
    assert_eq!(text(&via_template), text(&via_raw));
    assert_eq!(prompt_len(&via_template), raw_len(&s, SMOL, &rendered));

    // Broken templates: parse and execution errors are 400s carrying Go's message (what the
    // engine, checked against Go, reports for them).
    for broken in ["{{ .Prompt ", "{{ .Prompt }}{{ len 3 }}", "{{ nosuchfunc }}", "{{ range .Prompt }}{{ end }}"] {
        let (st, v) = s.json("/api/generate", &greedy(json!({"prompt": prompt, "template": broken})));
        assert_eq!(st, 400, "{v}");
        let values = OllamaValues { messages: vec![user(prompt)], ..Default::default() };
        let want = OllamaTemplate::parse(broken).and_then(|t| t.execute(&values, &ExecOptions::now())).unwrap_err();
        assert!(want.message.starts_with("template: :1"), "{want}");
        assert_eq!(v["error"].as_str(), Some(want.message.as_str()), "{broken}");
    }
    // `raw` with a template stays refused, as Ollama does.
    let (st, _) = s.json("/api/generate", &greedy(json!({"prompt": prompt, "raw": true, "template": "{{ .Prompt }}"})));
    assert_eq!(st, 400);
}

#[test]
fn a_model_created_with_a_template_uses_it() {
    let s = Server::start(&[]);
    let gguf = server_util::model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let template = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n";

    // A template that does not parse is refused at create time (Ollama: "template error").
    let (st, v) =
        s.json("/api/create", &json!({"model": "broken", "from": gguf.display().to_string(), "template": "{{ if }}", "stream": false}));
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"], "template error: template: :1: missing value for if", "{v}");

    let (st, v) = s.json(
        "/api/create",
        &json!({"model": "gosmol", "from": gguf.display().to_string(), "template": template, "system": "You are a pirate.", "stream": false}),
    );
    assert_eq!(st, 200, "{v}");
    let (st, show) = s.json("/api/show", &json!({"model": "gosmol"}));
    assert_eq!(st, 200);
    assert_eq!(show["template"], template);

    // /api/chat renders with it (the model's SYSTEM first).
    let msgs = json!([{"role": "user", "content": "Hi"}]);
    let (st, dbg) = s.json("/api/chat", &json!({"model": "gosmol", "messages": msgs, "_debug_render_only": true}));
    assert_eq!(st, 200, "{dbg}");
    let rendered = dbg["_debug_info"]["rendered_template"].as_str().unwrap().to_string();
    assert_eq!(rendered, expected(template, &[("system", "You are a pirate."), ("user", "Hi")]));
    let (st, chat) = s.json(
        "/api/chat",
        &json!({"model": "gosmol", "messages": msgs, "stream": false, "options": {"num_predict": 8, "temperature": 0, "seed": 1}}),
    );
    assert_eq!(st, 200, "{chat}");
    let raw = generate(&s, json!({"prompt": rendered, "raw": true}));
    assert_eq!(chat["message"]["content"].as_str().unwrap(), text(&raw));
    // The OpenAI endpoint renders with the model's Go template too: the same prompt tokens.
    let (st, oai) = s.json("/v1/chat/completions", &json!({"model": "gosmol", "messages": msgs, "max_tokens": 1, "temperature": 0}));
    assert_eq!(st, 200, "{oai}");
    assert_eq!(oai["usage"]["prompt_tokens"].as_u64().unwrap(), raw_len(&s, "gosmol", &rendered));

    // /api/generate without a template of its own uses the model's too.
    let (st, dbg) = s.json("/api/generate", &json!({"model": "gosmol", "prompt": "Ahoy", "_debug_render_only": true}));
    assert_eq!(st, 200, "{dbg}");
    assert_eq!(dbg["_debug_info"]["rendered_template"], expected(template, &[("system", "You are a pirate."), ("user", "Ahoy")]));
    // The plain model keeps its Jinja template: a different prompt for the same chat.
    let (st, dbg) = s.json("/api/chat", &json!({"model": SMOL, "messages": msgs, "_debug_render_only": true}));
    assert_eq!(st, 200);
    assert_ne!(dbg["_debug_info"]["rendered_template"].as_str().unwrap(), rendered);
}
