//! The parser of Go's `text/template`: builds the main tree and every `{{define}}` /
//! `{{block}}` tree from the lexer's items, checking variables and function names as Go does.
//!
//! Invariants (as `text/template/parse/parse.go`): errors read
//! `template: NAME:LINE: message` with the line of the last item read; variables are scoped to
//! the control structure that declares them; `break` / `continue` only inside `range`.
//! Beyond Go: nesting of control structures is limited to [`MAX_NESTING`] and of parentheses to
//! [`MAX_PARENS`] (Go allows 10,000 parentheses and unbounded nesting on its growable stacks),
//! so hostile templates cannot exhaust a thread's stack.
//!
//! Modelled on Go's `parse.go` (three-item lookahead, same error texts).

use std::collections::HashMap;

use super::lex::{Item, ItemType, Lexer};
use super::node::{is_empty_list, Arg, Branch, Command, List, Node, Number, Pipe};

/// Deepest nesting of `if` / `range` / `with` / `block` / `define` bodies.
pub const MAX_NESTING: usize = 100;
/// Deepest nesting of parenthesized pipelines.
pub const MAX_PARENS: usize = 100;

/// The function names a template may call: Go's builtins and Ollama's additions.
pub const FUNCTIONS: &[&str] = &[
    "and",
    "call",
    "html",
    "index",
    "slice",
    "js",
    "len",
    "not",
    "or",
    "print",
    "printf",
    "println",
    "urlquery",
    "eq",
    "ge",
    "gt",
    "le",
    "lt",
    "ne",
    "json",
    "currentDate",
    "yesterdayDate",
    "toTypeScriptType",
];

/// A parsed template set: the main tree (named "") and the defined ones.
#[derive(Clone, Debug, Default)]
pub struct Trees {
    pub trees: HashMap<String, List>,
}

/// Per-tree parser state (Go's `Tree` fields other than the shared lexer).
struct TreeState {
    token: [Item; 3],
    peek_count: usize,
    vars: Vec<String>,
    action_line: usize,
    range_depth: usize,
}

impl TreeState {
    fn new() -> Self {
        let eof = Item { typ: ItemType::Eof, pos: 0, val: String::new(), line: 0 };
        TreeState { token: [eof.clone(), eof.clone(), eof], peek_count: 0, vars: vec!["$".into()], action_line: 0, range_depth: 0 }
    }
}

pub struct Parser<'a> {
    lex: Lexer<'a>,
    st: TreeState,
    name: String,
    trees: Trees,
    nesting: usize,
    parens: usize,
}

type PResult<T> = Result<T, String>;

impl<'a> Parser<'a> {
    /// Parses `text` as the template `name` (Ollama always uses "").
    pub fn parse(name: &str, text: &'a str) -> PResult<Trees> {
        let mut p =
            Parser { lex: Lexer::new(text), st: TreeState::new(), name: name.to_string(), trees: Trees::default(), nesting: 0, parens: 0 };
        let root = p.parse_main()?;
        p.add(name.to_string(), root)?;
        Ok(p.trees)
    }

    fn errorf(&self, msg: impl std::fmt::Display) -> String {
        format!("template: {}:{}: {}", self.name, self.st.token[0].line, msg)
    }

    fn next(&mut self) -> Item {
        if self.st.peek_count > 0 {
            self.st.peek_count -= 1;
        } else {
            self.st.token[0] = self.lex.next_item();
        }
        self.st.token[self.st.peek_count].clone()
    }

    fn backup(&mut self) {
        self.st.peek_count += 1;
    }

    fn backup2(&mut self, t1: Item) {
        self.st.token[1] = t1;
        self.st.peek_count = 2;
    }

    fn backup3(&mut self, t2: Item, t1: Item) {
        self.st.token[1] = t1;
        self.st.token[2] = t2;
        self.st.peek_count = 3;
    }

    fn peek(&mut self) -> Item {
        if self.st.peek_count > 0 {
            return self.st.token[self.st.peek_count - 1].clone();
        }
        self.st.peek_count = 1;
        self.st.token[0] = self.lex.next_item();
        self.st.token[0].clone()
    }

    fn next_non_space(&mut self) -> Item {
        loop {
            let t = self.next();
            if t.typ != ItemType::Space {
                return t;
            }
        }
    }

    fn peek_non_space(&mut self) -> Item {
        let t = self.next_non_space();
        self.backup();
        t
    }

    fn expect(&mut self, expected: ItemType, context: &str) -> PResult<Item> {
        let t = self.next_non_space();
        if t.typ != expected {
            return Err(self.unexpected(&t, context));
        }
        Ok(t)
    }

    fn unexpected(&self, token: &Item, context: &str) -> String {
        if token.typ == ItemType::Error {
            let mut extra = String::new();
            if self.st.action_line != 0 && self.st.action_line != token.line {
                extra = format!(" in action started at {}:{}", self.name, self.st.action_line);
                if token.val.ends_with(" action") {
                    extra = extra[" in action".len()..].to_string();
                }
            }
            return self.errorf(format!("{token}{extra}"));
        }
        self.errorf(format!("unexpected {token} in {context}"))
    }

    /// Go's `Tree.add`: a second non-empty definition of a name is an error.
    fn add(&mut self, name: String, root: List) -> PResult<()> {
        match self.trees.trees.get(&name) {
            Some(old) if !is_empty_list(old) => {
                if !is_empty_list(&root) {
                    return Err(self.errorf(format!("template: multiple definition of template {}", super::fmt::quote(&name))));
                }
                Ok(())
            }
            _ => {
                self.trees.trees.insert(name, root);
                Ok(())
            }
        }
    }

    fn parse_main(&mut self) -> PResult<List> {
        let mut root = List { pos: self.peek().pos, nodes: Vec::new() };
        while self.peek().typ != ItemType::Eof {
            if self.peek().typ == ItemType::LeftDelim {
                let delim = self.next();
                if self.next_non_space().typ == ItemType::Define {
                    self.parse_definition()?;
                    continue;
                }
                self.backup2(delim);
            }
            match self.text_or_action()? {
                Parsed::Node(n) => root.nodes.push(n),
                Parsed::End => return Err(self.errorf("unexpected {{end}}")),
                Parsed::Else(_) => return Err(self.errorf("unexpected {{else}}")),
            }
        }
        Ok(root)
    }

    /// Parses a `{{define "name"}} ... {{end}}` body as its own tree.
    fn parse_definition(&mut self) -> PResult<()> {
        let saved = std::mem::replace(&mut self.st, TreeState::new());
        let result = (|| {
            let context = "define clause";
            let name = self.next_non_space();
            if name.typ != ItemType::String && name.typ != ItemType::RawString {
                return Err(self.unexpected(&name, context));
            }
            let name = unquote(&name.val).map_err(|e| self.errorf(e))?;
            self.expect(ItemType::RightDelim, context)?;
            let (list, end) = self.item_list()?;
            if let Parsed::Else(_) = end {
                return Err(self.errorf(format!("unexpected {{{{else}}}} in {context}")));
            }
            self.add(name, list)
        })();
        self.st = saved;
        result
    }

    fn item_list(&mut self) -> PResult<(List, Parsed)> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err(self.errorf(format!("max nesting depth exceeded ({MAX_NESTING})")));
        }
        let mut list = List { pos: self.peek_non_space().pos, nodes: Vec::new() };
        while self.peek_non_space().typ != ItemType::Eof {
            match self.text_or_action()? {
                Parsed::Node(n) => list.nodes.push(n),
                end => {
                    self.nesting -= 1;
                    return Ok((list, end));
                }
            }
        }
        Err(self.errorf("unexpected EOF"))
    }

    fn text_or_action(&mut self) -> PResult<Parsed> {
        let token = self.next_non_space();
        match token.typ {
            ItemType::Text => Ok(Parsed::Node(Node::Text { pos: token.pos, text: token.val })),
            ItemType::LeftDelim => {
                self.st.action_line = token.line;
                let r = self.action();
                self.st.action_line = 0;
                r
            }
            _ => Err(self.unexpected(&token, "input")),
        }
    }

    fn action(&mut self) -> PResult<Parsed> {
        let token = self.next_non_space();
        match token.typ {
            ItemType::Block => return self.block_control().map(Parsed::Node),
            ItemType::Break | ItemType::Continue => {
                let word = if token.typ == ItemType::Break { "break" } else { "continue" };
                let t = self.next_non_space();
                if t.typ != ItemType::RightDelim {
                    return Err(self.unexpected(&t, &format!("{{{{{word}}}}}")));
                }
                if self.st.range_depth == 0 {
                    return Err(self.errorf(format!("{{{{{word}}}}} outside {{{{range}}}}")));
                }
                return Ok(Parsed::Node(if word == "break" { Node::Break { pos: token.pos } } else { Node::Continue { pos: token.pos } }));
            }
            ItemType::Else => return self.else_control(),
            ItemType::End => {
                self.expect(ItemType::RightDelim, "end")?;
                return Ok(Parsed::End);
            }
            ItemType::If => return self.branch("if").map(|b| Parsed::Node(Node::If(b))),
            ItemType::Range => return self.branch("range").map(|b| Parsed::Node(Node::Range(b))),
            ItemType::Template => return self.template_control().map(Parsed::Node),
            ItemType::With => return self.branch("with").map(|b| Parsed::Node(Node::With(b))),
            _ => {}
        }
        self.backup();
        let token = self.peek();
        let pipe = self.pipeline("command", ItemType::RightDelim)?;
        Ok(Parsed::Node(Node::Action { pos: token.pos, pipe }))
    }

    fn else_control(&mut self) -> PResult<Parsed> {
        let peek = self.peek_non_space();
        if peek.typ == ItemType::If || peek.typ == ItemType::With {
            return Ok(Parsed::Else(peek.pos));
        }
        let t = self.expect(ItemType::RightDelim, "else")?;
        Ok(Parsed::Else(t.pos))
    }

    fn branch(&mut self, context: &str) -> PResult<Branch> {
        let mark = self.st.vars.len();
        let r = self.branch_inner(context);
        self.st.vars.truncate(mark);
        r
    }

    fn branch_inner(&mut self, context: &str) -> PResult<Branch> {
        let pipe = self.pipeline(context, ItemType::RightDelim)?;
        if context == "range" {
            self.st.range_depth += 1;
        }
        let r = self.item_list();
        if context == "range" {
            self.st.range_depth -= 1;
        }
        let (list, next) = r?;
        let mut else_list = None;
        if let Parsed::Else(else_pos) = next {
            if context == "if" && self.peek().typ == ItemType::If {
                self.next();
                let inner = self.branch("if")?;
                else_list = Some(List { pos: else_pos, nodes: vec![Node::If(inner)] });
            } else if context == "with" && self.peek().typ == ItemType::With {
                self.next();
                let inner = self.branch("with")?;
                else_list = Some(List { pos: else_pos, nodes: vec![Node::With(inner)] });
            } else {
                let (l, next) = self.item_list()?;
                if let Parsed::Else(_) = next {
                    return Err(self.errorf("expected end; found {{else}}"));
                }
                else_list = Some(l);
            }
        }
        Ok(Branch { pos: pipe.pos, pipe, list, else_list })
    }

    fn block_control(&mut self) -> PResult<Node> {
        let context = "block clause";
        let token = self.next_non_space();
        let name = self.template_name(&token, context)?;
        let pipe = self.pipeline(context, ItemType::RightDelim)?;
        let saved = std::mem::replace(&mut self.st, TreeState::new());
        let r = self.item_list();
        let r = r.and_then(|(list, end)| match end {
            Parsed::Else(_) => Err(self.errorf(format!("unexpected {{{{else}}}} in {context}"))),
            _ => self.add(name.clone(), list),
        });
        self.st = saved;
        r?;
        Ok(Node::Template { pos: token.pos, name, pipe: Some(pipe) })
    }

    fn template_control(&mut self) -> PResult<Node> {
        let context = "template clause";
        let token = self.next_non_space();
        let name = self.template_name(&token, context)?;
        let mut pipe = None;
        if self.next_non_space().typ != ItemType::RightDelim {
            self.backup();
            pipe = Some(self.pipeline(context, ItemType::RightDelim)?);
        }
        Ok(Node::Template { pos: token.pos, name, pipe })
    }

    fn template_name(&self, token: &Item, context: &str) -> PResult<String> {
        match token.typ {
            ItemType::String | ItemType::RawString => unquote(&token.val).map_err(|e| self.errorf(e)),
            _ => Err(self.unexpected(token, context)),
        }
    }

    fn pipeline(&mut self, context: &str, end: ItemType) -> PResult<Pipe> {
        let token = self.peek_non_space();
        let mut pipe = Pipe { pos: token.pos, is_assign: false, decl: Vec::new(), cmds: Vec::new() };
        // Variable declarations: `$x :=`, `$x =`, `$i, $v := range`.
        loop {
            let v = self.peek_non_space();
            if v.typ != ItemType::Variable {
                break;
            }
            self.next();
            let token_after = self.peek();
            let next = self.peek_non_space();
            if next.typ == ItemType::Assign || next.typ == ItemType::Declare {
                pipe.is_assign = next.typ == ItemType::Assign;
                self.next_non_space();
                pipe.decl.push((v.pos, v.val.clone()));
                self.st.vars.push(v.val);
            } else if next.typ == ItemType::Char && next.val == "," {
                self.next_non_space();
                pipe.decl.push((v.pos, v.val.clone()));
                self.st.vars.push(v.val);
                if context == "range" && pipe.decl.len() < 2 {
                    match self.peek_non_space().typ {
                        ItemType::Variable | ItemType::RightDelim | ItemType::RightParen => continue,
                        _ => return Err(self.errorf("range can only initialize variables")),
                    }
                }
                return Err(self.errorf(format!("too many declarations in {context}")));
            } else if token_after.typ == ItemType::Space {
                self.backup3(v, token_after);
            } else {
                self.backup2(v);
            }
            break;
        }
        loop {
            let token = self.next_non_space();
            match token.typ {
                t if t == end => {
                    self.check_pipeline(&pipe, context)?;
                    return Ok(pipe);
                }
                ItemType::Bool
                | ItemType::CharConstant
                | ItemType::Complex
                | ItemType::Dot
                | ItemType::Field
                | ItemType::Identifier
                | ItemType::Number
                | ItemType::Nil
                | ItemType::RawString
                | ItemType::String
                | ItemType::Variable
                | ItemType::LeftParen => {
                    self.backup();
                    let cmd = self.command()?;
                    pipe.cmds.push(cmd);
                }
                _ => return Err(self.unexpected(&token, context)),
            }
        }
    }

    fn check_pipeline(&self, pipe: &Pipe, context: &str) -> PResult<()> {
        if pipe.cmds.is_empty() {
            return Err(self.errorf(format!("missing value for {context}")));
        }
        for (i, c) in pipe.cmds.iter().enumerate().skip(1) {
            if matches!(
                c.args.first(),
                Some(Arg::Bool { .. } | Arg::Dot { .. } | Arg::Nil { .. } | Arg::Number { .. } | Arg::String { .. })
            ) {
                return Err(self.errorf(format!("non executable command in pipeline stage {}", i + 1)));
            }
        }
        Ok(())
    }

    fn command(&mut self) -> PResult<Command> {
        let mut cmd = Command { pos: self.peek_non_space().pos, args: Vec::new() };
        loop {
            self.peek_non_space();
            if let Some(operand) = self.operand()? {
                cmd.args.push(operand);
            }
            let token = self.next();
            match token.typ {
                ItemType::Space => continue,
                ItemType::RightDelim | ItemType::RightParen => self.backup(),
                ItemType::Pipe => {}
                _ => return Err(self.unexpected(&token, "operand")),
            }
            break;
        }
        if cmd.args.is_empty() {
            return Err(self.errorf("empty command"));
        }
        Ok(cmd)
    }

    fn operand(&mut self) -> PResult<Option<Arg>> {
        let Some(node) = self.term()? else { return Ok(None) };
        if self.peek().typ != ItemType::Field {
            return Ok(Some(node));
        }
        let chain_pos = self.peek().pos;
        let mut fields = Vec::new();
        while self.peek().typ == ItemType::Field {
            fields.push(self.next().val[1..].to_string());
        }
        Ok(Some(match node {
            Arg::Field { mut ident, .. } => {
                ident.extend(fields);
                Arg::Field { pos: chain_pos, ident }
            }
            Arg::Variable { mut ident, .. } => {
                ident.extend(fields);
                Arg::Variable { pos: chain_pos, ident }
            }
            Arg::Bool { .. } | Arg::String { .. } | Arg::Number { .. } | Arg::Nil { .. } | Arg::Dot { .. } => {
                return Err(self.errorf(format!("unexpected . after term {}", super::fmt::quote(&node.to_string()))));
            }
            other => Arg::Chain { pos: chain_pos, node: Box::new(other), fields },
        }))
    }

    fn term(&mut self) -> PResult<Option<Arg>> {
        let token = self.next_non_space();
        let pos = token.pos;
        Ok(Some(match token.typ {
            ItemType::Identifier => {
                if !FUNCTIONS.contains(&token.val.as_str()) {
                    return Err(self.errorf(format!("function {} not defined", super::fmt::quote(&token.val))));
                }
                Arg::Identifier { pos, name: token.val }
            }
            ItemType::Dot => Arg::Dot { pos },
            ItemType::Nil => Arg::Nil { pos },
            ItemType::Variable => {
                let ident: Vec<String> = token.val.split('.').map(str::to_string).collect();
                if !self.st.vars.iter().any(|v| *v == ident[0]) {
                    return Err(self.errorf(format!("undefined variable {}", super::fmt::quote(&ident[0]))));
                }
                Arg::Variable { pos, ident }
            }
            ItemType::Field => Arg::Field { pos, ident: token.val[1..].split('.').map(str::to_string).collect() },
            ItemType::Bool => Arg::Bool { pos, val: token.val == "true" },
            ItemType::CharConstant | ItemType::Complex | ItemType::Number => {
                let num = new_number(&token.val, token.typ).map_err(|e| self.errorf(e))?;
                Arg::Number { pos, num }
            }
            ItemType::LeftParen => {
                if self.parens >= MAX_PARENS {
                    return Err(self.errorf("max expression depth exceeded"));
                }
                self.parens += 1;
                let r = self.pipeline("parenthesized pipeline", ItemType::RightParen);
                self.parens -= 1;
                Arg::Pipe(Box::new(r?))
            }
            ItemType::String | ItemType::RawString => {
                let text = unquote(&token.val).map_err(|e| self.errorf(e))?;
                Arg::String { pos, quoted: token.val, text }
            }
            _ => {
                self.backup();
                return Ok(None);
            }
        }))
    }
}

/// What `text_or_action` found: a node, or the `{{end}}` / `{{else}}` that closes a list.
enum Parsed {
    Node(Node),
    End,
    Else(usize),
}

/// Go's `strconv.UnquoteChar` on the start of `s`: the character and the rest.
fn unquote_char(s: &str, quote: char) -> Result<(char, &str), String> {
    let syntax = || "invalid syntax".to_string();
    let mut it = s.chars();
    let c = it.next().ok_or_else(syntax)?;
    if c == quote && (quote == '\'' || quote == '"') {
        return Err(syntax());
    }
    if c != '\\' {
        return Ok((c, it.as_str()));
    }
    let e = it.next().ok_or_else(syntax)?;
    let rest = it.as_str();
    let simple = match e {
        'a' => Some('\x07'),
        'b' => Some('\x08'),
        'f' => Some('\x0c'),
        'n' => Some('\n'),
        'r' => Some('\r'),
        't' => Some('\t'),
        'v' => Some('\x0b'),
        '\\' => Some('\\'),
        '\'' | '"' if e == quote => Some(e),
        _ => None,
    };
    if let Some(c) = simple {
        return Ok((c, rest));
    }
    let hex = |n: usize| -> Result<(u32, &str), String> {
        if rest.len() < n || !rest.is_char_boundary(n) {
            return Err(syntax());
        }
        let v = u32::from_str_radix(&rest[..n], 16).map_err(|_| syntax())?;
        if !rest[..n].bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(syntax());
        }
        Ok((v, &rest[n..]))
    };
    match e {
        // A raw byte in Go; bytes past ASCII cannot be kept in UTF-8 text and become U+FFFD.
        'x' => {
            let (v, r) = hex(2)?;
            Ok((char::from_u32(v).filter(|_| v < 0x80).unwrap_or('\u{FFFD}'), r))
        }
        'u' | 'U' => {
            let (v, r) = hex(if e == 'u' { 4 } else { 8 })?;
            Ok((char::from_u32(v).ok_or_else(syntax)?, r))
        }
        '0'..='7' => {
            let digits = format!("{e}{}", rest.get(..2).ok_or_else(syntax)?);
            if !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
                return Err(syntax());
            }
            let v = u32::from_str_radix(&digits, 8).map_err(|_| syntax())?;
            if v > 255 {
                return Err(syntax());
            }
            Ok((char::from_u32(v).filter(|_| v < 0x80).unwrap_or('\u{FFFD}'), &rest[2..]))
        }
        _ => Err(syntax()),
    }
}

/// Go's `strconv.Unquote` for `"..."`, `` `...` `` and `'x'`.
pub fn unquote(s: &str) -> Result<String, String> {
    let syntax = || "invalid syntax".to_string();
    let q = s.chars().next().ok_or_else(syntax)?;
    if s.len() < 2 || !s.ends_with(q) {
        return Err(syntax());
    }
    let body = &s[1..s.len() - 1];
    match q {
        '`' => {
            if body.contains('`') {
                return Err(syntax());
            }
            Ok(body.replace('\r', ""))
        }
        '"' | '\'' => {
            if body.contains('\n') {
                return Err(syntax());
            }
            let mut out = String::new();
            let mut rest = body;
            while !rest.is_empty() {
                let (c, r) = unquote_char(rest, q)?;
                out.push(c);
                rest = r;
                if q == '\'' && !rest.is_empty() {
                    return Err(syntax());
                }
            }
            if q == '\'' && out.is_empty() {
                return Err(syntax());
            }
            Ok(out)
        }
        _ => Err(syntax()),
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)` / `ParseUint`: (negative, magnitude).
fn parse_go_int(s: &str) -> Option<(bool, u64)> {
    let (neg, body) = match s.as_bytes().first()? {
        b'+' => (false, &s[1..]),
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d, true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d, true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d, true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..], true)
    } else {
        (10, lower.as_str(), false)
    };
    // Underscores must separate digits (a base prefix counts as a digit).
    if digits.contains("__") || digits.ends_with('_') || (!prefixed && digits.starts_with('_')) {
        return None;
    }
    let clean: String = digits.chars().filter(|&c| c != '_').collect();
    if clean.is_empty() {
        return None;
    }
    u64::from_str_radix(&clean, radix).ok().map(|m| (neg, m))
}

fn parse_go_float(s: &str) -> Option<f64> {
    if s.contains("__") || s.ends_with('_') || s.starts_with('_') {
        return None;
    }
    let clean: String = s.chars().filter(|&c| c != '_').collect();
    let lower = clean.to_ascii_lowercase();
    if lower.contains("0x") || lower.contains("inf") || lower.contains("nan") {
        // Hexadecimal floats are not supported (Go accepts `0x1p-2`).
        return None;
    }
    // Go's ParseFloat reports overflow (±Inf) as an error.
    clean.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// Go's `newNumber`: which of int / uint / float the literal can be.
pub fn new_number(text: &str, typ: ItemType) -> Result<Number, String> {
    let mut n =
        Number { text: text.to_string(), is_int: false, int64: 0, is_uint: false, is_float: false, float64: 0.0, is_complex: false };
    if typ == ItemType::CharConstant {
        let (c, tail) = unquote_char(&text[1..], '\'')?;
        if tail != "'" {
            return Err(format!("malformed character constant: {text}"));
        }
        n.is_int = true;
        n.is_uint = true;
        n.is_float = true;
        n.int64 = c as i64;
        n.float64 = c as u32 as f64;
        return Ok(n);
    }
    if typ == ItemType::Complex || text.ends_with('i') {
        // Complex constants parse in Go; ROCmForge refuses them when executed.
        n.is_complex = true;
        return Ok(n);
    }
    let parsed = parse_go_int(text);
    if let Some((neg, mag)) = parsed {
        // ParseUint takes no sign at all.
        if !text.starts_with(['+', '-']) {
            n.is_uint = true;
        }
        let signed = if neg { 0i64.checked_sub_unsigned(mag) } else { i64::try_from(mag).ok() };
        if let Some(i) = signed {
            n.is_int = true;
            n.int64 = i;
            if i == 0 {
                n.is_uint = true;
            }
        }
    }
    if n.is_int {
        n.is_float = true;
        n.float64 = n.int64 as f64;
    } else if n.is_uint {
        n.is_float = true;
        n.float64 = parsed.map_or(0.0, |(_, m)| m as f64);
    } else if let Some(f) = parse_go_float(text) {
        if !text.contains(['.', 'e', 'E', 'p', 'P']) {
            return Err(format!("integer overflow: {}", super::fmt::quote(text)));
        }
        n.is_float = true;
        n.float64 = f;
        if f.fract() == 0.0 && (-9.223372036854776e18..9.223372036854776e18).contains(&f) {
            n.is_int = true;
            n.int64 = f as i64;
        }
        if f.fract() == 0.0 && (0.0..1.8446744073709552e19).contains(&f) {
            n.is_uint = true;
        }
    }
    if !n.is_int && !n.is_uint && !n.is_float {
        return Err(format!("illegal number syntax: {}", super::fmt::quote(text)));
    }
    Ok(n)
}
