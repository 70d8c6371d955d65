//! The lexer of Go's `text/template`: text and `{{ }}` actions, trim markers (`{{- ` and
//! ` -}}`, a dash plus one space-class byte), comments, and the tokens inside an action.
//!
//! Invariants (as `text/template/parse/lex.go`): positions are byte offsets into the source;
//! `line` is the line an item starts on; after an error item the lexer only returns EOF; a
//! trim marker removes all ASCII space (` \t\r\n`) on its side of the text.
//!
//! Modelled on Go's `lex.go` state machine (rewritten as a pull lexer).

use super::fmt::quote_prec;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemType {
    Error,
    Bool,
    Char,
    CharConstant,
    Complex,
    Assign,
    Declare,
    Eof,
    Field,
    Identifier,
    LeftDelim,
    LeftParen,
    Number,
    Pipe,
    RawString,
    RightDelim,
    RightParen,
    Space,
    String,
    Text,
    Variable,
    // Keywords (Display shows them as `<word>`).
    Block,
    Break,
    Continue,
    Dot,
    Define,
    Else,
    End,
    If,
    Nil,
    Range,
    Template,
    With,
}

impl ItemType {
    fn is_keyword(self) -> bool {
        matches!(
            self,
            ItemType::Block
                | ItemType::Break
                | ItemType::Continue
                | ItemType::Dot
                | ItemType::Define
                | ItemType::Else
                | ItemType::End
                | ItemType::If
                | ItemType::Nil
                | ItemType::Range
                | ItemType::Template
                | ItemType::With
        )
    }
}

#[derive(Clone, Debug)]
pub struct Item {
    pub typ: ItemType,
    pub pos: usize,
    pub val: String,
    pub line: usize,
}

impl std::fmt::Display for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.typ {
            ItemType::Eof => f.write_str("EOF"),
            ItemType::Error => f.write_str(&self.val),
            t if t.is_keyword() => write!(f, "<{}>", self.val),
            _ if self.val.chars().count() > 10 => write!(f, "{}...", quote_prec(&self.val, 10)),
            _ => f.write_str(&quote_prec(&self.val, usize::MAX)),
        }
    }
}

const LEFT_DELIM: &str = "{{";
const RIGHT_DELIM: &str = "}}";
const LEFT_COMMENT: &str = "/*";
const RIGHT_COMMENT: &str = "*/";
/// A trim marker plus the space before or after it.
const TRIM_MARKER_LEN: usize = 2;

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_alnum(c: char) -> bool {
    c == '_' || c.is_alphabetic() || is_go_digit(c)
}

/// Go's `unicode.IsDigit` (category Nd); Rust's `is_numeric` also takes Nl/No, so check the
/// decimal-digit property through `to_digit` on the ASCII range and Nd blocks.
fn is_go_digit(c: char) -> bool {
    c.is_ascii_digit() || (!c.is_ascii() && c.is_numeric() && unicode_nd(c))
}

/// Non-ASCII decimal digits: every Nd block is a run of ten starting at a code point ending in 0
/// (hex) or 6; approximate by the common blocks (Arabic-Indic through fullwidth).
fn unicode_nd(c: char) -> bool {
    const STARTS: &[u32] = &[
        0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66, 0xDE6, 0xE50, 0xED0, 0xF20, 0x1040, 0x1090,
        0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50,
        0xABF0, 0xFF10,
    ];
    let u = c as u32;
    STARTS.iter().any(|&s| (s..s + 10).contains(&u))
}

fn has_left_trim_marker(s: &[u8]) -> bool {
    s.len() >= 2 && s[0] == b'-' && is_space(s[1] as char)
}

fn has_right_trim_marker(s: &[u8]) -> bool {
    s.len() >= 2 && is_space(s[0] as char) && s[1] == b'-'
}

pub struct Lexer<'a> {
    input: &'a str,
    pos: usize,
    start: usize,
    at_eof: bool,
    paren_depth: usize,
    line: usize,
    start_line: usize,
    inside_action: bool,
    /// Set by an error: every later call returns EOF.
    dead: bool,
}

impl<'a> Lexer<'a> {
    pub fn new(input: &'a str) -> Self {
        Lexer { input, pos: 0, start: 0, at_eof: false, paren_depth: 0, line: 1, start_line: 1, inside_action: false, dead: false }
    }

    fn rest(&self) -> &'a [u8] {
        &self.input.as_bytes()[self.pos.min(self.input.len())..]
    }

    fn next(&mut self) -> Option<char> {
        if self.pos >= self.input.len() {
            self.at_eof = true;
            return None;
        }
        let c = self.input[self.pos..].chars().next()?;
        self.pos += c.len_utf8();
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn backup(&mut self) {
        if !self.at_eof && self.pos > 0 {
            if let Some(c) = self.input[..self.pos].chars().next_back() {
                self.pos -= c.len_utf8();
                if c == '\n' {
                    self.line -= 1;
                }
            }
        }
    }

    fn peek(&mut self) -> Option<char> {
        let c = self.next();
        self.backup();
        c
    }

    fn this_item(&mut self, typ: ItemType) -> Item {
        let i = Item { typ, pos: self.start, val: self.input[self.start..self.pos].to_string(), line: self.start_line };
        self.start = self.pos;
        self.start_line = self.line;
        i
    }

    fn ignore(&mut self) {
        self.line += self.input[self.start..self.pos].matches('\n').count();
        self.start = self.pos;
        self.start_line = self.line;
    }

    fn accept(&mut self, valid: &str) -> bool {
        match self.next() {
            Some(c) if valid.contains(c) => true,
            _ => {
                self.backup();
                false
            }
        }
    }

    fn accept_run(&mut self, valid: &str) {
        while matches!(self.next(), Some(c) if valid.contains(c)) {}
        self.backup();
    }

    fn error(&mut self, msg: String) -> Item {
        let i = Item { typ: ItemType::Error, pos: self.start, val: msg, line: self.start_line };
        self.dead = true;
        i
    }

    /// The next item.
    pub fn next_item(&mut self) -> Item {
        if self.dead {
            return Item { typ: ItemType::Eof, pos: self.pos, val: "EOF".into(), line: self.start_line };
        }
        if self.inside_action {
            return self.lex_inside_action();
        }
        loop {
            match self.lex_text() {
                Some(item) => return item,
                None => continue,
            }
        }
    }

    /// Text up to the next left delimiter, or the delimiter itself. `None`: a comment was
    /// skipped, lex text again.
    fn lex_text(&mut self) -> Option<Item> {
        if let Some(x) = self.input[self.pos..].find(LEFT_DELIM) {
            if x > 0 {
                self.pos += x;
                let delim_end = self.pos + LEFT_DELIM.len();
                let mut trim = 0;
                if has_left_trim_marker(&self.input.as_bytes()[delim_end..]) {
                    let text = &self.input[self.start..self.pos];
                    trim = text.len() - text.trim_end_matches(is_space).len();
                }
                self.pos -= trim;
                self.line += self.input[self.start..self.pos].matches('\n').count();
                let item = self.this_item(ItemType::Text);
                self.pos += trim;
                self.ignore();
                if !item.val.is_empty() {
                    return Some(item);
                }
            }
            return self.lex_left_delim();
        }
        self.pos = self.input.len();
        if self.pos > self.start {
            self.line += self.input[self.start..self.pos].matches('\n').count();
            return Some(self.this_item(ItemType::Text));
        }
        Some(self.this_item(ItemType::Eof))
    }

    fn at_right_delim(&self) -> (bool, bool) {
        let rest = self.rest();
        if has_right_trim_marker(rest) && rest[TRIM_MARKER_LEN..].starts_with(RIGHT_DELIM.as_bytes()) {
            return (true, true);
        }
        (rest.starts_with(RIGHT_DELIM.as_bytes()), false)
    }

    fn lex_left_delim(&mut self) -> Option<Item> {
        self.pos += LEFT_DELIM.len();
        let trim_space = has_left_trim_marker(self.rest());
        let after_marker = if trim_space { TRIM_MARKER_LEN } else { 0 };
        if self.input.as_bytes()[self.pos + after_marker..].starts_with(LEFT_COMMENT.as_bytes()) {
            self.pos += after_marker;
            self.ignore();
            return self.lex_comment();
        }
        let item = self.this_item(ItemType::LeftDelim);
        self.inside_action = true;
        self.pos += after_marker;
        self.ignore();
        self.paren_depth = 0;
        Some(item)
    }

    fn lex_comment(&mut self) -> Option<Item> {
        self.pos += LEFT_COMMENT.len();
        let Some(x) = self.input[self.pos..].find(RIGHT_COMMENT) else {
            return Some(self.error("unclosed comment".into()));
        };
        self.pos += x + RIGHT_COMMENT.len();
        let (delim, trim_space) = self.at_right_delim();
        if !delim {
            return Some(self.error("comment ends before closing delimiter".into()));
        }
        // The comment item itself is not emitted (no ParseComments mode).
        self.start = self.pos;
        self.start_line = self.line;
        if trim_space {
            self.pos += TRIM_MARKER_LEN;
        }
        self.pos += RIGHT_DELIM.len();
        if trim_space {
            let rest = &self.input[self.pos..];
            self.pos += rest.len() - rest.trim_start_matches(is_space).len();
        }
        self.ignore();
        None
    }

    fn lex_right_delim(&mut self) -> Item {
        let (_, trim_space) = self.at_right_delim();
        if trim_space {
            self.pos += TRIM_MARKER_LEN;
            self.ignore();
        }
        self.pos += RIGHT_DELIM.len();
        let item = self.this_item(ItemType::RightDelim);
        if trim_space {
            let rest = &self.input[self.pos..];
            self.pos += rest.len() - rest.trim_start_matches(is_space).len();
            self.ignore();
        }
        self.inside_action = false;
        item
    }

    fn lex_inside_action(&mut self) -> Item {
        let (delim, _) = self.at_right_delim();
        if delim {
            if self.paren_depth == 0 {
                return self.lex_right_delim();
            }
            return self.error("unclosed left paren".into());
        }
        let Some(r) = self.next() else {
            return self.error("unclosed action".into());
        };
        match r {
            c if is_space(c) => {
                self.backup();
                self.lex_space()
            }
            '=' => self.this_item(ItemType::Assign),
            ':' => {
                if self.next() != Some('=') {
                    return self.error("expected :=".into());
                }
                self.this_item(ItemType::Declare)
            }
            '|' => self.this_item(ItemType::Pipe),
            '"' => self.lex_quote(),
            '`' => self.lex_raw_quote(),
            '$' => self.lex_variable(),
            '\'' => self.lex_char(),
            '.' if self.rest().first().is_some_and(|b| !b.is_ascii_digit()) => self.lex_field_or_variable(ItemType::Field),
            '.' | '+' | '-' | '0'..='9' => {
                self.backup();
                self.lex_number()
            }
            c if is_alnum(c) => {
                self.backup();
                self.lex_identifier()
            }
            '(' => {
                self.paren_depth += 1;
                self.this_item(ItemType::LeftParen)
            }
            ')' => {
                if self.paren_depth == 0 {
                    return self.error("unexpected right paren".into());
                }
                self.paren_depth -= 1;
                self.this_item(ItemType::RightParen)
            }
            c if c.is_ascii() && !c.is_ascii_control() => self.this_item(ItemType::Char),
            c => self.error(format!("unrecognized character in action: {}", go_rune_u(c))),
        }
    }

    fn lex_space(&mut self) -> Item {
        let mut num_spaces = 0;
        while self.peek().is_some_and(is_space) {
            self.next();
            num_spaces += 1;
        }
        // Be careful about a trim-marked closing delimiter, which starts with a space.
        let b = self.input.as_bytes();
        if has_right_trim_marker(&b[self.pos - 1..]) && b[self.pos - 1 + TRIM_MARKER_LEN..].starts_with(RIGHT_DELIM.as_bytes()) {
            self.backup();
            if num_spaces == 1 {
                return self.lex_right_delim();
            }
        }
        self.this_item(ItemType::Space)
    }

    fn lex_identifier(&mut self) -> Item {
        loop {
            match self.next() {
                Some(c) if is_alnum(c) => {}
                r => {
                    self.backup();
                    if !self.at_terminator() {
                        return self.error(format!("bad character {}", r.map_or("U+FFFFFFFF".into(), go_rune_u)));
                    }
                    let word = &self.input[self.start..self.pos];
                    let typ = match word {
                        "block" => ItemType::Block,
                        "break" => ItemType::Break,
                        "continue" => ItemType::Continue,
                        "define" => ItemType::Define,
                        "else" => ItemType::Else,
                        "end" => ItemType::End,
                        "if" => ItemType::If,
                        "range" => ItemType::Range,
                        "nil" => ItemType::Nil,
                        "template" => ItemType::Template,
                        "with" => ItemType::With,
                        "true" | "false" => ItemType::Bool,
                        _ => ItemType::Identifier,
                    };
                    return self.this_item(typ);
                }
            }
        }
    }

    fn lex_variable(&mut self) -> Item {
        if self.at_terminator() {
            return self.this_item(ItemType::Variable);
        }
        self.lex_field_or_variable(ItemType::Variable)
    }

    fn lex_field_or_variable(&mut self, typ: ItemType) -> Item {
        if self.at_terminator() {
            return self.this_item(if typ == ItemType::Variable { ItemType::Variable } else { ItemType::Dot });
        }
        let mut r;
        loop {
            r = self.next();
            if !r.is_some_and(is_alnum) {
                self.backup();
                break;
            }
        }
        if !self.at_terminator() {
            return self.error(format!("bad character {}", r.map_or("U+FFFFFFFF".into(), go_rune_u)));
        }
        self.this_item(typ)
    }

    fn at_terminator(&mut self) -> bool {
        match self.peek() {
            None => true,
            Some(c) if is_space(c) => true,
            Some('.' | ',' | '|' | ':' | ')' | '(') => true,
            Some(_) => self.rest().starts_with(RIGHT_DELIM.as_bytes()),
        }
    }

    fn lex_char(&mut self) -> Item {
        loop {
            match self.next() {
                Some('\\') => match self.next() {
                    Some(c) if c != '\n' => {}
                    _ => return self.error("unterminated character constant".into()),
                },
                None | Some('\n') => return self.error("unterminated character constant".into()),
                Some('\'') => break,
                _ => {}
            }
        }
        self.this_item(ItemType::CharConstant)
    }

    fn lex_number(&mut self) -> Item {
        if !self.scan_number() {
            return self.error(format!("bad number syntax: {}", quote_prec(&self.input[self.start..self.pos], usize::MAX)));
        }
        if let Some('+' | '-') = self.peek() {
            // Complex: 1+2i. No spaces, must end in 'i'.
            if !self.scan_number() || !self.input[..self.pos].ends_with('i') {
                return self.error(format!("bad number syntax: {}", quote_prec(&self.input[self.start..self.pos], usize::MAX)));
            }
            return self.this_item(ItemType::Complex);
        }
        self.this_item(ItemType::Number)
    }

    fn scan_number(&mut self) -> bool {
        self.accept("+-");
        let mut digits = "0123456789_";
        if self.accept("0") {
            if self.accept("xX") {
                digits = "0123456789abcdefABCDEF_";
            } else if self.accept("oO") {
                digits = "01234567_";
            } else if self.accept("bB") {
                digits = "01_";
            }
        }
        self.accept_run(digits);
        if self.accept(".") {
            self.accept_run(digits);
        }
        if digits.len() == 10 + 1 && self.accept("eE") {
            self.accept("+-");
            self.accept_run("0123456789_");
        }
        if digits.len() == 16 + 6 + 1 && self.accept("pP") {
            self.accept("+-");
            self.accept_run("0123456789_");
        }
        self.accept("i");
        if self.peek().is_some_and(is_alnum) {
            self.next();
            return false;
        }
        true
    }

    fn lex_quote(&mut self) -> Item {
        loop {
            match self.next() {
                Some('\\') => match self.next() {
                    Some(c) if c != '\n' => {}
                    _ => return self.error("unterminated quoted string".into()),
                },
                None | Some('\n') => return self.error("unterminated quoted string".into()),
                Some('"') => break,
                _ => {}
            }
        }
        self.this_item(ItemType::String)
    }

    fn lex_raw_quote(&mut self) -> Item {
        loop {
            match self.next() {
                None => return self.error("unterminated raw quoted string".into()),
                Some('`') => break,
                _ => {}
            }
        }
        self.this_item(ItemType::RawString)
    }
}

/// Go's `%#U`: `U+0041 'A'` (the quoted form only for printable runes).
pub fn go_rune_u(c: char) -> String {
    let hex = format!("U+{:04X}", c as u32);
    if super::fmt::is_print(c) {
        format!("{hex} '{c}'")
    } else {
        hex
    }
}
