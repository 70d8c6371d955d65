//! The crate's one error type.
//!
//! Invariant: `Raised` carries exactly the text a template passed to `raise_exception`, so the
//! server can hand it to the client as an HTTP 400 (the request is at fault, not the server),
//! the way Hugging Face surfaces jinja2's `TemplateError`.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ChatError {
    /// The template source does not compile.
    #[error("chat template syntax error at line {line:?}: {message}")]
    Syntax { line: Option<usize>, message: String },
    /// The template called `raise_exception(message)`: the conversation is not acceptable.
    #[error("{message}")]
    Raised { message: String },
    /// Any other failure while rendering (undefined attribute, type error, ...).
    #[error("chat template render error at line {line:?}: {message}")]
    Render { line: Option<usize>, message: String },
    /// The template ran out of fuel or recursion depth (it loops or recurses without bound).
    #[error("chat template too complex: {message}")]
    TooComplex { message: String },
    /// The rendered prompt grew past the output limit.
    #[error("chat template output exceeds {limit} bytes")]
    OutputTooLarge { limit: usize },
    /// A message could not be converted for the template.
    #[error("invalid chat message: {message}")]
    InvalidMessage { message: String },
}
