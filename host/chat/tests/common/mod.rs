//! Shared by the tests that compare renders with Python jinja2 (`reference_templates.rs`,
//! `behaviour.rs`): when jinja2 fails, we must fail with an error of the same class.

use rocmforge_chat::ChatError;

/// Whether our error is of the jinja2 exception class the reference raised. Syntax errors and
/// the bounds have their own variants: jinja2's sandbox caps `range()` with an OverflowError
/// where we report `TooComplex`.
pub fn same_class(ours: &ChatError, jinja2_class: &str) -> bool {
    match ours {
        ChatError::Render { kind, .. } => kind.jinja2_class() == jinja2_class,
        ChatError::Syntax { .. } => matches!(jinja2_class, "TemplateSyntaxError" | "TemplateAssertionError"),
        ChatError::TooComplex { .. } => jinja2_class == "OverflowError",
        ChatError::Raised { .. } | ChatError::OutputTooLarge { .. } | ChatError::InvalidMessage { .. } => false,
    }
}
