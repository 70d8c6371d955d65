//! Go `text/template`, for the templates Ollama users bring: a model's `TEMPLATE` (Modelfile,
//! `/api/create`, an Ollama store's template layer) or `/api/generate`'s `template`.
//!
//! What is covered: text and actions with `{{-` / `-}}` trim markers, comments, pipelines,
//! fields and chains (`.Messages`, `$.Tools`, `.Function.Arguments`, `(x).Y`), variables
//! (`$x :=`, `$x =`, `$i, $m := range`), `if` / `else if` / `else` / `end`, `range` (slices,
//! maps in key order, integers, with `else`), `with` (and `else with`), `break` / `continue`,
//! `define` / `template` / `block`, literals (strings with escapes, raw strings, characters,
//! numbers in Go's syntax, booleans, `nil`), the builtins (`and or not eq ne lt le gt ge len
//! index slice print printf println html js urlquery call`) with Go's truthiness and comparison
//! rules, and Ollama's functions and data (see [`ollama`]). Errors carry Go's messages, with
//! line (parse errors) and line:column (execution errors).
//!
//! Differences from Go, all on inputs no Ollama template uses: complex constants and
//! hexadecimal floats are refused; a string escape of a byte past ASCII (`"\xff"`) becomes
//! U+FFFD; slices have no spare capacity; nested pointers print as `&{...}` (Go prints an
//! address); `unicode.IsPrint` (for `%q`, `js`) and the letters of identifiers (Rust's Alphabetic
//! property for Go's category L) are approximated without Unicode tables. Beyond
//! Go, parsing and execution are bounded (nesting, steps, output size) because the template
//! may come from a request.
//!
//! The reference: `tests/gotmpl_reference.rs` renders Ollama's real templates and edge cases
//! and compares with Go 1.27's own `text/template` byte for byte
//! (`scripts/fixtures/gotmpl_reference/`).

mod exec;
mod fmt;
mod funcs;
mod json;
mod lex;
mod node;
pub mod ollama;
mod parse;
mod value;

use chrono::NaiveDate;

pub use ollama::{OllamaMessage, OllamaTemplate, OllamaToolCall, OllamaValues};

/// Bounds on one execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Execution steps (nodes walked, commands evaluated, range iterations over integers).
    pub fuel: u64,
    /// Largest output, and largest string a function may build, in bytes.
    pub max_output: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { fuel: 10_000_000, max_output: 16 << 20 }
    }
}

/// How to execute: the clock of `currentDate` and the bounds.
#[derive(Debug, Clone, Copy)]
pub struct ExecOptions {
    pub today: NaiveDate,
    pub limits: Limits,
}

impl ExecOptions {
    /// Today's local date and the default limits.
    pub fn now() -> Self {
        ExecOptions { today: chrono::Local::now().date_naive(), limits: Limits::default() }
    }
}

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoTemplateErrorKind {
    /// The template does not parse (Go's `template: :LINE: ...`).
    Parse,
    /// Execution failed (Go's `template: :LINE:COL: executing ...`).
    Exec,
    /// The template ran past a bound (steps, output size, depth).
    Limit,
    /// The request's data cannot be given to the template (a malformed tool).
    Data,
}

/// An error of a Go template, with Go's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoTemplateError {
    pub kind: GoTemplateErrorKind,
    pub message: String,
}

impl GoTemplateError {
    fn parse(message: String) -> Self {
        GoTemplateError { kind: GoTemplateErrorKind::Parse, message }
    }
    fn exec(message: String) -> Self {
        GoTemplateError { kind: GoTemplateErrorKind::Exec, message }
    }
    fn limit(message: String) -> Self {
        GoTemplateError { kind: GoTemplateErrorKind::Limit, message }
    }
    fn data(message: String) -> Self {
        GoTemplateError { kind: GoTemplateErrorKind::Data, message }
    }
}

impl std::fmt::Display for GoTemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for GoTemplateError {}

/// A plain Go template (Ollama's functions, `missingkey=zero`) over JSON data, decoded as Go's
/// `json.Unmarshal` into `interface {}` decodes it. Ollama's prompts use [`OllamaTemplate`].
#[derive(Debug, Clone)]
pub struct GoTemplate {
    source: String,
    trees: parse::Trees,
}

impl GoTemplate {
    pub fn parse(source: &str) -> Result<Self, GoTemplateError> {
        let trees = parse::Parser::parse("", source).map_err(GoTemplateError::parse)?;
        Ok(GoTemplate { source: source.to_string(), trees })
    }

    /// Executes the main template with `data` as dot.
    pub fn execute_json(&self, data: &serde_json::Value, opts: &ExecOptions) -> Result<String, GoTemplateError> {
        let empty = node::List { pos: 0, nodes: Vec::new() };
        let root = self.trees.trees.get("").unwrap_or(&empty);
        let mut sh = exec::Shared {
            trees: &self.trees,
            defined: true,
            text: &self.source,
            ollama_funcs: true,
            missing_zero: true,
            ctx: funcs::FuncCtx { today: opts.today },
            limits: opts.limits,
            fuel: opts.limits.fuel,
            out: String::new(),
        };
        exec::execute(&mut sh, "", root, value::from_json(data))?;
        Ok(sh.out)
    }
}
