//! Filters and tests whose minijinja built-ins differ from Python jinja2 in ways chat templates
//! notice. Each one follows jinja2 3.1's `filters.py` / `tests.py` semantics (read for facts,
//! written anew here).
//!
//! * `iterable`: jinja2 asks Python `iter(x)`: `None`, numbers and bools are *not* iterable
//!   (minijinja says `none is iterable`), undefined is (jinja2's Undefined iterates as empty).
//!   Nemotron and Qwen3-Coder test `tools is iterable` before `tools | length`.
//! * `sequence`: `len(x)` and `x.__getitem__` exist: strings, lists, dicts and undefined.
//! * `indent`: jinja2 appends a newline before splitting lines, so a trailing newline survives
//!   (`'{\n'|indent(4, first=true)` is `"    {\n"`); minijinja drops it. Command-R+ relies on it.
//! * `__py_iterable`: inserted by the source rewrite in front of simple `{% for %}` iterables so
//!   that iterating `None`/numbers fails like Python (`'NoneType' object is not iterable`)
//!   instead of looping zero times.
//!
//! Invariant: every filter charges fuel for the bytes it creates, so output stays bounded.

use minijinja::value::{from_args, Kwargs, Rest, ValueKind, ValueOrKwargs};
use minijinja::{Error, ErrorKind, State, Value};

/// jinja2's `iterable` test.
pub fn is_iterable(value: &Value) -> bool {
    !matches!(value.kind(), ValueKind::None | ValueKind::Bool | ValueKind::Number) && (value.is_undefined() || value.try_iter().is_ok())
}

/// jinja2's `sequence` test.
pub fn is_sequence(value: &Value) -> bool {
    value.is_undefined() || matches!(value.kind(), ValueKind::String | ValueKind::Seq | ValueKind::Map)
}

/// Python's type name for the values that cannot be iterated.
fn python_type_name(value: &Value) -> &'static str {
    match value.kind() {
        ValueKind::None => "NoneType",
        ValueKind::Bool => "bool",
        ValueKind::Number if value.is_integer() => "int",
        ValueKind::Number => "float",
        _ => "object",
    }
}

/// Passes an iterable through and fails like Python for anything `for` cannot loop over.
pub fn py_iterable(value: Value) -> Result<Value, Error> {
    if matches!(value.kind(), ValueKind::None | ValueKind::Bool | ValueKind::Number) {
        return Err(Error::new(ErrorKind::InvalidOperation, format!("'{}' object is not iterable", python_type_name(&value))));
    }
    Ok(value)
}

/// Python's `str.splitlines()` line boundaries.
fn is_line_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{0b}' | '\u{0c}' | '\u{1c}' | '\u{1d}' | '\u{1e}' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// Python's `str.splitlines()` (without keepends).
fn splitlines(s: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut iter = s.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        if is_line_break(c) {
            lines.push(&s[start..i]);
            let mut end = i + c.len_utf8();
            if c == '\r' {
                if let Some(&(j, '\n')) = iter.peek() {
                    end = j + 1;
                    iter.next();
                }
            }
            start = end;
        }
    }
    if start < s.len() {
        lines.push(&s[start..]);
    }
    lines
}

/// jinja2's `indent(s, width=4, first=False, blank=False)`; `width` may be a string.
pub fn indent(state: &State, args: Rest<ValueOrKwargs>) -> Result<Value, Error> {
    // Filters take at most five typed arguments, so the state comes with manual parsing.
    let args = args.into_values();
    let (value, width, first, blank, kwargs): (String, Option<Value>, Option<bool>, Option<bool>, Kwargs) = from_args(&args)?;
    let width = match width {
        Some(w) => Some(w),
        None => kwargs.get::<Option<Value>>("width")?,
    };
    let first = match first {
        Some(f) => f,
        None => kwargs.get::<Option<bool>>("first")?.unwrap_or(false),
    };
    let blank = match blank {
        Some(b) => b,
        None => kwargs.get::<Option<bool>>("blank")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let indention = match width {
        None => "    ".to_string(),
        Some(w) => match (w.as_str(), w.as_i64()) {
            (Some(s), _) => s.to_string(),
            (None, Some(n)) => {
                let n = usize::try_from(n.max(0)).unwrap_or(0);
                state.consume_fuel((n / 64) as u64)?;
                " ".repeat(n)
            }
            _ => return Err(Error::new(ErrorKind::InvalidOperation, "indent width must be int or str")),
        },
    };

    let text = format!("{value}\n");
    let lines = splitlines(&text);
    let n_lines = lines.len();
    state.consume_fuel(((text.len() + indention.len() * n_lines) / 64) as u64)?;
    let mut rv = String::with_capacity(text.len() + indention.len() * n_lines);
    if blank {
        rv.push_str(&lines.join(&format!("\n{indention}")));
    } else {
        let mut it = lines.into_iter();
        rv.push_str(it.next().unwrap_or(""));
        for line in it {
            rv.push('\n');
            if !line.is_empty() {
                rv.push_str(&indention);
            }
            rv.push_str(line);
        }
    }
    if first {
        rv.insert_str(0, &indention);
    }
    Ok(Value::from(rv))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected lists are Python 3.11's `str.splitlines()` of the same inputs.
    #[test]
    fn splitlines_matches_python() {
        assert_eq!(splitlines("a\nb\n"), vec!["a", "b"]);
        assert_eq!(splitlines("a\r\nb\rc"), vec!["a", "b", "c"]);
        assert_eq!(splitlines("{\n\n"), vec!["{", ""]);
        assert_eq!(splitlines(""), Vec::<&str>::new());
        assert_eq!(splitlines("x\u{2028}y"), vec!["x", "y"]);
    }
}
