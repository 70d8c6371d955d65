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
    Render { line: Option<usize>, kind: RenderErrorKind, message: String },
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

/// What kind of render failure, in the classes of Python jinja2's exceptions: templates are
/// written for jinja2 (as transformers runs them), and `tests/reference_templates.rs` requires
/// the class jinja2 raises for the same template and conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenderErrorKind {
    /// An operation on values of the wrong type (`str + list`, iterating `None`, a bad filter
    /// argument, unpacking): Python's `TypeError`.
    Type,
    /// Use of an undefined value, attribute or method: jinja2's `UndefinedError`.
    Undefined,
    /// A method that would mutate a list, dict or set (`append`, `update`, ...), which jinja2's
    /// sandbox refuses: jinja2's `SecurityError`.
    Unsafe,
    /// An unknown filter, test or function: jinja2's `TemplateRuntimeError`.
    UnknownName,
    /// Anything else (output not UTF-8, a write failure).
    Other,
}

impl RenderErrorKind {
    /// The name of the jinja2 exception class this kind corresponds to.
    pub fn jinja2_class(self) -> &'static str {
        match self {
            RenderErrorKind::Type => "TypeError",
            RenderErrorKind::Undefined => "UndefinedError",
            RenderErrorKind::Unsafe => "SecurityError",
            RenderErrorKind::UnknownName => "TemplateRuntimeError",
            RenderErrorKind::Other => "TemplateError",
        }
    }
}
