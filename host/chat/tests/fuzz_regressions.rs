//! Templates `fuzz/fuzz_targets/chat_template.rs` found to crash, kept as regression tests: each
//! must now compile and render, or fail with a `ChatError`, never panic. Files:
//! `tests/fixtures/fuzz/chat_template-<what>.jinja`, the crashing input as libFuzzer wrote it.

use rocmforge_chat::{rewrite_source, ChatError, ChatTemplate, RenderRequest};
use std::path::PathBuf;

fn fixture(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `{%}`: the source rewrite looked for the closing `%}` from the start of the tag, found the
/// `%` of `{%` itself and sliced `tag[2..1]` (panic). jinja2 rejects the template as a syntax
/// error; so do we, and the rewrite leaves the text alone.
#[test]
fn overlapping_block_tag_is_a_syntax_error() {
    let src = fixture("chat_template-overlapping-block-tag.jinja");
    assert!(matches!(ChatTemplate::new(&src), Err(ChatError::Syntax { .. })));
    assert_eq!(rewrite_source("a{%}b"), "a{%}b");
    // As in jinja2's lexer, `{%` opens one block that runs to the next `%}`.
    assert_eq!(rewrite_source("{%}{% generation %}x{% endgeneration %}"), "{%}{% generation %}x{% endif %}");
    let t = ChatTemplate::new("{{ 'x' }}{%- generation %}y{% endgeneration %}").expect("compiles");
    assert_eq!(t.render(&RenderRequest::new(&[])).expect("renders"), "xy");
}
