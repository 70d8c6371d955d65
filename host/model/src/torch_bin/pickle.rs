//! A restricted unpickler for the `data.pkl` of a `torch.save` checkpoint: it interprets the
//! pickle opcodes a state dict uses and turns the result into tensor descriptions
//! ([`TensorSpec`]); it never calls anything.
//!
//! A pickle is a program for a stack machine whose `GLOBAL` / `STACK_GLOBAL` opcodes import any
//! Python object and whose `REDUCE` calls it: `posix.system` or `builtins.eval` in a `.bin`
//! runs code on `torch.load` (without `weights_only`). Here every global is matched against an
//! allow-list at the opcode that names it, before anything it could apply to exists; any other
//! name is [`ModelError::RefusedGlobal`] naming `module.name`, and nothing of the file is used.
//! The allowed names are not Python objects either: each is a tag that `REDUCE` interprets.
//!
//! | global | REDUCE with | gives |
//! |---|---|---|
//! | `collections.OrderedDict` | `()` | an empty dict |
//! | `torch._utils._rebuild_tensor` | `(storage, offset, size, stride)` | a tensor (storage's dtype) |
//! | `torch._utils._rebuild_tensor_v2` | `(storage, offset, size, stride, requires_grad, hooks[, metadata])` | a tensor (storage's dtype) |
//! | `torch._utils._rebuild_tensor_v3` | `(storage, offset, size, stride, requires_grad, hooks, dtype[, metadata])` | a tensor of `dtype` |
//! | `torch._utils._rebuild_parameter[_with_state]` | `(tensor, requires_grad, hooks[, state])` | the tensor |
//! | `torch.<Type>Storage`, `torch.storage.UntypedStorage` | (only inside a persistent id) | a storage's element type |
//! | `torch.<dtype>` (`float32`, `float8_e4m3fn`, ...) | (only as v3's `dtype`) | a dtype |
//!
//! `BINPERSID` takes torch's persistent id `('storage', storage_type, key, location, numel)`
//! and stands for the zip record `data/<key>`; `BUILD` is accepted on dicts only (an
//! `OrderedDict`'s `_metadata` attribute) and its state is dropped. `hooks` must be empty, and
//! `metadata` (conjugate / negative bits) absent or empty.
//!
//! Bounds on hostile input: the machine is a loop (no recursion); at most [`MAX_VALUES`] values
//! are pushed or memoized in all, strings are slices of the input, tuples share their elements
//! (`Rc`) and nest at most [`MAX_DEPTH`] deep (dropping a deeper chain would recurse), dicts
//! and lists live in an arena addressed by index (so no `Rc` cycle can leak), and the stack
//! below a `MARK` cannot be popped (Python keeps it on a separate meta-stack). Every read is
//! checked against the input's length: malformed input is an error, never a panic.
//!
//! Modelled on CPython's `Lib/pickle.py` (`_Unpickler`), `pickletools`' opcode table and torch's
//! `torch/_weights_only_unpickler.py` (the same idea in Python, with a larger allow-list).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::hf::HfDtype;
use crate::ModelError;

/// Values pushed on the stack plus values memoized, over the whole pickle. A state dict costs
/// about 30 per tensor (protocol 2), so this admits ~140k tensors; it caps the unpickler's
/// memory at a few hundred MB whatever the input.
pub const MAX_VALUES: usize = 1 << 22;
/// Deepest tuple nesting accepted (a state dict needs 3: args, size/stride, persistent id).
pub const MAX_DEPTH: u32 = 64;
/// Most dimensions a tensor may have (torch's own limit).
pub const MAX_RANK: usize = 64;

/// An element type a checkpoint can hold: torch's dtypes that safetensors also names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchDtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    F8E4M3,
    F8E5M2,
    F8E4M3Fnuz,
    F8E5M2Fnuz,
    F8E8M0,
    U16,
    U32,
    U64,
    C64,
}

impl TorchDtype {
    /// From a legacy storage class name (`FloatStorage`), as `torch.save` pickles it.
    fn from_storage_name(name: &str) -> Option<TorchDtype> {
        use TorchDtype::*;
        Some(match name {
            "DoubleStorage" => F64,
            "FloatStorage" => F32,
            "HalfStorage" => F16,
            "BFloat16Storage" => BF16,
            "LongStorage" => I64,
            "IntStorage" => I32,
            "ShortStorage" => I16,
            "CharStorage" => I8,
            "ByteStorage" => U8,
            "BoolStorage" => Bool,
            "ComplexFloatStorage" => C64,
            _ => return None,
        })
    }

    /// From a `torch.<name>` dtype as pickled (its canonical name).
    fn from_dtype_name(name: &str) -> Option<TorchDtype> {
        use TorchDtype::*;
        Some(match name {
            "float64" => F64,
            "float32" => F32,
            "float16" => F16,
            "bfloat16" => BF16,
            "int64" => I64,
            "int32" => I32,
            "int16" => I16,
            "int8" => I8,
            "uint8" => U8,
            "bool" => Bool,
            "float8_e4m3fn" => F8E4M3,
            "float8_e5m2" => F8E5M2,
            "float8_e4m3fnuz" => F8E4M3Fnuz,
            "float8_e5m2fnuz" => F8E5M2Fnuz,
            "float8_e8m0fnu" => F8E8M0,
            "uint16" => U16,
            "uint32" => U32,
            "uint64" => U64,
            "complex64" => C64,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        use TorchDtype::*;
        match self {
            F64 | I64 | U64 | C64 => 8,
            F32 | I32 | U32 => 4,
            F16 | BF16 | I16 | U16 => 2,
            I8 | U8 | Bool | F8E4M3 | F8E5M2 | F8E4M3Fnuz | F8E5M2Fnuz | F8E8M0 => 1,
        }
    }

    /// Bytes reversed by a byte-order swap: a complex number is two floats.
    pub fn swap_unit(self) -> u64 {
        if self == TorchDtype::C64 {
            4
        } else {
            self.size()
        }
    }

    /// The safetensors dtype of the same name.
    pub fn hf(self) -> HfDtype {
        use TorchDtype::*;
        match self {
            F64 => HfDtype::F64,
            F32 => HfDtype::F32,
            F16 => HfDtype::F16,
            BF16 => HfDtype::BF16,
            I64 => HfDtype::I64,
            I32 => HfDtype::I32,
            I16 => HfDtype::I16,
            I8 => HfDtype::I8,
            U8 => HfDtype::U8,
            Bool => HfDtype::Bool,
            F8E4M3 => HfDtype::F8E4M3,
            F8E5M2 => HfDtype::F8E5M2,
            F8E4M3Fnuz => HfDtype::Other("F8_E4M3FNUZ".into()),
            F8E5M2Fnuz => HfDtype::Other("F8_E5M2FNUZ".into()),
            F8E8M0 => HfDtype::Other("F8_E8M0".into()),
            U16 => HfDtype::Other("U16".into()),
            U32 => HfDtype::Other("U32".into()),
            U64 => HfDtype::Other("U64".into()),
            C64 => HfDtype::Other("C64".into()),
        }
    }
}

/// The element type of a storage: typed (legacy `FloatStorage` ..., `numel` counts elements) or
/// untyped (`torch.storage.UntypedStorage`, `numel` counts bytes; written for dtypes without a
/// legacy storage class, with `_rebuild_tensor_v3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    Typed(TorchDtype),
    Untyped,
}

impl StorageKind {
    pub fn element_size(self) -> u64 {
        match self {
            StorageKind::Typed(d) => d.size(),
            StorageKind::Untyped => 1,
        }
    }
}

/// A storage named by a persistent id: the zip record `data/<key>` holding `numel` elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    pub key: String,
    pub kind: StorageKind,
    pub numel: u64,
}

/// A tensor as the pickle describes it: a strided view of a storage. Offset and strides count
/// elements of `dtype`; nothing here is checked against the storage yet (`torch_bin` does that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub storage: StorageRef,
    pub dtype: TorchDtype,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub strides: Vec<u64>,
}

/// What an allowed global stands for (see the module header's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    RebuildParameterWithState,
    Storage(StorageKind),
    Dtype(TorchDtype),
}

impl Global {
    fn lookup(module: &str, name: &str) -> Option<Global> {
        Some(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_tensor_v3") => Global::RebuildTensorV3,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
            ("torch.storage", "UntypedStorage") | ("torch", "UntypedStorage") => Global::Storage(StorageKind::Untyped),
            ("torch", n) => match TorchDtype::from_storage_name(n) {
                Some(d) => Global::Storage(StorageKind::Typed(d)),
                None => Global::Dtype(TorchDtype::from_dtype_name(n)?),
            },
            _ => return None,
        })
    }
}

#[derive(Debug)]
struct Tuple {
    depth: u32,
    items: Vec<Value>,
}

/// A pickle value. Dicts and lists are indices into the unpickler's arenas: they are mutated in
/// place (`SETITEM` on a memoized dict is seen through the memo, as in Python) and can refer to
/// themselves without creating an `Rc` cycle. Bools, floats and bytes are parsed but their
/// values are never needed to rebuild a state dict, so they are not kept.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    Bytes,
    Tuple(Rc<Tuple>),
    Dict(usize),
    List(usize),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorSpec>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "bool",
            Value::Int(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Bytes => "bytes",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::List(_) => "list",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }

    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(t) => t.depth,
            _ => 0,
        }
    }
}

/// Unpickle `pkl` (a `data.pkl`) and return the state dict it holds: `(name, tensor)` in the
/// dict's order, a name given twice keeping its first position and its last value (as a Python
/// dict does). The top-level object must be a dict or `OrderedDict` of tensors.
pub fn load_state_dict(path: &Path, pkl: &[u8]) -> Result<Vec<(String, TensorSpec)>, ModelError> {
    let mut u = Unpickler::new(path, pkl);
    let top = u.run()?;
    let Value::Dict(id) = top else {
        return Err(u.malformed(format!("the pickled object is a {}, not a state dict (a dict of tensors)", top.kind())));
    };
    let mut out: Vec<(String, TensorSpec)> = Vec::new();
    let mut pos: HashMap<String, usize> = HashMap::new();
    for (k, v) in std::mem::take(&mut u.dicts[id]) {
        let Value::Str(name) = k else {
            return Err(u.malformed(format!("a state dict key is a {}, not a string", k.kind())));
        };
        let Value::Tensor(t) = v else {
            return Err(u.malformed(format!("state dict entry '{name}' is a {}, not a tensor", v.kind())));
        };
        let t = Rc::unwrap_or_clone(t);
        match pos.get(&*name) {
            Some(&i) => out[i].1 = t,
            None => {
                pos.insert(name.to_string(), out.len());
                out.push((name.to_string(), t));
            }
        }
    }
    Ok(out)
}

struct Unpickler<'a> {
    path: PathBuf,
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack lengths at each open `MARK`.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    dicts: Vec<Vec<(Value, Value)>>,
    lists: Vec<Vec<Value>>,
    /// Values still allowed to be pushed or memoized (see `MAX_VALUES`).
    budget: usize,
}

impl<'a> Unpickler<'a> {
    fn new(path: &Path, data: &'a [u8]) -> Self {
        Unpickler {
            path: path.to_path_buf(),
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            dicts: Vec::new(),
            lists: Vec::new(),
            budget: MAX_VALUES,
        }
    }

    fn malformed(&self, what: String) -> ModelError {
        ModelError::Malformed { path: self.path.clone(), what: format!("data.pkl: {what}") }
    }

    fn truncated(&self, what: &str) -> ModelError {
        ModelError::Truncated { path: self.path.clone(), offset: self.pos as u64, what: format!("data.pkl {what}") }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ModelError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| self.truncated(what))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8, ModelError> {
        Ok(self.take(1, what)?[0])
    }

    fn fixed<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ModelError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    /// A length prefix as usize (it is then checked against the remaining input by `take`).
    fn len_u32(&mut self, what: &str) -> Result<usize, ModelError> {
        Ok(u32::from_le_bytes(self.fixed::<4>(what)?) as usize)
    }

    fn len_u64(&mut self, what: &str) -> Result<usize, ModelError> {
        let n = u64::from_le_bytes(self.fixed::<8>(what)?);
        usize::try_from(n).map_err(|_| self.truncated(what))
    }

    /// A `GLOBAL` argument line (up to `\n`).
    fn line(&mut self) -> Result<&'a str, ModelError> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| self.truncated("GLOBAL name (no newline)"))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| self.malformed("GLOBAL name is not UTF-8".into()))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn utf8(&self, b: &[u8]) -> Result<Rc<str>, ModelError> {
        std::str::from_utf8(b).map(Rc::from).map_err(|_| self.malformed(format!("string at byte {} is not UTF-8", self.pos)))
    }

    fn charge(&mut self) -> Result<(), ModelError> {
        self.budget = self
            .budget
            .checked_sub(1)
            .ok_or_else(|| self.malformed(format!("more than {MAX_VALUES} values: too large for a state dict")))?;
        Ok(())
    }

    fn push(&mut self, v: Value) -> Result<(), ModelError> {
        self.charge()?;
        self.stack.push(v);
        Ok(())
    }

    /// The stack's floor: values below the innermost `MARK` belong to an outer frame.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self, op: &str) -> Result<Value, ModelError> {
        if self.stack.len() <= self.floor() {
            return Err(self.malformed(format!("{op} at byte {} on an empty stack", self.pos)));
        }
        self.stack.pop().ok_or_else(|| self.malformed(format!("{op} on an empty stack")))
    }

    fn top(&self, op: &str) -> Result<&Value, ModelError> {
        let n = self.stack.len();
        if n <= self.floor() {
            return Err(self.malformed(format!("{op} at byte {} on an empty stack", self.pos)));
        }
        Ok(&self.stack[n - 1])
    }

    /// Everything above the innermost `MARK`, which is closed.
    fn pop_mark(&mut self, op: &str) -> Result<Vec<Value>, ModelError> {
        let m = self.marks.pop().ok_or_else(|| self.malformed(format!("{op} at byte {} without a MARK", self.pos)))?;
        // `pop` never goes below the floor, so the mark is within the stack.
        let m = m.min(self.stack.len());
        Ok(self.stack.split_off(m))
    }

    fn tuple(&self, items: Vec<Value>) -> Result<Value, ModelError> {
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(self.malformed(format!("tuples nested more than {MAX_DEPTH} deep")));
        }
        Ok(Value::Tuple(Rc::new(Tuple { depth, items })))
    }

    fn memo_put(&mut self, idx: u32) -> Result<(), ModelError> {
        let v = self.stack.last().filter(|_| self.stack.len() > self.floor()).cloned();
        let v = v.ok_or_else(|| self.malformed(format!("memo put at byte {} on an empty stack", self.pos)))?;
        self.charge()?;
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> Result<(), ModelError> {
        let v = self.memo.get(&idx).cloned().ok_or_else(|| self.malformed(format!("memo get of unset index {idx}")))?;
        self.push(v)
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), ModelError> {
        match Global::lookup(module, name) {
            Some(g) => self.push(Value::Global(g)),
            None => Err(ModelError::RefusedGlobal { path: self.path.clone(), global: format!("{module}.{name}") }),
        }
    }

    fn set_items(&mut self, dict: usize, items: Vec<Value>) -> Result<(), ModelError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.malformed("SETITEMS with an odd number of values".into()));
        }
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            self.dicts[dict].push((k, v));
        }
        Ok(())
    }

    fn dict_on_top(&self, op: &str) -> Result<usize, ModelError> {
        match self.top(op)? {
            Value::Dict(id) => Ok(*id),
            other => Err(self.malformed(format!("{op} on a {}, not a dict", other.kind()))),
        }
    }

    fn list_on_top(&self, op: &str) -> Result<usize, ModelError> {
        match self.top(op)? {
            Value::List(id) => Ok(*id),
            other => Err(self.malformed(format!("{op} on a {}, not a list", other.kind()))),
        }
    }

    fn new_dict(&mut self) -> Value {
        self.dicts.push(Vec::new());
        Value::Dict(self.dicts.len() - 1)
    }

    /// Run to `STOP`; returns the object on top of the stack.
    fn run(&mut self) -> Result<Value, ModelError> {
        loop {
            let at = self.pos;
            let op = self.u8("opcode")?;
            match op {
                // PROTO: protocols 2..=5 are binary; 0 and 1 are never written by torch.save.
                0x80 => {
                    let v = self.u8("PROTO")?;
                    if !(2..=5).contains(&v) {
                        return Err(self.malformed(format!("pickle protocol {v} (torch.save writes 2)")));
                    }
                }
                // FRAME: a length hint for buffered readers; the data is read in place.
                0x95 => {
                    self.fixed::<8>("FRAME")?;
                }
                b'.' => return self.pop("STOP"),
                b'(' => {
                    self.charge()?;
                    self.marks.push(self.stack.len())
                }
                b'0' => {
                    self.pop("POP")?;
                }
                b'1' => {
                    self.pop_mark("POP_MARK")?;
                }
                b'2' => {
                    let v = self.top("DUP")?.clone();
                    self.push(v)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 | 0x89 => self.push(Value::Bool)?,
                b'J' => {
                    let v = i32::from_le_bytes(self.fixed::<4>("BININT")?);
                    self.push(Value::Int(v as i64))?
                }
                b'K' => {
                    let v = self.u8("BININT1")?;
                    self.push(Value::Int(v as i64))?
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.fixed::<2>("BININT2")?);
                    self.push(Value::Int(v as i64))?
                }
                // LONG1: little-endian two's complement of n bytes; an i64 must do.
                0x8a => {
                    let n = self.u8("LONG1 length")? as usize;
                    let b = self.take(n, "LONG1")?;
                    if n > 8 {
                        return Err(self.malformed(format!("integer of {n} bytes at byte {at}")));
                    }
                    let neg = b.last().is_some_and(|&x| x & 0x80 != 0);
                    let mut a = [if neg { 0xff } else { 0 }; 8];
                    a[..n].copy_from_slice(b);
                    self.push(Value::Int(i64::from_le_bytes(a)))?
                }
                b'G' => {
                    self.fixed::<8>("BINFLOAT")?;
                    self.push(Value::Float)?
                }
                b'X' => {
                    let n = self.len_u32("BINUNICODE length")?;
                    let s = self.take(n, "BINUNICODE")?;
                    let s = self.utf8(s)?;
                    self.push(Value::Str(s))?
                }
                0x8c => {
                    let n = self.u8("SHORT_BINUNICODE length")? as usize;
                    let s = self.take(n, "SHORT_BINUNICODE")?;
                    let s = self.utf8(s)?;
                    self.push(Value::Str(s))?
                }
                0x8d => {
                    let n = self.len_u64("BINUNICODE8 length")?;
                    let s = self.take(n, "BINUNICODE8")?;
                    let s = self.utf8(s)?;
                    self.push(Value::Str(s))?
                }
                b'C' => {
                    let n = self.u8("SHORT_BINBYTES length")? as usize;
                    self.take(n, "SHORT_BINBYTES")?;
                    self.push(Value::Bytes)?
                }
                b'B' => {
                    let n = self.len_u32("BINBYTES length")?;
                    self.take(n, "BINBYTES")?;
                    self.push(Value::Bytes)?
                }
                0x8e => {
                    let n = self.len_u64("BINBYTES8 length")?;
                    self.take(n, "BINBYTES8")?;
                    self.push(Value::Bytes)?
                }
                b')' => {
                    let t = self.tuple(Vec::new())?;
                    self.push(t)?
                }
                b't' => {
                    let items = self.pop_mark("TUPLE")?;
                    let t = self.tuple(items)?;
                    self.stack.push(t);
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop("TUPLEn")?);
                    }
                    items.reverse();
                    let t = self.tuple(items)?;
                    self.stack.push(t);
                }
                b']' => {
                    self.lists.push(Vec::new());
                    self.push(Value::List(self.lists.len() - 1))?
                }
                b'l' => {
                    let items = self.pop_mark("LIST")?;
                    self.lists.push(items);
                    self.stack.push(Value::List(self.lists.len() - 1));
                }
                b'a' => {
                    let v = self.pop("APPEND")?;
                    let id = self.list_on_top("APPEND")?;
                    self.lists[id].push(v);
                }
                b'e' => {
                    let items = self.pop_mark("APPENDS")?;
                    let id = self.list_on_top("APPENDS")?;
                    self.lists[id].extend(items);
                }
                b'}' => {
                    let d = self.new_dict();
                    self.push(d)?
                }
                b'd' => {
                    let items = self.pop_mark("DICT")?;
                    let d = self.new_dict();
                    let Value::Dict(id) = d else { unreachable!("new_dict returns a dict") };
                    self.set_items(id, items)?;
                    self.stack.push(d);
                }
                b's' => {
                    let v = self.pop("SETITEM")?;
                    let k = self.pop("SETITEM")?;
                    let id = self.dict_on_top("SETITEM")?;
                    self.dicts[id].push((k, v));
                }
                b'u' => {
                    let items = self.pop_mark("SETITEMS")?;
                    let id = self.dict_on_top("SETITEMS")?;
                    self.set_items(id, items)?;
                }
                b'q' => {
                    let i = self.u8("BINPUT")? as u32;
                    self.memo_put(i)?
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.fixed::<4>("LONG_BINPUT")?);
                    self.memo_put(i)?
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| self.malformed("memo overflow".into()))?;
                    self.memo_put(i)?
                }
                b'h' => {
                    let i = self.u8("BINGET")? as u32;
                    self.memo_get(i)?
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.fixed::<4>("LONG_BINGET")?);
                    self.memo_get(i)?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?
                }
                0x93 => {
                    let name = self.pop("STACK_GLOBAL")?;
                    let module = self.pop("STACK_GLOBAL")?;
                    let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                        return Err(self.malformed(format!("STACK_GLOBAL of a {} and a {}", module.kind(), name.kind())));
                    };
                    self.global(module, name)?
                }
                b'Q' => {
                    let pid = self.pop("BINPERSID")?;
                    let s = self.persistent_load(pid)?;
                    self.stack.push(Value::Storage(Rc::new(s)));
                }
                b'R' => {
                    let args = self.pop("REDUCE")?;
                    let func = self.pop("REDUCE")?;
                    let v = self.reduce(func, args)?;
                    self.stack.push(v);
                }
                // BUILD: an OrderedDict's instance state (`_metadata`); dropped.
                b'b' => {
                    self.pop("BUILD")?;
                    self.dict_on_top("BUILD")?;
                }
                _ => return Err(self.malformed(format!("unsupported pickle opcode 0x{op:02x} at byte {at}"))),
            }
        }
    }

    /// torch's persistent id: `('storage', storage_type, key, location, numel)`.
    fn persistent_load(&self, pid: Value) -> Result<StorageRef, ModelError> {
        let bad = |what: &str| self.malformed(format!("persistent id {what}"));
        let Value::Tuple(t) = pid else { return Err(bad("is not a tuple")) };
        let [Value::Str(tag), ty, Value::Str(key), Value::Str(_location), numel] = &t.items[..] else {
            return Err(bad("is not ('storage', type, key, location, numel)"));
        };
        if &**tag != "storage" {
            return Err(bad(&format!("of kind '{tag}' (only 'storage' is known)")));
        }
        let Value::Global(Global::Storage(kind)) = ty else {
            return Err(bad(&format!("names a {} where a storage type belongs", ty.kind())));
        };
        let numel = non_negative(numel).ok_or_else(|| bad("has a negative or non-integer numel"))?;
        Ok(StorageRef { key: key.to_string(), kind: *kind, numel })
    }

    fn reduce(&mut self, func: Value, args: Value) -> Result<Value, ModelError> {
        let Value::Global(g) = func else {
            return Err(self.malformed(format!("REDUCE calls a {}", func.kind())));
        };
        let Value::Tuple(args) = args else {
            return Err(self.malformed(format!("REDUCE arguments are a {}, not a tuple", args.kind())));
        };
        let a = &args.items[..];
        Ok(match g {
            Global::OrderedDict => {
                if !a.is_empty() {
                    return Err(self.bad_args(g, a.len(), "0"));
                }
                self.new_dict()
            }
            Global::RebuildTensor => match a {
                [s, off, size, stride] => self.tensor(s, off, size, stride, None)?,
                _ => return Err(self.bad_args(g, a.len(), "4")),
            },
            Global::RebuildTensorV2 => match a {
                [s, off, size, stride, grad, hooks, meta @ ..] if meta.len() <= 1 => {
                    self.grad_hooks_meta(grad, hooks, meta.first())?;
                    self.tensor(s, off, size, stride, None)?
                }
                _ => return Err(self.bad_args(g, a.len(), "6 or 7")),
            },
            Global::RebuildTensorV3 => match a {
                [s, off, size, stride, grad, hooks, dtype, meta @ ..] if meta.len() <= 1 => {
                    self.grad_hooks_meta(grad, hooks, meta.first())?;
                    let Value::Global(Global::Dtype(d)) = dtype else {
                        return Err(self.malformed(format!("_rebuild_tensor_v3 dtype is a {}", dtype.kind())));
                    };
                    self.tensor(s, off, size, stride, Some(*d))?
                }
                _ => return Err(self.bad_args(g, a.len(), "7 or 8")),
            },
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let want = if g == Global::RebuildParameter { 3 } else { 4 };
                match a {
                    [t @ Value::Tensor(_), grad, hooks, ..] if a.len() == want => {
                        self.grad_hooks_meta(grad, hooks, None)?;
                        t.clone()
                    }
                    _ => return Err(self.bad_args(g, a.len(), &format!("{want}, the first a tensor"))),
                }
            }
            Global::Storage(_) | Global::Dtype(_) => return Err(self.malformed(format!("REDUCE calls {g:?}, which is not a function"))),
        })
    }

    fn bad_args(&self, g: Global, n: usize, want: &str) -> ModelError {
        self.malformed(format!("{g:?} with {n} arguments (expected {want})"))
    }

    /// `requires_grad` is a bool (ignored); backward hooks must be an empty dict (torch never
    /// saves hooks); tensor metadata (conjugate / negative bits) must be absent or empty.
    fn grad_hooks_meta(&self, grad: &Value, hooks: &Value, meta: Option<&Value>) -> Result<(), ModelError> {
        if !matches!(grad, Value::Bool) {
            return Err(self.malformed(format!("requires_grad is a {}", grad.kind())));
        }
        let empty_dict = |v: &Value| matches!(v, Value::Dict(id) if self.dicts[*id].is_empty());
        if !empty_dict(hooks) {
            return Err(self.malformed("a tensor with backward hooks (torch never saves them)".into()));
        }
        if let Some(m) = meta {
            if !(empty_dict(m) || matches!(m, Value::None)) {
                return Err(self.malformed("a tensor with metadata (conjugate or negative bit): not supported".into()));
            }
        }
        Ok(())
    }

    fn tensor(&self, s: &Value, off: &Value, size: &Value, stride: &Value, dtype: Option<TorchDtype>) -> Result<Value, ModelError> {
        let Value::Storage(storage) = s else {
            return Err(self.malformed(format!("a tensor's storage is a {}", s.kind())));
        };
        let dtype = match (dtype, storage.kind) {
            (Some(d), _) => d,
            (None, StorageKind::Typed(d)) => d,
            (None, StorageKind::Untyped) => return Err(self.malformed("a tensor over an untyped storage without a dtype".into())),
        };
        let offset = non_negative(off).ok_or_else(|| self.malformed("a tensor's storage offset is not a non-negative integer".into()))?;
        let ints = |v: &Value, what: &str| -> Result<Vec<u64>, ModelError> {
            let Value::Tuple(t) = v else {
                return Err(self.malformed(format!("a tensor's {what} is a {}, not a tuple", v.kind())));
            };
            if t.items.len() > MAX_RANK {
                return Err(self.malformed(format!("a tensor of {} dimensions (at most {MAX_RANK})", t.items.len())));
            }
            t.items
                .iter()
                .map(non_negative)
                .collect::<Option<Vec<u64>>>()
                .ok_or_else(|| self.malformed(format!("a tensor's {what} has a negative or non-integer entry")))
        };
        let shape = ints(size, "size")?;
        let strides = ints(stride, "stride")?;
        if shape.len() != strides.len() {
            return Err(self.malformed(format!("a tensor with {} sizes and {} strides", shape.len(), strides.len())));
        }
        Ok(Value::Tensor(Rc::new(TensorSpec { storage: (**storage).clone(), dtype, offset, shape, strides })))
    }
}

fn non_negative(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    }
}
