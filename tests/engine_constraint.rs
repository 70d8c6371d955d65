//! Structured output on a real model (SmolLM2-135M): JSON Schema and GBNF constraints through the
//! engine. The output must parse and validate against the schema — checked here by serde_json and
//! explicit field checks — and generation must end by itself when the grammar is complete.

mod common;

use rocmforge_engine::{Constraint, Engine, EngineConfig, FinishReason, LoadOptions, Model, PromptBuilder, Request, SamplingParams};

fn engine() -> Engine {
    let reg = common::registry();
    let m = Model::load(&common::model("SmolLM2-135M-Instruct.Q4_1.gguf"), &reg, &LoadOptions { n_ctx: Some(512), ..Default::default() })
        .expect("load");
    Engine::start(m, EngineConfig::default()).expect("engine")
}

fn run(e: &Engine, prompt: &str, c: Constraint, temperature: f32, seed: u64) -> (String, FinishReason) {
    let ids = PromptBuilder::new(e.model()).raw(prompt, true, false).expect("tokenize");
    let mut r = Request::new(ids, SamplingParams { temperature, seed: Some(seed), ..SamplingParams::neutral() });
    r.max_tokens = Some(160);
    r.constraint = Some(c);
    let mut s = e.submit(r).expect("submit");
    let mut text = String::new();
    while let Some(ev) = s.blocking_recv() {
        match ev {
            rocmforge_engine::Event::Delta { text: t, .. } => text.push_str(&t),
            rocmforge_engine::Event::Done(f) => {
                assert!(f.error.is_none(), "{f:?}");
                return (text, f.reason);
            }
        }
    }
    panic!("no Done");
}

#[test]
fn json_schema_output_parses_and_validates() {
    let e = engine();
    let schema = r#"{"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}
      }, "required": ["name", "age", "color", "tags"], "additionalProperties": false}"#;
    for (temp, seed) in [(0.0, 1), (0.8, 2), (1.0, 3)] {
        let (text, reason) = run(&e, "Describe a person as JSON:\n", Constraint::JsonSchema(schema.into()), temp, seed);
        assert_eq!(reason, FinishReason::Stop, "the grammar ends generation: {text:?}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|err| panic!("not JSON ({err}): {text:?}"));
        let o = v.as_object().expect("an object");
        assert_eq!(o.len(), 4, "exactly the four properties: {text}");
        assert!(o["name"].as_str().is_some_and(|s| s.chars().count() <= 24), "{text}");
        assert!(o["age"].as_i64().is_some_and(|a| (0..=120).contains(&a)), "{text}");
        assert!(["red", "green", "blue"].contains(&o["color"].as_str().unwrap_or("")), "{text}");
        let tags = o["tags"].as_array().expect("tags array");
        assert!(tags.len() <= 3 && tags.iter().all(|t| t.as_str().is_some_and(|s| s.chars().count() <= 12)), "{text}");
    }
}

#[test]
fn gbnf_grammar_and_bad_schema() {
    let e = engine();
    let gbnf = "root ::= \"answer: \" (\"yes\" | \"no\") \".\"";
    let (text, reason) = run(&e, "Is the sky blue?\n", Constraint::Grammar(gbnf.into()), 1.0, 7);
    assert_eq!(reason, FinishReason::Stop);
    assert!(text == "answer: yes." || text == "answer: no.", "{text:?}");
    // A schema that is not JSON fails alone, with a message naming the problem.
    let ids = PromptBuilder::new(e.model()).raw("x", true, false).expect("tokenize");
    let mut r = Request::new(ids, SamplingParams::greedy());
    r.constraint = Some(Constraint::JsonSchema("{not json".into()));
    let mut s = e.submit(r).expect("submit");
    let mut done = None;
    while let Some(ev) = s.blocking_recv() {
        if let rocmforge_engine::Event::Done(f) = ev {
            done = Some(f);
        }
    }
    let f = done.expect("Done");
    assert_eq!(f.reason, FinishReason::Error);
    assert!(f.error.as_deref().unwrap_or("").contains("constraint"), "{f:?}");
}
