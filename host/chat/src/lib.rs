//! Chat templates: the Jinja templates shipped in GGUF `tokenizer.chat_template` or
//! `tokenizer_config.json`, rendered with the output Hugging Face transformers'
//! `apply_chat_template` produces (Python jinja2), using minijinja.
//!
//! `gotmpl`: Go `text/template`, for Ollama-style templates (a Modelfile TEMPLATE, an Ollama
//! store's template layer, `/api/generate`'s `template`), checked against Go itself.
//!
//! Crate boundary (a deviation from DESIGN.md §1, which lists chat templates under `host/model`):
//! templates are a concern of their own (minijinja, untrusted template code, bounded rendering)
//! used by the CLI and the server; nothing here reads model files.
//!
//! Invariants: output equals transformers' for the reference templates in
//! `.cache/llama.cpp/models/templates` (checked by `tests/reference_templates.rs` against
//! fixtures from `scripts/fixtures/chat_render.py`; single behaviours in `tests/behaviour.rs`);
//! every render is bounded in time and size;
//! `raise_exception` becomes [`ChatError::Raised`] (an HTTP 400 for the client).
//!
//! Modelled on transformers' `chat_template_utils.py` and, for the minijinja set-up, on
//! mistral.rs' `chat_template.rs` (pycompat, custom `tojson`).

mod error;
pub mod gotmpl;
mod message;
mod pycompat;
mod pyfmt;
mod template;

pub use error::{ChatError, RenderErrorKind};
pub use message::{ChatMessage, ContentPart, FunctionCall, MessageContent, ToolCall};
pub use template::{rewrite_source, ChatTemplate, RenderRequest, CHATML_STOPS, CHATML_TEMPLATE, DEFAULT_FUEL, DEFAULT_MAX_OUTPUT};
