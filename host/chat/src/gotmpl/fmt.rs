//! Go's `fmt` as templates reach it: `print`, `println`, `printf` and the printing of an
//! action's value (`fmt.Fprint`), over the values of `value.rs`.
//!
//! Covered: `%v` (`%+v` field names) of every kind (structs `{a b}`, maps `map[k:v]` in key
//! order, slices `[a b]`, a pointer at top level `&{...}`, nil `<nil>`), `String()` methods for
//! `%v %s %q %x %X`, `%s %q %x %X` on strings, `%d %b %o %O %x %X %c %q %U` on ints,
//! `%e %E %f %F %g %G` on floats, `%t`, `%T`, `%%`, flags `+ - # space 0`, width and precision
//! (numbers, `*`), argument indexes `[n]`, and the `%!verb(type=value)`, `%!(EXTRA ...)`,
//! `%!v(MISSING)`, `%!(NOVERB)` error forms.
//! Not covered (differences from Go): a non-nil pointer inside a container prints as `&{...}`
//! where Go prints its address; `%p`; `%#v` Go syntax (printed as `%v`); complex numbers.
//!
//! Floats: digits come from Rust's shortest round-trip formatting (the same digits as Go's
//! shortest `strconv.FormatFloat`), laid out with Go's `%e`/`%f`/`%g` rules.
//!
//! Modelled on Go's `fmt/print.go` and `fmt/format.go`, `strconv/quote.go`.

use super::json;
use super::value::{Kind, Methods, Value};

/// Go's `unicode.IsPrint`, approximated without Unicode tables: letters, marks, numbers,
/// punctuation and symbols plus ASCII space are printable; control, format (the common Cf
/// code points), private-use, surrogate and separator characters are not. Unassigned code
/// points count as printable (Go says no).
pub fn is_print(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    let u = c as u32;
    let format = matches!(u,
        0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x890..=0x891 | 0x8E2 | 0x180E | 0x200B..=0x200F
        | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD
        | 0x13430..=0x1343F | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F);
    let private = matches!(u, 0xE000..=0xF8FF | 0xF0000..=0xFFFFD | 0x100000..=0x10FFFD);
    let nonchar = (u & 0xFFFE) == 0xFFFE || (0xFDD0..=0xFDEF).contains(&u);
    !(format || private || nonchar)
}

fn push_escaped(out: &mut String, c: char, quote: char, ascii_only: bool) {
    match c {
        c if c == quote || c == '\\' => {
            out.push('\\');
            out.push(c);
        }
        c if (ascii_only && c.is_ascii() && is_print(c)) || (!ascii_only && is_print(c)) => out.push(c),
        '\x07' => out.push_str("\\a"),
        '\x08' => out.push_str("\\b"),
        '\x0c' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\x0b' => out.push_str("\\v"),
        c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
        c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
        c => out.push_str(&format!("\\U{:08x}", c as u32)),
    }
}

/// `strconv.Quote` of the first `max_runes` runes (Go's `%.Nq`).
pub fn quote_prec(s: &str, max_runes: usize) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars().take(max_runes) {
        push_escaped(&mut out, c, '"', false);
    }
    out.push('"');
    out
}

/// `strconv.Quote`.
pub fn quote(s: &str) -> String {
    quote_prec(s, usize::MAX)
}

fn quote_ascii(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        push_escaped(&mut out, c, '"', true);
    }
    out.push('"');
    out
}

fn quote_rune(c: char, ascii_only: bool) -> String {
    let mut out = String::from("'");
    push_escaped(&mut out, c, '\'', ascii_only);
    out.push('\'');
    out
}

/// Decimal digits and exponent of `f`'s shortest round-trip form: `f = 0.d1d2... x 10^dp`.
fn shortest_digits(f: f64) -> (String, i32) {
    let s = format!("{:e}", f.abs());
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let exp: i32 = exp.parse().unwrap_or(0);
    if digits.chars().all(|c| c == '0') {
        return ("0".into(), 1);
    }
    (digits, exp + 1)
}

/// Digits of `f` rounded to `n` significant digits (n >= 1).
fn rounded_digits(f: f64, n: usize) -> (String, i32) {
    let s = format!("{:.*e}", n.saturating_sub(1), f.abs());
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    (digits, exp.parse::<i32>().unwrap_or(0) + 1)
}

fn fmt_e(neg: bool, digits: &str, dp: i32, prec: usize, e: char) -> String {
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    let d: Vec<char> = digits.chars().collect();
    out.push(d.first().copied().unwrap_or('0'));
    if prec > 0 {
        out.push('.');
        for i in 1..=prec {
            out.push(d.get(i).copied().unwrap_or('0'));
        }
    }
    let exp = if digits == "0" { 0 } else { dp - 1 };
    out.push(e);
    out.push(if exp < 0 { '-' } else { '+' });
    let a = exp.unsigned_abs();
    if a < 10 {
        out.push('0');
    }
    out.push_str(&a.to_string());
    out
}

fn fmt_f(neg: bool, digits: &str, dp: i32, prec: usize) -> String {
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    let d: Vec<char> = digits.chars().collect();
    if dp > 0 {
        for i in 0..dp as usize {
            out.push(d.get(i).copied().unwrap_or('0'));
        }
    } else {
        out.push('0');
    }
    if prec > 0 {
        out.push('.');
        for i in 0..prec {
            let j = dp + i as i32;
            out.push(if j < 0 { '0' } else { d.get(j as usize).copied().unwrap_or('0') });
        }
    }
    out
}

/// `strconv.FormatFloat(f, fmt, prec, 64)` for `e E f g G`; `prec < 0` is shortest.
pub fn format_float(f: f64, fmt: char, prec: i32) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    let neg = f.is_sign_negative();
    let shortest = prec < 0;
    match fmt {
        'e' | 'E' => {
            let (digits, dp) = if shortest { shortest_digits(f) } else { rounded_digits(f, prec as usize + 1) };
            let p = if shortest { digits.len() - 1 } else { prec as usize };
            fmt_e(neg, &digits, dp, p, fmt)
        }
        'f' => {
            if shortest {
                let (digits, dp) = shortest_digits(f);
                let p = (digits.len() as i32 - dp).max(0) as usize;
                fmt_f(neg, &digits, dp, p)
            } else {
                let s = format!("{:.*}", prec as usize, f.abs());
                if neg {
                    format!("-{s}")
                } else {
                    s
                }
            }
        }
        _ => {
            // 'g' / 'G'
            let e = if fmt == 'G' { 'E' } else { 'e' };
            let (digits, dp) = if shortest { shortest_digits(f) } else { rounded_digits(f, (prec as usize).max(1)) };
            let digits = if shortest { digits } else { digits.trim_end_matches('0').to_string() };
            let digits = if digits.is_empty() { "0".to_string() } else { digits };
            let nd = digits.len() as i32;
            let mut eprec = if shortest { 6 } else { prec.max(1) };
            if !shortest && eprec > nd && nd >= dp {
                eprec = nd;
            }
            let exp = if digits == "0" { 0 } else { dp - 1 };
            if exp < -4 || exp >= eprec {
                return fmt_e(neg, &digits, dp, (nd - 1).max(0) as usize, e);
            }
            let dp_eff = if digits == "0" { 1 } else { dp };
            fmt_f(neg, &digits, dp_eff, (nd - dp_eff).max(0) as usize)
        }
    }
}

/// Formatting state of one verb.
#[derive(Clone, Copy, Default)]
struct Flags {
    plus: bool,
    minus: bool,
    sharp: bool,
    space: bool,
    zero: bool,
    plus_v: bool,
    width: Option<usize>,
    prec: Option<usize>,
}

/// One `fmt` print buffer.
#[derive(Default)]
pub struct Printer {
    pub buf: String,
    f: Flags,
}

/// The dynamic value an `any` parameter receives: interfaces are unwrapped; nil is `Invalid`.
fn as_any(v: &Value) -> Value {
    v.indirect_interface()
}

impl Printer {
    fn pad(&mut self, s: &str) {
        let n = s.chars().count();
        let width = self.f.width.unwrap_or(0);
        if n >= width {
            self.buf.push_str(s);
            return;
        }
        let fill = width - n;
        if self.f.minus {
            self.buf.push_str(s);
            self.buf.extend(std::iter::repeat_n(' ', fill));
        } else {
            let c = if self.f.zero { '0' } else { ' ' };
            self.buf.extend(std::iter::repeat_n(c, fill));
            self.buf.push_str(s);
        }
    }

    /// Pads a number: zero padding goes after the sign.
    fn pad_number(&mut self, s: &str) {
        let width = self.f.width.unwrap_or(0);
        if self.f.zero && !self.f.minus && s.len() < width {
            let (sign, digits) = match s.as_bytes().first() {
                Some(b'+' | b'-' | b' ') => s.split_at(1),
                _ => ("", s),
            };
            self.buf.push_str(sign);
            self.buf.extend(std::iter::repeat_n('0', width - s.len()));
            self.buf.push_str(digits);
        } else {
            let zero = self.f.zero;
            self.f.zero = false;
            self.pad(s);
            self.f.zero = zero;
        }
    }

    fn bad_verb(&mut self, verb: char, v: &Value) {
        self.buf.push_str("%!");
        self.buf.push(verb);
        self.buf.push('(');
        match v {
            Value::Invalid | Value::Iface(None) => self.buf.push_str("<nil>"),
            _ => {
                self.buf.push_str(v.type_name());
                self.buf.push('=');
                let saved = self.f;
                self.f = Flags::default();
                self.print_arg(v, 'v');
                self.f = saved;
            }
        }
        self.buf.push(')');
    }

    fn fmt_bool(&mut self, b: bool, verb: char, v: &Value) {
        match verb {
            't' | 'v' => self.pad(if b { "true" } else { "false" }),
            _ => self.bad_verb(verb, v),
        }
    }

    fn fmt_integer(&mut self, i: i64, verb: char, v: &Value) {
        let (base, upper) = match verb {
            'v' | 'd' => (10, false),
            'b' => (2, false),
            'o' | 'O' => (8, false),
            'x' => (16, false),
            'X' => (16, true),
            'c' => {
                let c = char::from_u32(i as u32).filter(|_| (0..=0x10FFFF).contains(&i)).unwrap_or('\u{FFFD}');
                return self.pad(&c.to_string());
            }
            'q' => {
                let c = char::from_u32(i as u32).filter(|_| (0..=0x10FFFF).contains(&i)).unwrap_or('\u{FFFD}');
                return self.pad(&quote_rune(c, self.f.plus));
            }
            'U' => {
                let mut s = format!("U+{:04X}", i);
                if self.f.sharp {
                    if let Some(c) = char::from_u32(i as u32).filter(|c| is_print(*c)) {
                        s.push_str(&format!(" '{c}'"));
                    }
                }
                return self.pad(&s);
            }
            _ => return self.bad_verb(verb, v),
        };
        let mag = i.unsigned_abs();
        let mut digits = match base {
            2 => format!("{mag:b}"),
            8 => format!("{mag:o}"),
            16 if upper => format!("{mag:X}"),
            16 => format!("{mag:x}"),
            _ => mag.to_string(),
        };
        if let Some(p) = self.f.prec {
            if p == 0 && mag == 0 {
                digits.clear();
            }
            if digits.len() < p {
                digits = "0".repeat(p - digits.len()) + &digits;
            }
        }
        let mut prefix = String::new();
        if i < 0 {
            prefix.push('-');
        } else if self.f.plus {
            prefix.push('+');
        } else if self.f.space {
            prefix.push(' ');
        }
        if self.f.sharp {
            match verb {
                'b' => prefix.push_str("0b"),
                'o' if !digits.starts_with('0') => prefix.push('0'),
                'x' => prefix.push_str("0x"),
                'X' => prefix.push_str("0X"),
                _ => {}
            }
        }
        if verb == 'O' {
            prefix.push_str("0o");
        }
        let s = format!("{prefix}{digits}");
        if self.f.prec.is_some() {
            let zero = self.f.zero;
            self.f.zero = false;
            self.pad(&s);
            self.f.zero = zero;
        } else {
            self.pad_number(&s);
        }
    }

    fn fmt_float(&mut self, x: f64, verb: char, v: &Value) {
        let (fmt, default_prec) = match verb {
            'v' => ('g', -1),
            'g' | 'G' => (verb, -1),
            'e' | 'E' | 'f' => (verb, 6),
            'F' => ('f', 6),
            _ => return self.bad_verb(verb, v),
        };
        let prec = self.f.prec.map_or(default_prec, |p| p as i32);
        let mut s = format_float(x, fmt, prec);
        if !s.starts_with('-') && !s.starts_with('+') {
            if self.f.plus {
                s.insert(0, '+');
            } else if self.f.space {
                s.insert(0, ' ');
            }
        } else if s.starts_with('+') && !self.f.plus {
            // "+Inf" keeps its sign only when asked for.
            s.remove(0);
        }
        if x.is_nan() || x.is_infinite() {
            let zero = self.f.zero;
            self.f.zero = false;
            self.pad(&s);
            self.f.zero = zero;
        } else {
            self.pad_number(&s);
        }
    }

    fn fmt_string(&mut self, s: &str, verb: char, v: &Value) {
        let truncated: String;
        let s = match self.f.prec {
            Some(p) if matches!(verb, 'v' | 's' | 'x' | 'X' | 'q') => {
                truncated = s.chars().take(p).collect();
                truncated.as_str()
            }
            _ => s,
        };
        match verb {
            'v' | 's' => self.pad(s),
            'q' => {
                let q = if self.f.sharp && !s.contains('`') && s.chars().all(|c| c == '\t' || (is_print(c) && c != '\u{FEFF}')) {
                    format!("`{s}`")
                } else if self.f.plus {
                    quote_ascii(s)
                } else {
                    quote(s)
                };
                self.pad(&q)
            }
            'x' | 'X' => {
                let mut out = String::new();
                for (i, b) in s.bytes().enumerate() {
                    if self.f.space && i > 0 {
                        out.push(' ');
                    }
                    if self.f.sharp && (self.f.space || i == 0) {
                        out.push_str(if verb == 'x' { "0x" } else { "0X" });
                    }
                    out.push_str(&if verb == 'x' { format!("{b:02x}") } else { format!("{b:02X}") });
                }
                self.pad(&out)
            }
            _ => self.bad_verb(verb, v),
        }
    }

    /// `printArg`: `v` is what an `any` holds (interfaces already unwrapped).
    pub fn print_arg(&mut self, v: &Value, verb: char) {
        let v = as_any(v);
        match &v {
            Value::Invalid => match verb {
                'T' | 'v' => self.pad("<nil>"),
                _ => self.bad_verb(verb, &v),
            },
            _ if verb == 'T' => self.pad(v.type_name()),
            Value::Bool(b) => self.fmt_bool(*b, verb, &v),
            Value::Int(i) => self.fmt_integer(*i, verb, &v),
            Value::Float(f) => self.fmt_float(*f, verb, &v),
            Value::Str(s) => self.fmt_string(s, verb, &v),
            _ => {
                if !self.handle_methods(&v, verb) {
                    self.print_value(&v, verb, 0);
                }
            }
        }
    }

    /// A `String()` method, for the verbs that use it.
    fn handle_methods(&mut self, v: &Value, verb: char) -> bool {
        if !matches!(verb, 'v' | 's' | 'x' | 'X' | 'q') {
            return false;
        }
        match stringer(v) {
            Some(s) => {
                self.fmt_string(&s, verb, v);
                true
            }
            None => false,
        }
    }

    fn print_value(&mut self, v: &Value, verb: char, depth: usize) {
        if depth > 0 && !matches!(v, Value::Invalid) && self.handle_methods(v, verb) {
            return;
        }
        match v {
            Value::Invalid => {
                if depth == 0 {
                    self.buf.push_str("<invalid reflect.Value>");
                } else if verb == 'v' {
                    self.pad("<nil>");
                } else {
                    self.bad_verb(verb, v);
                }
            }
            Value::Bool(b) => self.fmt_bool(*b, verb, v),
            Value::Int(i) => self.fmt_integer(*i, verb, v),
            Value::Float(f) => self.fmt_float(*f, verb, v),
            Value::Str(s) => self.fmt_string(s, verb, v),
            Value::Iface(None) => self.pad("<nil>"),
            Value::Iface(Some(inner)) => self.print_value(inner, verb, depth + 1),
            Value::Map(_, m) => {
                self.buf.push_str("map[");
                for (i, (k, val)) in m.iter().flat_map(|m| m.iter()).enumerate() {
                    if i > 0 {
                        self.buf.push(' ');
                    }
                    self.print_value(&Value::str(k.as_str()), verb, depth + 1);
                    self.buf.push(':');
                    self.print_value(val, verb, depth + 1);
                }
                self.buf.push(']');
            }
            Value::Props(entries) => {
                // An unexported ordered map: Go prints `{0xc...}`; show the entries instead.
                self.buf.push('{');
                for (i, (k, val)) in entries.iter().enumerate() {
                    if i > 0 {
                        self.buf.push(' ');
                    }
                    self.buf.push_str(k);
                    self.buf.push(':');
                    self.print_value(val, verb, depth + 1);
                }
                self.buf.push('}');
            }
            Value::Struct(..) => {
                let Some((fields, vals)) = v.struct_fields() else { return };
                self.buf.push('{');
                for (i, (f, val)) in fields.iter().zip(vals).enumerate() {
                    if i > 0 {
                        self.buf.push(' ');
                    }
                    if self.f.plus_v {
                        self.buf.push_str(f.name);
                        self.buf.push(':');
                    }
                    let val = match val {
                        Value::Iface(Some(inner)) => (**inner).clone(),
                        other => other.clone(),
                    };
                    self.print_value(&val, verb, depth + 1);
                }
                self.buf.push('}');
            }
            Value::Slice(t, items) => {
                let bytes = matches!(t.kind, Kind::Slice(e) if matches!(e.kind, Kind::Uint8));
                if bytes && matches!(verb, 's' | 'q' | 'x' | 'X') {
                    let s: Vec<u8> =
                        items.iter().flat_map(|i| i.iter()).map(|b| if let Value::Int(x) = b { *x as u8 } else { 0 }).collect();
                    return self.fmt_string(&String::from_utf8_lossy(&s), verb, v);
                }
                self.buf.push('[');
                for (i, item) in items.iter().flat_map(|i| i.iter()).enumerate() {
                    if i > 0 {
                        self.buf.push(' ');
                    }
                    self.print_value(item, verb, depth + 1);
                }
                self.buf.push(']');
            }
            Value::Ptr(_, None) => self.pad("<nil>"),
            Value::Ptr(_, Some(inner)) => {
                self.buf.push('&');
                self.print_value(inner, verb, depth + 1);
            }
        }
    }
}

/// The result of the value's `String()` method, if its type has one.
pub fn stringer(v: &Value) -> Option<String> {
    match v.methods() {
        Methods::StringJson => Some(json::marshal(v).unwrap_or_default()),
        Methods::StringJsonNilEmpty => match v {
            Value::Map(_, None) => Some("{}".into()),
            _ => Some(json::marshal(v).unwrap_or_default()),
        },
        Methods::PropertyType => {
            let Value::Slice(_, items) = v else { return None };
            let items: Vec<Value> = items.iter().flat_map(|i| i.iter().cloned()).collect();
            Some(match items.as_slice() {
                [] => String::new(),
                [Value::Str(s)] => s.to_string(),
                _ => sprint(&[Value::Slice(&super::value::T_STRING_SLICE, Some(std::rc::Rc::new(items)))]),
            })
        }
        _ => None,
    }
}

/// `fmt.Sprint`.
pub fn sprint(args: &[Value]) -> String {
    let mut p = Printer::default();
    let mut prev_string = false;
    for (i, a) in args.iter().enumerate() {
        let a = as_any(a);
        let is_string = matches!(a, Value::Str(_));
        if i > 0 && !is_string && !prev_string {
            p.buf.push(' ');
        }
        p.print_arg(&a, 'v');
        prev_string = is_string;
    }
    p.buf
}

/// `fmt.Sprintln`.
pub fn sprintln(args: &[Value]) -> String {
    let mut p = Printer::default();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            p.buf.push(' ');
        }
        p.print_arg(a, 'v');
    }
    p.buf.push('\n');
    p.buf
}

/// Largest width or precision Go accepts (`fmt`'s `tooLarge`).
const TOO_LARGE: usize = 1_000_000;

fn parse_num(b: &[u8], mut i: usize) -> (Option<usize>, usize) {
    let start = i;
    let mut n: usize = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        if n > TOO_LARGE {
            return (None, b.len());
        }
        n = n * 10 + (b[i] - b'0') as usize;
        i += 1;
    }
    if i == start {
        (None, i)
    } else {
        (Some(n), i)
    }
}

/// `fmt.Sprintf`.
pub fn sprintf(format: &str, args: &[Value]) -> String {
    let mut p = Printer::default();
    let b = format.as_bytes();
    let mut arg_num = 0usize;
    let mut reordered = false;
    let mut i = 0;
    let end = b.len();
    while i < end {
        let lasti = i;
        while i < end && b[i] != b'%' {
            i += 1;
        }
        p.buf.push_str(&format[lasti..i]);
        if i >= end {
            break;
        }
        i += 1; // skip %
        p.f = Flags::default();
        // Flags.
        while i < end {
            match b[i] {
                b'#' => p.f.sharp = true,
                b'0' => p.f.zero = true,
                b'+' => p.f.plus = true,
                b'-' => p.f.minus = true,
                b' ' => p.f.space = true,
                _ => break,
            }
            i += 1;
        }
        if p.f.minus {
            p.f.zero = false;
        }
        // Argument index, then width.
        let mut good_arg = true;
        (arg_num, i, good_arg) = arg_index(b, i, arg_num, args.len(), &mut reordered, good_arg);
        if i < end && b[i] == b'*' {
            i += 1;
            match args.get(arg_num).map(as_any) {
                Some(Value::Int(w)) if w.unsigned_abs() as usize <= TOO_LARGE => {
                    if w < 0 {
                        p.f.minus = true;
                        p.f.zero = false;
                    }
                    p.f.width = Some(w.unsigned_abs() as usize);
                }
                _ => p.buf.push_str("%!(BADWIDTH)"),
            }
            arg_num += 1;
            (arg_num, i, good_arg) = arg_index(b, i, arg_num, args.len(), &mut reordered, good_arg);
        } else {
            let (w, ni) = parse_num(b, i);
            p.f.width = w;
            i = ni;
        }
        // Precision.
        if i < end && b[i] == b'.' {
            i += 1;
            (arg_num, i, good_arg) = arg_index(b, i, arg_num, args.len(), &mut reordered, good_arg);
            if i < end && b[i] == b'*' {
                i += 1;
                match args.get(arg_num).map(as_any) {
                    Some(Value::Int(pr)) if (0..=TOO_LARGE as i64).contains(&pr) => p.f.prec = Some(pr as usize),
                    Some(Value::Int(pr)) if pr < 0 => p.f.prec = None,
                    _ => p.buf.push_str("%!(BADPREC)"),
                }
                arg_num += 1;
                (arg_num, i, good_arg) = arg_index(b, i, arg_num, args.len(), &mut reordered, good_arg);
            } else {
                let (pr, ni) = parse_num(b, i);
                p.f.prec = Some(pr.unwrap_or(0));
                i = ni;
            }
        }
        if i >= end {
            p.buf.push_str("%!(NOVERB)");
            break;
        }
        let verb = format[i..].chars().next().unwrap_or('%');
        i += verb.len_utf8();
        match verb {
            '%' => p.buf.push('%'),
            _ if !good_arg => {
                p.buf.push_str("%!");
                p.buf.push(verb);
                p.buf.push_str("(BADINDEX)");
            }
            _ if arg_num >= args.len() => {
                p.buf.push_str("%!");
                p.buf.push(verb);
                p.buf.push_str("(MISSING)");
            }
            'w' => p.bad_verb('w', &args[arg_num].clone()),
            'v' => {
                if p.f.plus {
                    p.f.plus = false;
                    p.f.plus_v = true;
                }
                if p.f.sharp {
                    p.f.sharp = false;
                }
                let a = args[arg_num].clone();
                p.print_arg(&a, 'v');
                arg_num += 1;
            }
            _ => {
                let a = args[arg_num].clone();
                p.print_arg(&a, verb);
                arg_num += 1;
            }
        }
    }
    if !reordered && arg_num < args.len() {
        p.f = Flags::default();
        p.buf.push_str("%!(EXTRA ");
        for (k, a) in args[arg_num..].iter().enumerate() {
            if k > 0 {
                p.buf.push_str(", ");
            }
            let a = as_any(a);
            match a {
                Value::Invalid => p.buf.push_str("<nil>"),
                _ => {
                    p.buf.push_str(a.type_name());
                    p.buf.push('=');
                    p.print_arg(&a, 'v');
                }
            }
        }
        p.buf.push(')');
    }
    p.buf
}

/// `[n]` argument index at `i`: returns (argument number, new index, still good).
fn arg_index(b: &[u8], i: usize, arg_num: usize, n_args: usize, reordered: &mut bool, good: bool) -> (usize, usize, bool) {
    if i >= b.len() || b[i] != b'[' {
        return (arg_num, i, good);
    }
    *reordered = true;
    let Some(close) = b[i + 1..].iter().position(|&c| c == b']') else {
        return (arg_num, b.len(), false);
    };
    let inner = &b[i + 1..i + 1 + close];
    let n = std::str::from_utf8(inner).ok().and_then(|s| s.parse::<usize>().ok());
    match n {
        Some(n) if n >= 1 && n <= n_args => (n - 1, i + close + 2, good),
        _ => (arg_num, i + close + 2, false),
    }
}
