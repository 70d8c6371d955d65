//! Ollama's use of Go templates: the data it passes (`.System`, `.Prompt`, `.Response`,
//! `.Suffix`, `.Messages`, `.Tools`, `.Think`, `.ThinkLevel`, `.IsThinkSet`) as the Go structs of
//! its `template` package, and its rules for choosing how to render.
//!
//! Rules (Ollama's `template/template.go`):
//! * Parsing: `missingkey=zero` plus the functions `json`, `currentDate`, `yesterdayDate`,
//!   `toTypeScriptType`; the identifiers used anywhere (lower-cased) decide the mode; a
//!   `{{template "x"}}` without a pipeline is refused ("undefined template specified"); a
//!   template that uses neither `.Messages` nor `.Response` gets `{{ .Response }}` appended.
//! * Messages are collated: consecutive messages of one role (tools excepted) merge with a
//!   blank line, keeping the first's other fields; `.System` joins every system message.
//! * `Prompt` and `Suffix` both set: one render with `.Prompt`, `.Suffix` (fill-in-the-middle).
//! * A template that uses `.Messages`: one render with the whole conversation and `.Tools`.
//! * Otherwise (a legacy `.Prompt` template): the template renders once per exchange
//!   (system / user / assistant), and the last exchange renders a copy of the template cut
//!   after its first `.Response`, without Ollama's functions, defined templates or
//!   `missingkey=zero` (as Ollama builds that copy).
//!
//! One deliberate difference: `templateToolFunction` and `templateToolFunctionParameters` print
//! as JSON (`{{ .Function }}`), as `api.ToolFunction` did before Ollama 0.14 and as Qwen's
//! templates expect; Ollama 0.14+ prints Go struct syntax there (ollama/ollama#14601, fix
//! proposed in #18391).

use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::Value as Json;

use super::exec::{self, Shared};
use super::funcs::FuncCtx;
use super::node::{Arg, Branch, List, Node, Pipe};
use super::parse::{Parser, Trees};
use super::value::{
    from_json, Field, GoType, Kind, Methods, Value, T_ANY, T_ANY_MAP, T_ANY_SLICE, T_INT, T_STRING, T_STRING_SLICE, T_UINT8,
};
use super::{ExecOptions, GoTemplateError};

const fn field(name: &'static str, ty: &'static GoType) -> Field {
    Field { name, ty, json: None, omitempty: false }
}

const fn tagged(name: &'static str, ty: &'static GoType, json: &'static str, omitempty: bool) -> Field {
    Field { name, ty, json: Some(json), omitempty }
}

const fn named(name: &'static str, kind: Kind, methods: Methods) -> GoType {
    GoType { name, kind, methods }
}

static T_IMAGE_DATA: GoType = named("api.ImageData", Kind::Slice(&T_UINT8), Methods::None);
static T_IMAGES: GoType = named("[]api.ImageData", Kind::Slice(&T_IMAGE_DATA), Methods::None);
static T_ARGS: GoType = named("template.templateArgs", Kind::Map(&T_ANY), Methods::StringJsonNilEmpty);
static T_TOOL_CALL_FUNCTION: GoType = named(
    "template.templateToolCallFunction",
    Kind::Struct(&[field("Index", &T_INT), field("Name", &T_STRING), field("Arguments", &T_ARGS)]),
    Methods::None,
);
static T_TOOL_CALL: GoType =
    named("template.templateToolCall", Kind::Struct(&[field("ID", &T_STRING), field("Function", &T_TOOL_CALL_FUNCTION)]), Methods::None);
static T_TOOL_CALLS: GoType = named("[]template.templateToolCall", Kind::Slice(&T_TOOL_CALL), Methods::None);
static T_MESSAGE: GoType = named(
    "template.templateMessage",
    Kind::Struct(&[
        field("Role", &T_STRING),
        field("Content", &T_STRING),
        field("Thinking", &T_STRING),
        field("Images", &T_IMAGES),
        field("ToolCalls", &T_TOOL_CALLS),
        field("ToolName", &T_STRING),
        field("ToolCallID", &T_STRING),
    ]),
    Methods::None,
);
static T_MESSAGE_PTR: GoType = named("*template.templateMessage", Kind::Ptr(&T_MESSAGE), Methods::None);
static T_MESSAGES: GoType = named("[]*template.templateMessage", Kind::Slice(&T_MESSAGE_PTR), Methods::None);

static T_PROPERTY_TYPE: GoType = named("api.PropertyType", Kind::Slice(&T_STRING), Methods::PropertyType);
static T_TOOL_PROPERTY: GoType = named(
    "api.ToolProperty",
    Kind::Struct(&[
        tagged("AnyOf", &T_TOOL_PROPERTY_SLICE, "anyOf", true),
        tagged("Type", &T_PROPERTY_TYPE, "type", true),
        tagged("Items", &T_ANY, "items", true),
        tagged("Description", &T_STRING, "description", true),
        tagged("Enum", &T_ANY_SLICE, "enum", true),
        tagged("Properties", &T_PROPS_MAP_PTR, "properties", true),
        tagged("Required", &T_STRING_SLICE, "required", true),
    ]),
    Methods::ToolProperty,
);
static T_TOOL_PROPERTY_SLICE: GoType = named("[]api.ToolProperty", Kind::Slice(&T_TOOL_PROPERTY), Methods::None);
/// `api.ToolPropertiesMap` (an ordered map behind an unexported field).
pub static T_PROPS_MAP: GoType = named("api.ToolPropertiesMap", Kind::OrderedProps, Methods::OrderedProps);
static T_PROPS_MAP_PTR: GoType = named("*api.ToolPropertiesMap", Kind::Ptr(&T_PROPS_MAP), Methods::None);
static T_PROPERTIES: GoType = named("template.templateProperties", Kind::Map(&T_TOOL_PROPERTY), Methods::StringJsonNilEmpty);
static T_TOOL_PARAMS: GoType = named(
    "template.templateToolFunctionParameters",
    Kind::Struct(&[
        tagged("Type", &T_STRING, "type", false),
        tagged("Defs", &T_ANY, "$defs", true),
        tagged("Items", &T_ANY, "items", true),
        tagged("Required", &T_STRING_SLICE, "required", true),
        tagged("Properties", &T_PROPERTIES, "properties", false),
    ]),
    Methods::StringJson,
);
static T_TOOL_FUNCTION: GoType = named(
    "template.templateToolFunction",
    Kind::Struct(&[
        tagged("Name", &T_STRING, "name", false),
        tagged("Description", &T_STRING, "description", false),
        tagged("Parameters", &T_TOOL_PARAMS, "parameters", false),
    ]),
    Methods::StringJson,
);
static T_TOOL: GoType = named(
    "template.templateTool",
    Kind::Struct(&[
        tagged("Type", &T_STRING, "type", false),
        tagged("Items", &T_ANY, "items", true),
        tagged("Function", &T_TOOL_FUNCTION, "function", false),
    ]),
    Methods::StringJson,
);
static T_TOOLS: GoType = named("template.templateTools", Kind::Slice(&T_TOOL), Methods::StringJson);

/// One message as Ollama's API carries it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OllamaMessage {
    pub role: String,
    pub content: String,
    pub thinking: String,
    pub tool_calls: Vec<OllamaToolCall>,
    pub tool_name: String,
    pub tool_call_id: String,
}

/// A tool call of an assistant message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OllamaToolCall {
    pub id: String,
    pub index: i64,
    pub name: String,
    /// A JSON object (`None` or `null`: no arguments).
    pub arguments: Option<Json>,
}

/// What Ollama's `Template.Execute` receives.
#[derive(Debug, Clone, Default)]
pub struct OllamaValues<'a> {
    pub messages: Vec<OllamaMessage>,
    /// The request's `tools` (a JSON array of Ollama / OpenAI tool objects).
    pub tools: Option<&'a Json>,
    pub prompt: String,
    pub suffix: String,
    pub think: bool,
    pub think_level: String,
    pub is_think_set: bool,
}

/// A template parsed the way Ollama parses it.
#[derive(Debug, Clone)]
pub struct OllamaTemplate {
    raw: String,
    trees: Trees,
    vars: Vec<String>,
}

fn str_field(o: &serde_json::Map<String, Json>, key: &str, what: &str) -> Result<String, String> {
    match o.get(key) {
        None | Some(Json::Null) => Ok(String::new()),
        Some(Json::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("invalid {what}: `{key}` must be a string, got {other}")),
    }
}

fn string_slice(o: &serde_json::Map<String, Json>, key: &str, what: &str) -> Result<Value, String> {
    match o.get(key) {
        None | Some(Json::Null) => Ok(Value::Slice(&T_STRING_SLICE, None)),
        Some(Json::Array(a)) => {
            let items = a
                .iter()
                .map(|x| x.as_str().map(Value::str).ok_or_else(|| format!("invalid {what}: `{key}` must be a list of strings")))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Value::Slice(&T_STRING_SLICE, Some(Rc::new(items))))
        }
        Some(_) => Err(format!("invalid {what}: `{key}` must be a list of strings")),
    }
}

fn any_field(o: &serde_json::Map<String, Json>, key: &str) -> Value {
    Value::iface(o.get(key).map_or(Value::Invalid, from_json))
}

/// An `api.ToolProperty` from its JSON.
fn tool_property(j: &Json) -> Result<Value, String> {
    let what = "tool property";
    let Json::Object(o) = j else { return Err(format!("invalid {what}: expected an object, got {j}")) };
    let any_of = match o.get("anyOf") {
        None | Some(Json::Null) => Value::Slice(&T_TOOL_PROPERTY_SLICE, None),
        Some(Json::Array(a)) => Value::Slice(&T_TOOL_PROPERTY_SLICE, Some(Rc::new(a.iter().map(tool_property).collect::<Result<_, _>>()?))),
        Some(_) => return Err(format!("invalid {what}: `anyOf` must be a list")),
    };
    let ty = match o.get("type") {
        None | Some(Json::Null) => Value::Slice(&T_PROPERTY_TYPE, None),
        Some(Json::String(s)) => Value::Slice(&T_PROPERTY_TYPE, Some(Rc::new(vec![Value::str(s.as_str())]))),
        Some(Json::Array(_)) => match string_slice(o, "type", what)? {
            Value::Slice(_, items) => Value::Slice(&T_PROPERTY_TYPE, items),
            other => other,
        },
        Some(_) => return Err(format!("invalid {what}: `type` must be a string or a list of strings")),
    };
    let enum_ = match o.get("enum") {
        None | Some(Json::Null) => Value::Slice(&T_ANY_SLICE, None),
        Some(e @ Json::Array(_)) => from_json(e),
        Some(_) => return Err(format!("invalid {what}: `enum` must be a list")),
    };
    Ok(Value::Struct(
        &T_TOOL_PROPERTY,
        Rc::new(vec![
            any_of,
            ty,
            any_field(o, "items"),
            Value::str(str_field(o, "description", what)?),
            enum_,
            props_ptr(o.get("properties"))?,
            string_slice(o, "required", what)?,
        ]),
    ))
}

/// `*api.ToolPropertiesMap`: nil when absent.
fn props_ptr(j: Option<&Json>) -> Result<Value, String> {
    match j {
        None | Some(Json::Null) => Ok(Value::Ptr(&T_PROPS_MAP_PTR, None)),
        Some(Json::Object(o)) => {
            let entries = o.iter().map(|(k, v)| Ok((k.clone(), tool_property(v)?))).collect::<Result<Vec<_>, String>>()?;
            Ok(Value::Ptr(&T_PROPS_MAP_PTR, Some(Rc::new(Value::Props(Rc::new(entries))))))
        }
        Some(_) => Err("invalid tool: `properties` must be an object".into()),
    }
}

/// `convertToolsForTemplate`: the request's tools as `template.templateTools`.
fn tools_value(tools: Option<&Json>) -> Result<Value, String> {
    let Some(tools) = tools.filter(|t| !t.is_null()) else { return Ok(Value::Slice(&T_TOOLS, None)) };
    let Json::Array(list) = tools else { return Err("invalid tools: expected a list".into()) };
    let mut out = Vec::with_capacity(list.len());
    let empty = serde_json::Map::new();
    for t in list {
        let Json::Object(o) = t else { return Err("invalid tool: expected an object".into()) };
        let f = match o.get("function") {
            Some(Json::Object(f)) => f,
            None | Some(Json::Null) => &empty,
            Some(_) => return Err("invalid tool: `function` must be an object".into()),
        };
        let p = match f.get("parameters") {
            Some(Json::Object(p)) => p,
            None | Some(Json::Null) => &empty,
            Some(_) => return Err("invalid tool: `parameters` must be an object".into()),
        };
        let properties = match props_ptr(p.get("properties"))? {
            Value::Ptr(_, Some(inner)) => match &*inner {
                Value::Props(entries) => Value::Map(&T_PROPERTIES, Some(Rc::new(entries.iter().cloned().collect::<BTreeMap<_, _>>()))),
                _ => Value::Map(&T_PROPERTIES, None),
            },
            _ => Value::Map(&T_PROPERTIES, None),
        };
        let params = Value::Struct(
            &T_TOOL_PARAMS,
            Rc::new(vec![
                Value::str(str_field(p, "type", "tool parameters")?),
                any_field(p, "$defs"),
                any_field(p, "items"),
                string_slice(p, "required", "tool parameters")?,
                properties,
            ]),
        );
        let function = Value::Struct(
            &T_TOOL_FUNCTION,
            Rc::new(vec![Value::str(str_field(f, "name", "tool")?), Value::str(str_field(f, "description", "tool")?), params]),
        );
        out.push(Value::Struct(&T_TOOL, Rc::new(vec![Value::str(str_field(o, "type", "tool")?), any_field(o, "items"), function])));
    }
    Ok(Value::Slice(&T_TOOLS, Some(Rc::new(out))))
}

/// `convertMessagesForTemplate`.
fn messages_value(msgs: &[OllamaMessage]) -> Value {
    if msgs.is_empty() {
        return Value::Slice(&T_MESSAGES, None);
    }
    let items = msgs
        .iter()
        .map(|m| {
            let calls = if m.tool_calls.is_empty() {
                Value::Slice(&T_TOOL_CALLS, None)
            } else {
                Value::Slice(
                    &T_TOOL_CALLS,
                    Some(Rc::new(
                        m.tool_calls
                            .iter()
                            .map(|c| {
                                let args = match &c.arguments {
                                    Some(Json::Object(o)) => Value::Map(
                                        &T_ARGS,
                                        Some(Rc::new(o.iter().map(|(k, v)| (k.clone(), Value::iface(from_json(v)))).collect())),
                                    ),
                                    _ => Value::Map(&T_ARGS, None),
                                };
                                let f = Value::Struct(
                                    &T_TOOL_CALL_FUNCTION,
                                    Rc::new(vec![Value::Int(c.index), Value::str(c.name.as_str()), args]),
                                );
                                Value::Struct(&T_TOOL_CALL, Rc::new(vec![Value::str(c.id.as_str()), f]))
                            })
                            .collect(),
                    )),
                )
            };
            let s = Value::Struct(
                &T_MESSAGE,
                Rc::new(vec![
                    Value::str(m.role.as_str()),
                    Value::str(m.content.as_str()),
                    Value::str(m.thinking.as_str()),
                    Value::Slice(&T_IMAGES, None),
                    calls,
                    Value::str(m.tool_name.as_str()),
                    Value::str(m.tool_call_id.as_str()),
                ]),
            );
            Value::Ptr(&T_MESSAGE_PTR, Some(Rc::new(s)))
        })
        .collect();
    Value::Slice(&T_MESSAGES, Some(Rc::new(items)))
}

/// Ollama's `collate`: the joined system prompt and the merged messages.
pub fn collate(msgs: &[OllamaMessage]) -> (String, Vec<OllamaMessage>) {
    let mut system = Vec::new();
    let mut out: Vec<OllamaMessage> = Vec::new();
    for m in msgs {
        if m.role == "system" {
            system.push(m.content.clone());
        }
        match out.last_mut() {
            Some(last) if last.role == m.role && m.role != "tool" => {
                last.content.push_str("\n\n");
                last.content.push_str(&m.content);
            }
            _ => out.push(m.clone()),
        }
    }
    (system.join("\n\n"), out)
}

/// A `map[string]any` of the given entries.
fn data_map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(&T_ANY_MAP, Some(Rc::new(entries.into_iter().map(|(k, v)| (k.to_string(), Value::iface(v))).collect())))
}

/// Ollama's `Identifiers` over one node: field and variable names (to decide the mode).
fn identifiers(n: &Node, out: &mut Vec<String>) -> Result<(), String> {
    match n {
        Node::Template { pipe: None, .. } => Err("undefined template specified".into()),
        Node::Template { pipe: Some(p), .. } | Node::Action { pipe: p, .. } => {
            pipe_identifiers(p, out);
            Ok(())
        }
        Node::If(b) | Node::Range(b) | Node::With(b) => {
            pipe_identifiers(&b.pipe, out);
            for n in b.list.nodes.iter().chain(b.else_list.iter().flat_map(|l| l.nodes.iter())) {
                identifiers(n, out)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn pipe_identifiers(p: &Pipe, out: &mut Vec<String>) {
    for c in &p.cmds {
        for a in &c.args {
            match a {
                Arg::Field { ident, .. } | Arg::Variable { ident, .. } => out.extend(ident.iter().cloned()),
                Arg::Pipe(inner) => pipe_identifiers(inner, out),
                _ => {}
            }
        }
    }
}

/// `{{ .Response }}` as Ollama appends it (position 0, no source).
fn response_node() -> Node {
    let field = Arg::Field { pos: 0, ident: vec!["Response".into()] };
    Node::Action {
        pos: 0,
        pipe: Pipe { pos: 0, is_assign: false, decl: vec![], cmds: vec![super::node::Command { pos: 0, args: vec![field] }] },
    }
}

/// Ollama's `deleteNode` with its predicate "everything after the first `.Response` field".
struct Cutter {
    cut: bool,
}

const CUT_PANIC: &str =
    "template: cannot cut the template after .Response: it is inside a branch that has an {{else}} (Ollama fails on this template too)";

impl Cutter {
    fn pred_arg(&mut self, a: &Arg) -> bool {
        if let Arg::Field { ident, .. } = a {
            if ident.iter().any(|i| i == "Response") {
                self.cut = true;
                return false;
            }
        }
        self.cut
    }

    fn list(&mut self, l: &List) -> Result<Option<List>, String> {
        if self.cut {
            return Ok(None);
        }
        let mut nodes = Vec::new();
        for n in &l.nodes {
            if let Some(n) = self.node(n)? {
                nodes.push(n);
            }
        }
        Ok(Some(List { pos: l.pos, nodes }))
    }

    fn branch(&mut self, b: &Branch) -> Result<Branch, String> {
        // Go asserts the walked lists are non-nil; a cut before one of them panics there.
        let list = self.list(&b.list)?.ok_or(CUT_PANIC)?;
        let else_list = match &b.else_list {
            Some(e) => Some(self.list(e)?.ok_or(CUT_PANIC)?),
            None => None,
        };
        Ok(Branch { pos: b.pos, pipe: b.pipe.clone(), list, else_list })
    }

    fn pipe(&mut self, p: &Pipe) -> Result<Option<Pipe>, String> {
        if self.cut {
            return Ok(None);
        }
        let mut cmds = Vec::new();
        for c in &p.cmds {
            let mut args = Vec::new();
            for a in &c.args {
                let keep = match a {
                    Arg::Pipe(inner) => {
                        if self.cut {
                            None
                        } else {
                            self.pipe(inner)?.map(|p| Arg::Pipe(Box::new(p)))
                        }
                    }
                    other => (!self.pred_arg(other)).then(|| other.clone()),
                };
                if let Some(a) = keep {
                    args.push(a);
                }
            }
            if args.is_empty() {
                return Ok(None);
            }
            cmds.push(super::node::Command { pos: c.pos, args });
        }
        if cmds.is_empty() {
            return Ok(None);
        }
        Ok(Some(Pipe { pos: p.pos, is_assign: p.is_assign, decl: p.decl.clone(), cmds }))
    }

    fn node(&mut self, n: &Node) -> Result<Option<Node>, String> {
        if self.cut {
            return Ok(None);
        }
        Ok(Some(match n {
            Node::If(b) => Node::If(self.branch(b)?),
            Node::With(b) => Node::With(self.branch(b)?),
            Node::Range(b) => Node::Range(self.branch(b)?),
            Node::Action { pos, pipe } => match self.pipe(pipe)? {
                Some(p) => Node::Action { pos: *pos, pipe: p },
                None => return Ok(None),
            },
            other => other.clone(),
        }))
    }
}

impl OllamaTemplate {
    /// Ollama's `template.Parse`.
    pub fn parse(source: &str) -> Result<Self, GoTemplateError> {
        let mut trees = Parser::parse("", source).map_err(GoTemplateError::parse)?;
        let mut t = OllamaTemplate { raw: source.to_string(), trees: Trees::default(), vars: Vec::new() };
        let mut names = Vec::new();
        for tree in trees.trees.values() {
            for n in &tree.nodes {
                identifiers(n, &mut names).map_err(GoTemplateError::parse)?;
            }
        }
        let mut vars: Vec<String> = names.iter().map(|n| n.to_lowercase()).collect();
        vars.sort();
        vars.dedup();
        if !vars.iter().any(|v| v == "messages" || v == "response") {
            if let Some(root) = trees.trees.get_mut("") {
                root.nodes.push(response_node());
            }
            vars.push("response".into());
            vars.sort();
        }
        t.trees = trees;
        t.vars = vars;
        Ok(t)
    }

    /// The source as given (what `/api/show` returns).
    pub fn source(&self) -> &str {
        &self.raw
    }

    /// The identifiers the template uses, lower-cased and sorted (Ollama's `Vars`).
    pub fn vars(&self) -> &[String] {
        &self.vars
    }

    /// Whether the template renders fill-in-the-middle prompts (uses `.Suffix`).
    pub fn uses_suffix(&self) -> bool {
        self.vars.iter().any(|v| v == "suffix")
    }

    /// One execution of `root`, appending to `out` and drawing on `fuel` (shared by the
    /// renders of one legacy prompt).
    fn run(
        &self,
        root: &List,
        data: Value,
        full: bool,
        opts: &ExecOptions,
        out: &mut String,
        fuel: &mut u64,
    ) -> Result<(), GoTemplateError> {
        let mut sh = Shared {
            trees: &self.trees,
            defined: full,
            text: &self.raw,
            ollama_funcs: full,
            missing_zero: full,
            ctx: FuncCtx { today: opts.today },
            limits: opts.limits,
            fuel: *fuel,
            out: std::mem::take(out),
        };
        let r = exec::execute(&mut sh, "", root, data);
        *out = sh.out;
        *fuel = sh.fuel;
        r
    }

    /// Ollama's `Template.Execute`.
    pub fn execute(&self, v: &OllamaValues<'_>, opts: &ExecOptions) -> Result<String, GoTemplateError> {
        let empty = List { pos: 0, nodes: Vec::new() };
        let root = self.trees.trees.get("").unwrap_or(&empty);
        let think = |mut e: Vec<(&'static str, Value)>| {
            e.push(("Think", Value::Bool(v.think)));
            e.push(("ThinkLevel", Value::str(v.think_level.as_str())));
            e.push(("IsThinkSet", Value::Bool(v.is_think_set)));
            e
        };
        let mut out = String::new();
        let mut fuel = opts.limits.fuel;
        let (system, messages) = collate(&v.messages);
        if !v.prompt.is_empty() && !v.suffix.is_empty() {
            let data = data_map(think(vec![
                ("Prompt", Value::str(v.prompt.as_str())),
                ("Suffix", Value::str(v.suffix.as_str())),
                ("Response", Value::str("")),
            ]));
            self.run(root, data, true, opts, &mut out, &mut fuel)?;
            return Ok(out);
        }
        if self.vars.iter().any(|x| x == "messages") {
            let tools = tools_value(v.tools).map_err(GoTemplateError::data)?;
            let data = data_map(think(vec![
                ("System", Value::str(system)),
                ("Messages", messages_value(&messages)),
                ("Tools", tools),
                ("Response", Value::str("")),
            ]));
            self.run(root, data, true, opts, &mut out, &mut fuel)?;
            return Ok(out);
        }
        // Legacy: one render per exchange, the last with the template cut after .Response.
        let (mut system, mut prompt, mut response) = (String::new(), String::new(), String::new());
        let legacy = |s: &str, p: &str, r: &str| {
            data_map(think(vec![("System", Value::str(s)), ("Prompt", Value::str(p)), ("Response", Value::str(r))]))
        };
        for m in &messages {
            let flush = match m.role.as_str() {
                "system" => !prompt.is_empty() || !response.is_empty(),
                "user" => !response.is_empty(),
                _ => false,
            };
            if flush {
                self.run(root, legacy(&system, &prompt, &response), true, opts, &mut out, &mut fuel)?;
                system.clear();
                prompt.clear();
                response.clear();
            }
            match m.role.as_str() {
                "system" => system = m.content.clone(),
                "user" => prompt = m.content.clone(),
                "assistant" => response = m.content.clone(),
                _ => {}
            }
        }
        let cut = Cutter { cut: false }.list(root).map_err(GoTemplateError::exec)?.unwrap_or(empty);
        self.run(&cut, legacy(&system, &prompt, &response), false, opts, &mut out, &mut fuel)?;
        Ok(out)
    }
}
