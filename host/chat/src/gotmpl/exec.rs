//! Executing a parsed Go template: the walk over the tree, pipelines, field chains, variables,
//! function calls and printing, with Go's error messages and error positions.
//!
//! Invariants (as `text/template/exec.go`):
//! * errors read `template: NAME:LINE:COL: executing "TEMPLATE" at <NODE>: MESSAGE`, where NODE
//!   is the last node the executor moved to (Go's `state.at`), replayed call for call;
//! * variables are scoped like Go's: `if`/`with`/`range` bodies pop what they declared, a range
//!   iteration pops its body's variables, `{{template}}` starts with only `$`;
//! * missing map keys give the map's zero value (Ollama's `missingkey=zero`) or, for the
//!   funcs-less legacy final render, Go's default invalid value;
//! * every execution is bounded: [`Limits::fuel`] steps, [`Limits::max_output`] bytes (also per
//!   string a function builds), [`MAX_EXEC_DEPTH`] nested bodies and template calls (Go allows
//!   100,000 template calls on its growable stacks; we refuse deeper ones with Go's message).
//!
//! Modelled on Go's `exec.go`.

use super::funcs::{self, call_builtin, find_method, FuncCtx, Method, Param, Sig};
use super::node::{Arg, Branch, Command, List, Node, Pipe};
use super::parse::Trees;
use super::value::{elem_type, zero, Kind, Value};
use super::{GoTemplateError, Limits};

/// Deepest nesting of bodies plus template calls during execution.
pub const MAX_EXEC_DEPTH: usize = 200;

/// Where the executor is (Go's `state.node`), for error messages.
#[derive(Clone, Copy)]
enum At<'t> {
    Node(&'t Node),
    List(&'t List),
    Pipe(&'t Pipe),
    Cmd(&'t Command),
    Arg(&'t Arg),
}

impl At<'_> {
    fn pos(&self) -> usize {
        match self {
            At::Node(n) => n.pos(),
            At::List(l) => l.pos,
            At::Pipe(p) => p.pos,
            At::Cmd(c) => c.pos,
            At::Arg(a) => a.pos(),
        }
    }

    fn context(&self) -> String {
        match self {
            At::Node(n) => n.to_string(),
            At::List(l) => l.to_string(),
            At::Pipe(p) => p.to_string(),
            At::Cmd(c) => c.to_string(),
            At::Arg(a) => a.to_string(),
        }
    }
}

/// Why a walk stopped early.
pub enum Flow {
    Break,
    Continue,
    Err(GoTemplateError),
}

type R<T> = Result<T, Flow>;

/// What every template of one execution shares.
pub struct Shared<'t> {
    pub trees: &'t Trees,
    /// Whether `{{template}}` may call the set's defined templates.
    pub defined: bool,
    pub text: &'t str,
    /// Ollama's functions available (false in the legacy final render).
    pub ollama_funcs: bool,
    /// `missingkey=zero` (else Go's default: a missing key is an invalid value).
    pub missing_zero: bool,
    pub ctx: FuncCtx,
    pub limits: Limits,
    pub fuel: u64,
    pub out: String,
}

pub struct State<'s, 't> {
    sh: &'s mut Shared<'t>,
    name: &'t str,
    vars: Vec<(String, Value)>,
    node: Option<At<'t>>,
    depth: usize,
}

/// Executes `root` (the template named `name`) with `dot` as data.
pub fn execute<'t>(sh: &mut Shared<'t>, name: &'t str, root: &'t List, dot: Value) -> Result<(), GoTemplateError> {
    let mut s = State { sh, name, vars: vec![("$".into(), dot.clone())], node: None, depth: 0 };
    match s.walk_list(&dot, root) {
        Ok(()) => Ok(()),
        Err(Flow::Err(e)) => Err(e),
        // The parser only allows break/continue inside range, which consumes them.
        Err(Flow::Break | Flow::Continue) => Ok(()),
    }
}

impl<'s, 't> State<'s, 't> {
    fn at(&mut self, at: At<'t>) {
        self.node = Some(at);
    }

    fn errorf(&self, msg: impl std::fmt::Display) -> Flow {
        let name = super::fmt::quote(self.name);
        let message = match &self.node {
            None => format!("template: {}: {msg}", self.name),
            Some(at) => {
                let text = &self.sh.text[..at.pos().min(self.sh.text.len())];
                let line = 1 + text.matches('\n').count();
                let col = match text.rfind('\n') {
                    Some(i) => text.len() - (i + 1),
                    None => text.len(),
                };
                format!("template: :{line}:{col}: executing {name} at <{}>: {msg}", at.context())
            }
        };
        Flow::Err(GoTemplateError::exec(message))
    }

    fn burn(&mut self) -> R<()> {
        if self.sh.fuel == 0 {
            return Err(Flow::Err(GoTemplateError::limit(format!(
                "template too complex: more than {} execution steps",
                self.sh.limits.fuel
            ))));
        }
        self.sh.fuel -= 1;
        Ok(())
    }

    fn write(&mut self, s: &str) -> R<()> {
        if self.sh.out.len() + s.len() > self.sh.limits.max_output {
            return Err(Flow::Err(GoTemplateError::limit(format!("template output exceeds {} bytes", self.sh.limits.max_output))));
        }
        self.sh.out.push_str(s);
        Ok(())
    }

    fn var_value(&self, name: &str) -> R<Value> {
        match self.vars.iter().rev().find(|(n, _)| n == name) {
            Some((_, v)) => Ok(v.clone()),
            None => Err(self.errorf(format!("undefined variable: {name}"))),
        }
    }

    fn set_var(&mut self, name: &str, value: Value) -> R<()> {
        match self.vars.iter_mut().rev().find(|(n, _)| n == name) {
            Some(slot) => {
                slot.1 = value;
                Ok(())
            }
            None => Err(self.errorf(format!("undefined variable: {name}"))),
        }
    }

    fn set_top_var(&mut self, n: usize, value: Value) {
        let len = self.vars.len();
        if let Some(slot) = len.checked_sub(n).and_then(|i| self.vars.get_mut(i)) {
            slot.1 = value;
        }
    }

    fn nest(&mut self) -> R<()> {
        if self.depth >= MAX_EXEC_DEPTH {
            return Err(self.errorf(format!("exceeded maximum template depth ({MAX_EXEC_DEPTH})")));
        }
        self.depth += 1;
        Ok(())
    }

    fn walk_list(&mut self, dot: &Value, list: &'t List) -> R<()> {
        self.at(At::List(list));
        for n in &list.nodes {
            self.walk(dot, n)?;
        }
        Ok(())
    }

    fn walk(&mut self, dot: &Value, node: &'t Node) -> R<()> {
        self.burn()?;
        self.at(At::Node(node));
        match node {
            Node::Action { pipe, .. } => {
                let val = self.eval_pipeline(dot, Some(pipe))?;
                if pipe.decl.is_empty() {
                    self.print_value(node, &val)?;
                }
                Ok(())
            }
            Node::Break { .. } => Err(Flow::Break),
            Node::Continue { .. } => Err(Flow::Continue),
            Node::If(b) => self.walk_if_or_with(false, dot, b),
            Node::With(b) => self.walk_if_or_with(true, dot, b),
            Node::Range(b) => self.walk_range(dot, node, b),
            Node::Template { name, pipe, .. } => self.walk_template(dot, node, name, pipe.as_ref()),
            Node::Text { text, .. } => self.write(text),
        }
    }

    fn walk_body(&mut self, dot: &Value, list: &'t List) -> R<()> {
        self.nest()?;
        let r = self.walk_list(dot, list);
        self.depth -= 1;
        r
    }

    fn walk_if_or_with(&mut self, with: bool, dot: &Value, b: &'t Branch) -> R<()> {
        let mark = self.vars.len();
        let r = (|| {
            let val = self.eval_pipeline(dot, Some(&b.pipe))?;
            if val.indirect_interface().truth() {
                if with {
                    self.walk_body(&val, &b.list)
                } else {
                    self.walk_body(dot, &b.list)
                }
            } else if let Some(e) = &b.else_list {
                self.walk_body(dot, e)
            } else {
                Ok(())
            }
        })();
        self.vars.truncate(mark);
        r
    }

    fn walk_range(&mut self, dot: &Value, node: &'t Node, r: &'t Branch) -> R<()> {
        self.at(At::Node(node));
        let mark0 = self.vars.len();
        let result = self.range_inner(dot, r);
        self.vars.truncate(mark0);
        match result {
            Err(Flow::Break) => Ok(()),
            other => other,
        }
    }

    fn one_iteration(&mut self, r: &'t Branch, mark: usize, index: Value, elem: Value) -> R<()> {
        let decl = &r.pipe.decl;
        if !decl.is_empty() {
            if r.pipe.is_assign {
                if decl.len() > 1 {
                    self.set_var(&decl[0].1, index.clone())?;
                } else {
                    self.set_var(&decl[0].1, elem.clone())?;
                }
            } else {
                self.set_top_var(1, elem.clone());
            }
        }
        if decl.len() > 1 {
            if r.pipe.is_assign {
                self.set_var(&decl[1].1, elem.clone())?;
            } else {
                self.set_top_var(2, index);
            }
        }
        let res = self.walk_body(&elem, &r.list);
        self.vars.truncate(mark);
        match res {
            Err(Flow::Continue) => Ok(()),
            other => other,
        }
    }

    fn range_inner(&mut self, dot: &Value, r: &'t Branch) -> R<()> {
        let (val, _) = self.eval_pipeline(dot, Some(&r.pipe))?.indirect();
        let mark = self.vars.len();
        match &val {
            Value::Int(n) => {
                if r.pipe.decl.len() > 1 {
                    return Err(self.errorf(format!(
                        "can't use {} to iterate over more than one variable",
                        super::fmt::sprint(std::slice::from_ref(&val))
                    )));
                }
                if *n > 0 {
                    for i in 0..*n {
                        self.burn()?;
                        self.one_iteration(r, mark, Value::Invalid, Value::Int(i))?;
                    }
                    return Ok(());
                }
            }
            Value::Slice(_, Some(items)) if !items.is_empty() => {
                for (i, item) in items.iter().enumerate() {
                    self.one_iteration(r, mark, Value::Int(i as i64), item.clone())?;
                }
                return Ok(());
            }
            Value::Map(_, Some(m)) if !m.is_empty() => {
                for (k, v) in m.iter() {
                    self.one_iteration(r, mark, Value::str(k.as_str()), v.clone())?;
                }
                return Ok(());
            }
            Value::Slice(..) | Value::Map(..) | Value::Invalid => {}
            other => {
                return Err(self.errorf(format!("range can't iterate over {}", super::fmt::sprint(std::slice::from_ref(other)))));
            }
        }
        match &r.else_list {
            Some(e) => self.walk_body(dot, e),
            None => Ok(()),
        }
    }

    fn walk_template(&mut self, dot: &Value, node: &'t Node, name: &'t str, pipe: Option<&'t Pipe>) -> R<()> {
        self.at(At::Node(node));
        let tree = if self.sh.defined { self.sh.trees.trees.get(name) } else { None };
        let Some(tree) = tree else {
            return Err(self.errorf(format!("template {} not defined", super::fmt::quote(name))));
        };
        if self.depth >= MAX_EXEC_DEPTH {
            return Err(self.errorf(format!("exceeded maximum template depth ({MAX_EXEC_DEPTH})")));
        }
        let new_dot = self.eval_pipeline(dot, pipe)?;
        let mut inner =
            State { sh: &mut *self.sh, name, vars: vec![("$".into(), new_dot.clone())], node: self.node, depth: self.depth + 1 };
        inner.walk_list(&new_dot, tree)
    }

    fn eval_pipeline(&mut self, dot: &Value, pipe: Option<&'t Pipe>) -> R<Value> {
        let Some(pipe) = pipe else { return Ok(Value::Invalid) };
        self.at(At::Pipe(pipe));
        let mut value: Option<Value> = None;
        for cmd in &pipe.cmds {
            value = Some(self.eval_command(dot, cmd, value)?.dig());
        }
        let value = value.unwrap_or(Value::Invalid);
        for (_, v) in &pipe.decl {
            if pipe.is_assign {
                self.set_var(v, value.clone())?;
            } else {
                self.vars.push((v.clone(), value.clone()));
            }
        }
        Ok(value)
    }

    fn not_a_function(&self, args: &'t [Arg], final_: &Option<Value>) -> R<()> {
        if args.len() > 1 || final_.is_some() {
            return Err(self.errorf(format!("can't give argument to non-function {}", args[0])));
        }
        Ok(())
    }

    fn eval_command(&mut self, dot: &Value, cmd: &'t Command, final_: Option<Value>) -> R<Value> {
        self.burn()?;
        let first = &cmd.args[0];
        match first {
            Arg::Field { .. } => return self.eval_field_node(dot, first, Some(&cmd.args), final_),
            Arg::Chain { .. } => return self.eval_chain_node(dot, first, Some(&cmd.args), final_),
            Arg::Identifier { name, .. } => return self.eval_function(dot, first, name, At::Cmd(cmd), Some(&cmd.args), final_),
            Arg::Pipe(p) => {
                self.not_a_function(&cmd.args, &final_)?;
                return self.eval_pipeline(dot, Some(p));
            }
            Arg::Variable { .. } => return self.eval_variable_node(dot, first, Some(&cmd.args), final_),
            _ => {}
        }
        self.at(At::Arg(first));
        self.not_a_function(&cmd.args, &final_)?;
        match first {
            Arg::Bool { val, .. } => Ok(Value::Bool(*val)),
            Arg::Dot { .. } => Ok(dot.clone()),
            Arg::Nil { .. } => Err(self.errorf("nil is not a command")),
            Arg::Number { .. } => self.ideal_constant(first),
            Arg::String { text, .. } => Ok(Value::str(text.as_str())),
            _ => Err(self.errorf(format!("can't evaluate command {}", super::fmt::quote(&first.to_string())))),
        }
    }

    fn ideal_constant(&mut self, n: &'t Arg) -> R<Value> {
        self.at(At::Arg(n));
        let Arg::Number { num, .. } = n else { return Ok(Value::Invalid) };
        let t = &num.text;
        let hex_int = t.len() > 2 && t.starts_with('0') && matches!(t.as_bytes()[1], b'x' | b'X') && !t.contains(['p', 'P']);
        if num.is_complex {
            return Err(self.errorf(format!("complex constant {t} is not supported")));
        }
        if num.is_float && !hex_int && !t.starts_with('\'') && t.contains(['.', 'e', 'E', 'p', 'P']) {
            return Ok(Value::Float(num.float64));
        }
        if num.is_int {
            return Ok(Value::Int(num.int64));
        }
        if num.is_uint {
            return Err(self.errorf(format!("{t} overflows int")));
        }
        Ok(Value::Invalid)
    }

    fn eval_field_node(&mut self, dot: &Value, field: &'t Arg, args: Option<&'t [Arg]>, final_: Option<Value>) -> R<Value> {
        self.at(At::Arg(field));
        let Arg::Field { ident, .. } = field else { return Ok(Value::Invalid) };
        self.eval_field_chain(dot, dot.clone(), field, ident, args, final_)
    }

    fn eval_chain_node(&mut self, dot: &Value, chain: &'t Arg, args: Option<&'t [Arg]>, final_: Option<Value>) -> R<Value> {
        self.at(At::Arg(chain));
        let Arg::Chain { node, fields, .. } = chain else { return Ok(Value::Invalid) };
        if let Arg::Nil { .. } = node.as_ref() {
            return Err(self.errorf(format!("indirection through explicit nil in {chain}")));
        }
        let pipe = self.eval_arg(dot, None, node)?;
        self.eval_field_chain(dot, pipe, chain, fields, args, final_)
    }

    fn eval_variable_node(&mut self, dot: &Value, var: &'t Arg, args: Option<&'t [Arg]>, final_: Option<Value>) -> R<Value> {
        self.at(At::Arg(var));
        let Arg::Variable { ident, .. } = var else { return Ok(Value::Invalid) };
        let value = self.var_value(&ident[0])?;
        if ident.len() == 1 {
            if let Some(args) = args {
                self.not_a_function(args, &final_)?;
            } else if final_.is_some() {
                return Err(self.errorf(format!("can't give argument to non-function {var}")));
            }
            return Ok(value);
        }
        self.eval_field_chain(dot, value, var, &ident[1..], args, final_)
    }

    fn eval_field_chain(
        &mut self,
        dot: &Value,
        mut receiver: Value,
        node: &'t Arg,
        ident: &'t [String],
        args: Option<&'t [Arg]>,
        final_: Option<Value>,
    ) -> R<Value> {
        let n = ident.len();
        for name in &ident[..n - 1] {
            receiver = self.eval_field(dot, name, node, None, None, receiver)?;
        }
        self.eval_field(dot, &ident[n - 1], node, args, final_, receiver)
    }

    fn eval_field(
        &mut self,
        dot: &Value,
        name: &str,
        node: &'t Arg,
        args: Option<&'t [Arg]>,
        final_: Option<Value>,
        receiver: Value,
    ) -> R<Value> {
        if matches!(receiver, Value::Invalid) {
            return Ok(Value::Invalid);
        }
        let typ = receiver.type_name();
        let (recv, is_nil) = receiver.indirect();
        if matches!(recv, Value::Iface(_)) && is_nil {
            return Err(self.errorf(format!("nil pointer evaluating {typ}.{name}")));
        }
        if let Some(m) = find_method(&recv, name) {
            return self.eval_call(dot, Callee::Method(m, recv), At::Arg(node), name, args, final_);
        }
        let has_args = args.is_some_and(|a| a.len() > 1) || final_.is_some();
        match &recv {
            Value::Struct(..) => {
                if let Some((fields, vals)) = recv.struct_fields() {
                    if let Some(i) = fields.iter().position(|f| f.name == name) {
                        if has_args {
                            return Err(self.errorf(format!("{name} has arguments but cannot be invoked as function")));
                        }
                        return Ok(vals[i].clone());
                    }
                }
            }
            Value::Map(t, m) => {
                if has_args {
                    return Err(self.errorf(format!("{name} is not a method but has arguments")));
                }
                return Ok(match m.as_ref().and_then(|m| m.get(name)) {
                    Some(v) => v.clone(),
                    None if self.sh.missing_zero => elem_type(t).map_or(Value::Invalid, zero),
                    None => Value::Invalid,
                });
            }
            Value::Props(_) if name == "om" => {
                return Err(self.errorf(format!("{name} is an unexported field of struct type {typ}")));
            }
            Value::Ptr(t, None) => {
                let has_field = elem_type(t).is_some_and(|e| match e.kind {
                    Kind::Struct(fields) => fields.iter().any(|f| f.name == name),
                    Kind::OrderedProps => name == "om",
                    _ => true,
                });
                if has_field {
                    return Err(self.errorf(format!("nil pointer evaluating {typ}.{name}")));
                }
            }
            _ => {}
        }
        Err(self.errorf(format!("can't evaluate field {name} in type {typ}")))
    }

    fn eval_function(
        &mut self,
        dot: &Value,
        node: &'t Arg,
        name: &str,
        call_node: At<'t>,
        args: Option<&'t [Arg]>,
        final_: Option<Value>,
    ) -> R<Value> {
        self.at(At::Arg(node));
        if funcs::builtin_sig(name, self.sh.ollama_funcs).is_none() {
            return Err(self.errorf(format!("{} is not a defined function", super::fmt::quote(name))));
        }
        self.eval_call(dot, Callee::Builtin(name.to_string()), call_node, name, args, final_)
    }

    fn eval_call(
        &mut self,
        dot: &Value,
        fun: Callee,
        node: At<'t>,
        name: &str,
        args: Option<&'t [Arg]>,
        final_: Option<Value>,
    ) -> R<Value> {
        let args: &'t [Arg] = match args {
            Some(a) => &a[1..],
            None => &[],
        };
        let sig = match &fun {
            Callee::Builtin(n) => funcs::builtin_sig(n, self.sh.ollama_funcs).unwrap_or(Sig { fixed: &[], variadic: None }),
            Callee::Method(..) => Sig { fixed: &[], variadic: None },
        };
        let num_in = args.len() + usize::from(final_.is_some());
        let num_fixed = sig.fixed.len();
        if sig.variadic.is_some() {
            if num_in < num_fixed {
                return Err(self.errorf(format!("wrong number of args for {name}: want at least {num_fixed} got {}", args.len())));
            }
        } else if num_in != num_fixed {
            return Err(self.errorf(format!("wrong number of args for {name}: want {num_fixed} got {num_in}")));
        }
        if let Callee::Builtin(b) = &fun {
            if b == "and" || b == "or" {
                let or = b == "or";
                let mut v = Value::Invalid;
                for arg in args {
                    v = self.eval_arg(dot, Some(Param::Value), arg)?;
                    if v.indirect_interface().truth() == or {
                        return Ok(v);
                    }
                }
                if let Some(f) = final_ {
                    v = f;
                }
                return Ok(v);
            }
        }
        let mut argv = Vec::with_capacity(num_in);
        for (i, arg) in args.iter().enumerate() {
            let t = if i < num_fixed { sig.fixed[i] } else { sig.variadic.unwrap_or(Param::Any) };
            argv.push(self.eval_arg(dot, Some(t), arg)?);
        }
        if let Some(f) = final_.clone() {
            let t = if sig.variadic.is_some() && num_in > num_fixed { sig.variadic.unwrap_or(Param::Any) } else { sig.fixed[num_in - 1] };
            argv.push(self.validate_type(f, Some(t))?);
        }
        let result = match &fun {
            Callee::Method(m, recv) => funcs::call_method(*m, recv),
            Callee::Builtin(b) if b == "call" => {
                let callee = match args.first() {
                    Some(a) => a.to_string(),
                    None => reflect_value_string(final_.as_ref().unwrap_or(&Value::Invalid)),
                };
                funcs::call(&callee, &argv[0])
            }
            Callee::Builtin(b) => call_builtin(b, &argv, &self.sh.ctx),
        };
        match result {
            Ok(v) => {
                if let Value::Str(s) = &v {
                    if s.len() > self.sh.limits.max_output {
                        return Err(Flow::Err(GoTemplateError::limit(format!(
                            "template output exceeds {} bytes",
                            self.sh.limits.max_output
                        ))));
                    }
                }
                Ok(v)
            }
            Err(e) => {
                self.at(node);
                Err(self.errorf(format!("error calling {name}: {e}")))
            }
        }
    }

    fn validate_type(&self, value: Value, typ: Option<Param>) -> R<Value> {
        let Some(typ) = typ else { return Ok(value) };
        if matches!(value, Value::Invalid) {
            return match typ {
                Param::Value | Param::Any => Ok(Value::Invalid),
                Param::Str => Err(self.errorf("invalid value; expected string")),
            };
        }
        match typ {
            Param::Value | Param::Any => Ok(value),
            Param::Str => match value {
                Value::Str(_) => Ok(value),
                Value::Iface(Some(inner)) => match &*inner {
                    Value::Str(_) => Ok((*inner).clone()),
                    other => Err(self.errorf(format!("wrong type for value; expected string; got {}", other.type_name()))),
                },
                other => Err(self.errorf(format!("wrong type for value; expected string; got {}", other.type_name()))),
            },
        }
    }

    fn eval_arg(&mut self, dot: &Value, typ: Option<Param>, n: &'t Arg) -> R<Value> {
        self.at(At::Arg(n));
        match n {
            Arg::Dot { .. } => return self.validate_type(dot.clone(), typ),
            Arg::Nil { .. } => {
                return match typ {
                    Some(Param::Value) | Some(Param::Any) => Ok(Value::Invalid),
                    _ => Err(self.errorf(format!("cannot assign nil to {}", typ.map_or("<nil>", |t| t.type_name())))),
                };
            }
            Arg::Field { .. } => {
                let v = self.eval_field_node(dot, n, Some(std::slice::from_ref(n)), None)?;
                return self.validate_type(v, typ);
            }
            Arg::Variable { .. } => {
                let v = self.eval_variable_node(dot, n, None, None)?;
                return self.validate_type(v, typ);
            }
            Arg::Pipe(p) => {
                let v = self.eval_pipeline(dot, Some(p))?;
                return self.validate_type(v, typ);
            }
            Arg::Identifier { name, .. } => {
                let v = self.eval_function(dot, n, name, At::Arg(n), None, None)?;
                return self.validate_type(v, typ);
            }
            Arg::Chain { .. } => {
                let v = self.eval_chain_node(dot, n, None, None)?;
                return self.validate_type(v, typ);
            }
            _ => {}
        }
        match typ {
            Some(Param::Str) => match n {
                Arg::String { text, .. } => Ok(Value::str(text.as_str())),
                _ => Err(self.errorf(format!("expected string; found {n}"))),
            },
            _ => self.eval_empty_interface(dot, n),
        }
    }

    fn eval_empty_interface(&mut self, dot: &Value, n: &'t Arg) -> R<Value> {
        self.at(At::Arg(n));
        match n {
            Arg::Bool { val, .. } => Ok(Value::Bool(*val)),
            Arg::Dot { .. } => Ok(dot.clone()),
            Arg::Number { .. } => self.ideal_constant(n),
            Arg::String { text, .. } => Ok(Value::str(text.as_str())),
            _ => Err(self.errorf(format!("can't handle assignment of {n} to empty interface argument"))),
        }
    }

    /// Go's `printValue` of an action's result.
    fn print_value(&mut self, node: &'t Node, v: &Value) -> R<()> {
        self.at(At::Node(node));
        let v = match v {
            Value::Ptr(..) => v.indirect().0,
            other => other.clone(),
        };
        let s = match v {
            Value::Invalid => "<no value>".to_string(),
            Value::Ptr(_, None) => "<nil>".to_string(),
            other => super::fmt::sprint(&[other]),
        };
        self.write(&s)
    }
}

/// What `eval_call` calls.
enum Callee {
    Builtin(String),
    Method(Method, Value),
}

/// `reflect.Value.String()`: the string itself, else `<T Value>`.
fn reflect_value_string(v: &Value) -> String {
    match v {
        Value::Str(s) => s.to_string(),
        Value::Invalid => "<invalid Value>".into(),
        other => format!("<{} Value>", other.type_name()),
    }
}
