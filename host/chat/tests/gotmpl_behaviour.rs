//! The Go-template engine's own guarantees, beyond Go's behaviour (which
//! `gotmpl_reference.rs` checks): a template from a request cannot hang, blow the stack or
//! exhaust memory, and malformed request data is a typed error.

use chrono::NaiveDate;
use rocmforge_chat::gotmpl::{ExecOptions, GoTemplate, GoTemplateErrorKind, Limits, OllamaMessage, OllamaTemplate, OllamaValues};

fn opts(fuel: u64, max_output: usize) -> ExecOptions {
    ExecOptions { today: NaiveDate::from_ymd_opt(2026, 5, 4).unwrap(), limits: Limits { fuel, max_output } }
}

fn run(src: &str, o: &ExecOptions) -> Result<String, rocmforge_chat::gotmpl::GoTemplateError> {
    GoTemplate::parse(src)?.execute_json(&serde_json::json!({"s": "abc", "list": [1, 2, 3]}), o)
}

#[test]
fn a_huge_loop_runs_out_of_steps() {
    let e = run("{{range 1000000000}}{{end}}", &opts(10_000, 1 << 20)).unwrap_err();
    assert_eq!(e.kind, GoTemplateErrorKind::Limit, "{e}");
    assert!(e.message.contains("more than 10000 execution steps"), "{e}");
    // The same loop within the bound runs.
    assert_eq!(run("{{range 5}}{{.}}{{end}}", &opts(10_000, 1 << 20)).unwrap(), "01234");
}

#[test]
fn exponential_template_recursion_is_bounded() {
    let src = r#"{{define "a"}}{{template "a" .}}{{template "a" .}}{{end}}{{template "a" .}}"#;
    let e = run(src, &opts(100_000, 1 << 20)).unwrap_err();
    assert!(matches!(e.kind, GoTemplateErrorKind::Limit | GoTemplateErrorKind::Exec), "{e}");
    // Plain unbounded recursion stops at the depth bound with Go's message shape.
    let e = run(r#"{{define "r"}}x{{template "r" .}}{{end}}{{template "r" .}}"#, &opts(10_000_000, 1 << 20)).unwrap_err();
    assert!(e.message.contains("exceeded maximum template depth"), "{e}");
}

#[test]
fn output_and_strings_are_bounded() {
    let e = run("{{range 100}}{{$.s}}{{end}}", &opts(1_000_000, 100)).unwrap_err();
    assert_eq!(e.kind, GoTemplateErrorKind::Limit, "{e}");
    assert!(e.message.contains("exceeds 100 bytes"), "{e}");
    // A string built by a function counts even if never printed.
    let e = run(r#"{{$x := printf "%0900000d" 1}}ok"#, &opts(1_000_000, 1 << 16)).unwrap_err();
    assert_eq!(e.kind, GoTemplateErrorKind::Limit, "{e}");
    // Doubling a string in a loop stops at the bound instead of exhausting memory.
    let e = run(r#"{{$x := "ab"}}{{range 64}}{{$x = printf "%s%s" $x $x}}{{end}}"#, &opts(1_000_000, 1 << 20)).unwrap_err();
    assert_eq!(e.kind, GoTemplateErrorKind::Limit, "{e}");
}

#[test]
fn deep_nesting_is_a_parse_error_not_a_stack_overflow() {
    let deep_if = format!("{}x{}", "{{if 1}}".repeat(5000), "{{end}}".repeat(5000));
    let e = GoTemplate::parse(&deep_if).unwrap_err();
    assert_eq!(e.kind, GoTemplateErrorKind::Parse);
    assert!(e.message.contains("max nesting depth exceeded"), "{e}");
    let deep_parens = format!("{{{{{}1{}}}}}", "(".repeat(5000), ")".repeat(5000));
    let e = GoTemplate::parse(&deep_parens).unwrap_err();
    assert!(e.message.contains("max expression depth exceeded"), "{e}");
    // Within the bounds both parse and run.
    let ok = format!("{}x{}", "{{if 1}}".repeat(50), "{{end}}".repeat(50));
    assert_eq!(run(&ok, &opts(1_000_000, 1 << 16)).unwrap(), "x");
    assert_eq!(run(&format!("{{{{{}7{}}}}}", "(".repeat(50), ")".repeat(50)), &opts(1_000, 1 << 16)).unwrap(), "7");
}

#[test]
fn malformed_tools_are_a_data_error() {
    let t = OllamaTemplate::parse("{{range .Messages}}{{.Content}}{{end}}{{.Tools}}").unwrap();
    let msgs = vec![OllamaMessage { role: "user".into(), content: "hi".into(), ..Default::default() }];
    let bad = serde_json::json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"description": 5}}}}}]);
    let v = OllamaValues { messages: msgs.clone(), tools: Some(&bad), ..Default::default() };
    let e = t.execute(&v, &opts(1_000_000, 1 << 16)).unwrap_err();
    assert_eq!(e.kind, GoTemplateErrorKind::Data, "{e}");
    assert!(e.message.contains("description"), "{e}");
    let good = serde_json::json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}}]);
    let v = OllamaValues { messages: msgs, tools: Some(&good), ..Default::default() };
    let out = t.execute(&v, &opts(1_000_000, 1 << 16)).unwrap();
    let tools: serde_json::Value = serde_json::from_str(out.strip_prefix("hi").unwrap()).unwrap();
    assert_eq!(tools[0]["function"]["parameters"]["properties"]["x"]["type"], "string");
}

#[test]
fn legacy_turns_share_one_step_budget() {
    // A `.Prompt` template renders once per exchange; the bound covers all of them together.
    let t = OllamaTemplate::parse("{{range 300}}{{end}}{{.Prompt}}").unwrap();
    let mut messages = Vec::new();
    for i in 0..20 {
        messages.push(OllamaMessage { role: "user".into(), content: format!("q{i}"), ..Default::default() });
        messages.push(OllamaMessage { role: "assistant".into(), content: format!("a{i}"), ..Default::default() });
    }
    let v = OllamaValues { messages, ..Default::default() };
    assert!(t.execute(&v, &opts(1_000_000, 1 << 16)).is_ok());
    let e = t.execute(&v, &opts(3_000, 1 << 16)).unwrap_err();
    assert_eq!(e.kind, GoTemplateErrorKind::Limit, "{e}");
}
