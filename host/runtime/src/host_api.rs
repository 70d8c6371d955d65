//! The host side of the plugin ABI: an [`RfHostV1`] table whose callbacks answer metadata and
//! tensor-shape queries from a [`ModelSource`] and record ops into a [`Graph`].
//!
//! Invariants (the header's contract, enforced here):
//! - Every build has its own [`Ctx`], registered in [`LIVE`] with the thread that runs the
//!   plugin's `build`; a callback is served only for a live ctx and on that thread. So builds of
//!   several models may run concurrently (the model manager does), a callback from a thread the
//!   plugin spawned is refused with a message instead of racing on the graph, and a ctx kept past
//!   `build` is ignored instead of dereferenced.
//! - Every pointer a plugin passes is checked (null, alignment, absurd lengths, UTF-8) before use;
//!   a bad one answers INVALID_ARGUMENT and fails the build with a message naming the callback
//!   and the argument. A dangling pointer cannot be detected: that stays the plugin's contract.
//! - Callbacks never unwind into the plugin: each body runs under `catch_unwind`, and a host panic
//!   becomes PANIC plus a message naming the plugin and the callback.
//! - The first error (a refused argument, a panic, a graph shape error, a missing tensor) is kept
//!   with full detail and wins over whatever the plugin returns; `last_error` lets the plugin
//!   read the message of the callback that just failed.
//!
//! ```text
//!   build_graph ── LIVE += (ctx, this thread) ──▶ plugin.build(&table, arch)
//!                                                   │ meta_*/tensor_shape/op/op_ex/supports
//!                  guarded(ctx, "op", body) ◀───────┘ (thread + live check, arguments checked,
//!   build_graph ◀─ LIVE -= ctx; first error wins       catch_unwind)
//! ```

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, MutexGuard};
use std::thread::ThreadId;

use rocmforge_abi::{status, RfHostV1, RfNode, RfOp, RfOpExt, RfStr, ABI_VERSION};

use crate::graph::Graph;
use crate::op_spec::{self, OpRecord};
use crate::plugin::Plugin;
use crate::source::ModelSource;
use crate::RuntimeError;

/// Longest string a plugin may pass (keys, node names, messages): anything longer is a garbage
/// length, refused before a slice is formed over it.
const MAX_STR: usize = 1 << 20;
/// Largest extension record accepted (RfOpExt is 120 bytes today; room for decades of appends).
const MAX_EXT: usize = 1 << 16;

struct Ctx<'a> {
    src: &'a ModelSource,
    plugin: &'a Plugin,
    graph: Graph,
    /// Detailed error recorded by the host itself.
    host_error: Option<RuntimeError>,
    /// Message given by the plugin through set_error.
    plugin_error: Option<String>,
    /// Message of the previous callback when it failed (what `last_error` returns).
    last_msg: Option<String>,
}

impl Ctx<'_> {
    /// Record a misuse of a callback (the first error wins) and answer INVALID_ARGUMENT.
    fn refuse(&mut self, callback: &'static str, what: String) -> i32 {
        self.last_msg = Some(format!("{callback}: {what}"));
        self.host_error.get_or_insert_with(|| RuntimeError::PluginCallback {
            plugin: self.plugin.name.clone(),
            path: self.plugin.path.clone(),
            callback,
            what,
        });
        status::INVALID_ARGUMENT
    }
}

/// A build in progress: its ctx address and the thread running the plugin's `build`.
struct Live {
    addr: usize,
    owner: ThreadId,
    /// The first callback made from another thread: (callback, message).
    foreign: Option<(&'static str, String)>,
}

/// Every ctx whose build is running. A handful of entries at most (one per model being loaded).
static LIVE: Mutex<Vec<Live>> = Mutex::new(Vec::new());

fn live() -> MutexGuard<'static, Vec<Live>> {
    // A poisoned lock only means a panic elsewhere while holding it; the list stays consistent.
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The ctx behind a callback's `ctx` argument, if the call is allowed.
///
/// # Safety
/// A non-null `c` registered in [`LIVE`] must be the address of a `Ctx<'a>` owned by a
/// [`build_graph`] call that is still inside the plugin's `build` (it deregisters before the ctx
/// moves or drops). The returned reference must not outlive the callback: it aliases nothing only
/// because the owning thread is inside this callback, not in `build_graph`'s own code.
unsafe fn enter<'a>(c: *mut c_void, callback: &'static str) -> Option<&'a mut Ctx<'a>> {
    let me = std::thread::current().id();
    let mut list = live();
    let entry = list.iter_mut().find(|l| l.addr == c as usize)?;
    if entry.owner != me {
        let owner = entry.owner;
        entry.foreign.get_or_insert_with(|| {
            (
                callback,
                format!(
                    "called from thread {me:?}, but this build runs on {owner:?}: callbacks must come from the thread that called build"
                ),
            )
        });
        return None;
    }
    drop(list);
    // SAFETY: live and owned by this thread, which is inside the plugin's build (contract above).
    Some(unsafe { &mut *(c as *mut Ctx<'a>) })
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".to_string())
}

/// Run a callback body for a checked ctx, turning a host panic into PANIC plus a message.
fn guarded<'a>(c: *mut c_void, callback: &'static str, f: impl FnOnce(&mut Ctx<'a>) -> i32) -> i32 {
    // SAFETY: `c` is the ctx argument of a callback; `enter` only returns a ctx registered by a
    // running build_graph on this thread, and the reference is dropped when this callback returns.
    let Some(cx) = (unsafe { enter(c, callback) }) else { return status::INVALID_ARGUMENT };
    if callback != "last_error" {
        cx.last_msg = None;
    }
    let p: *mut Ctx<'a> = cx;
    match catch_unwind(AssertUnwindSafe(|| f(cx))) {
        Ok(rc) => rc,
        Err(payload) => {
            let what = format!("the host panicked: {}", panic_message(&*payload));
            // SAFETY: the borrow given to `f` ended with the unwind; the ctx is still live (this
            // thread is still inside the plugin's build).
            let cx = unsafe { &mut *p };
            cx.last_msg = Some(format!("{callback}: {what}"));
            cx.host_error.get_or_insert_with(|| RuntimeError::PluginCallback {
                plugin: cx.plugin.name.clone(),
                path: cx.plugin.path.clone(),
                callback,
                what,
            });
            status::PANIC
        }
    }
}

/// The bytes of a string argument, after the checks a plugin bug can fail.
///
/// # Safety
/// When `s.len` is in 1..=MAX_STR and `s.ptr` is non-null, they must describe readable bytes
/// that stay valid for `'k` (the ABI: for the duration of the callback).
unsafe fn bytes_arg<'k>(s: RfStr, what: &str) -> Result<&'k [u8], String> {
    if s.len == 0 {
        return Ok(&[]);
    }
    if s.ptr.is_null() {
        return Err(format!("`{what}` is a null pointer with length {}", s.len));
    }
    if s.len > MAX_STR {
        return Err(format!("`{what}` claims {} bytes (more than {MAX_STR}: a garbage length?)", s.len));
    }
    // SAFETY: non-null, bounded length, readable per the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(s.ptr, s.len) })
}

/// A UTF-8 string argument (keys, names).
///
/// # Safety
/// As [`bytes_arg`].
unsafe fn str_arg<'k>(s: RfStr, what: &str) -> Result<&'k str, String> {
    // SAFETY: forwarded contract.
    let b = unsafe { bytes_arg(s, what) }?;
    std::str::from_utf8(b).map_err(|e| format!("`{what}` is not UTF-8 ({e})"))
}

/// An out-pointer (or in-pointer) argument: non-null and aligned for `T`.
fn ptr_arg<T>(p: *const T, what: &str) -> Result<(), String> {
    if p.is_null() {
        return Err(format!("`{what}` is a null pointer"));
    }
    if (p as usize) % std::mem::align_of::<T>() != 0 {
        return Err(format!("`{what}` ({p:p}) is not aligned to {} bytes", std::mem::align_of::<T>()));
    }
    Ok(())
}

/// `?` for argument checks inside a callback body: a failed check refuses the call.
macro_rules! arg {
    ($cx:expr, $cb:literal, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(what) => return $cx.refuse($cb, what),
        }
    };
}

unsafe extern "C" fn meta_int(c: *mut c_void, key: RfStr, out: *mut i64) -> i32 {
    guarded(c, "meta_int", |cx| {
        // SAFETY: the plugin passes a key valid for the call (ABI); checked for null/length.
        let k = arg!(cx, "meta_int", unsafe { str_arg(key, "key") });
        arg!(cx, "meta_int", ptr_arg(out, "out"));
        #[cfg(test)]
        if k == tests::PANIC_KEY {
            panic!("injected test panic for key '{k}'");
        }
        match cx.src.meta(k) {
            None => status::NOT_FOUND,
            Some(v) => match v.as_i64().or_else(|| v.as_bool().map(i64::from)) {
                // SAFETY: `out` is non-null and aligned (checked) and writable per the ABI.
                Some(x) => unsafe {
                    *out = x;
                    status::OK
                },
                None => status::WRONG_TYPE,
            },
        }
    })
}

unsafe extern "C" fn meta_float(c: *mut c_void, key: RfStr, out: *mut f64) -> i32 {
    guarded(c, "meta_float", |cx| {
        // SAFETY: as in meta_int.
        let k = arg!(cx, "meta_float", unsafe { str_arg(key, "key") });
        arg!(cx, "meta_float", ptr_arg(out, "out"));
        match cx.src.meta(k) {
            None => status::NOT_FOUND,
            Some(v) => match v.as_f64() {
                // SAFETY: `out` is non-null and aligned (checked) and writable per the ABI.
                Some(x) => unsafe {
                    *out = x;
                    status::OK
                },
                None => status::WRONG_TYPE,
            },
        }
    })
}

unsafe extern "C" fn meta_str(c: *mut c_void, key: RfStr, out: *mut RfStr) -> i32 {
    guarded(c, "meta_str", |cx| {
        // SAFETY: as in meta_int.
        let k = arg!(cx, "meta_str", unsafe { str_arg(key, "key") });
        arg!(cx, "meta_str", ptr_arg(out, "out"));
        match cx.src.meta(k) {
            None => status::NOT_FOUND,
            Some(v) => match v.as_str() {
                // SAFETY: `out` is checked; the string lives in the source, which outlives build.
                Some(s) => unsafe {
                    *out = RfStr::new(s);
                    status::OK
                },
                None => status::WRONG_TYPE,
            },
        }
    })
}

unsafe extern "C" fn meta_array_f64(c: *mut c_void, key: RfStr, buf: *mut f64, cap: usize, len: *mut usize) -> i32 {
    guarded(c, "meta_array_f64", |cx| {
        // SAFETY: as in meta_int.
        let k = arg!(cx, "meta_array_f64", unsafe { str_arg(key, "key") });
        arg!(cx, "meta_array_f64", ptr_arg(len, "len"));
        // A NULL buffer is how a plugin asks for the length (cap 0).
        if cap > 0 {
            arg!(cx, "meta_array_f64", ptr_arg(buf, "buf"));
            if cap > isize::MAX as usize / std::mem::size_of::<f64>() {
                return cx.refuse("meta_array_f64", format!("`cap` = {cap} is not a buffer size"));
            }
        }
        match cx.src.meta(k) {
            None => status::NOT_FOUND,
            Some(v) => match v.as_array().and_then(|a| a.to_f64_vec()) {
                Some(vals) => {
                    // SAFETY: `len` is checked and writable per the ABI.
                    unsafe { *len = vals.len() };
                    if vals.len() > cap {
                        return status::TOO_SMALL;
                    }
                    if !vals.is_empty() {
                        // SAFETY: `buf` is non-null, aligned and has `cap` >= vals.len() writable slots.
                        unsafe { std::ptr::copy_nonoverlapping(vals.as_ptr(), buf, vals.len()) };
                    }
                    status::OK
                }
                None => status::WRONG_TYPE,
            },
        }
    })
}

unsafe extern "C" fn tensor_shape(c: *mut c_void, name: RfStr, dims: *mut i64, n_dims: *mut u32) -> i32 {
    guarded(c, "tensor_shape", |cx| {
        // SAFETY: as in meta_int.
        let n = arg!(cx, "tensor_shape", unsafe { str_arg(name, "name") });
        arg!(cx, "tensor_shape", ptr_arg(dims, "dims"));
        arg!(cx, "tensor_shape", ptr_arg(n_dims, "n_dims"));
        match cx.src.tensor_info(n) {
            None => status::NOT_FOUND,
            Some((_, d)) => {
                let k = d.len().min(4);
                for (i, &x) in d.iter().take(k).enumerate() {
                    // SAFETY: `dims` is checked and has room for 4 entries per the ABI.
                    unsafe { *dims.add(i) = x as i64 };
                }
                // SAFETY: `n_dims` is checked and writable per the ABI.
                unsafe { *n_dims = k as u32 };
                status::OK
            }
        }
    })
}

/// Validate an extension record and copy the part this host knows. Err(refusal) for a bad
/// pointer or size (a plugin bug); Ok(Err(message)) for bytes this host does not know (a plugin
/// built for a newer host: an op error, like an unknown slot).
///
/// # Safety
/// A non-null `ext` must point to `(*ext).struct_size` readable bytes for the callback.
unsafe fn read_ext(ext: *const RfOpExt) -> Result<Result<Option<RfOpExt>, String>, String> {
    if ext.is_null() {
        return Ok(Ok(None));
    }
    ptr_arg(ext, "ext")?;
    // SAFETY: non-null and aligned; every RfOpExt starts with its u32 size.
    let size = unsafe { std::ptr::addr_of!((*ext).struct_size).read() } as usize;
    let known = std::mem::size_of::<RfOpExt>();
    if size < known {
        return Err(format!("`ext.struct_size` = {size} is smaller than the first RfOpExt ({known} bytes)"));
    }
    if size > MAX_EXT {
        return Err(format!("`ext.struct_size` = {size} is larger than {MAX_EXT} bytes (a garbage size?)"));
    }
    // SAFETY: the plugin promises `size` >= `known` readable bytes (contract).
    let bytes = unsafe { std::slice::from_raw_parts(ext as *const u8, size) };
    if let Some(off) = bytes[known..].iter().position(|&b| b != 0) {
        return Ok(Err(format!(
            "extension record byte {} is non-zero, but this host knows only the first {known} bytes of RfOpExt (a plugin built for a newer host? ask `supports` first)",
            known + off
        )));
    }
    // SAFETY: `known` bytes are readable and aligned; every bit pattern is a valid RfOpExt.
    let x = unsafe { ext.read() };
    if x.flags != 0 {
        return Ok(Err(format!("extension record flags = {:#x}, but no flag is defined", x.flags)));
    }
    Ok(Ok(Some(x)))
}

/// `op` and `op_ex`: check the arguments, merge the slots, shape-check and append.
///
/// # Safety
/// Non-null `op`/`ext` must point to valid records (and the strings in `op` to valid bytes)
/// for the duration of the call; checked for null, alignment and lengths here.
unsafe fn record(cx: &mut Ctx, callback: &'static str, op: *const RfOp, ext: *const RfOpExt, out: *mut RfNode) -> i32 {
    if cx.host_error.is_some() {
        // A build that already failed records nothing more; the first error is what counts.
        return status::ERROR;
    }
    if let Err(what) = ptr_arg(op, "op").and_then(|()| ptr_arg(out, "out")) {
        return cx.refuse(callback, what);
    }
    // SAFETY: non-null and aligned (checked); valid for the call per the contract.
    let raw = unsafe { &*op };
    // SAFETY: strings inside the op are valid for the call (contract); checked for null/length.
    let name = match unsafe { str_arg(raw.name, "op.name") } {
        Ok(n) => n.to_string(),
        Err(what) => return cx.refuse(callback, what),
    };
    // SAFETY: as above.
    let tensor = match unsafe { str_arg(raw.tensor, "op.tensor") } {
        Ok(t) => t.to_string(),
        Err(what) => return cx.refuse(callback, format!("{what} (op '{name}')")),
    };
    // SAFETY: forwarded contract for `ext`.
    let ext = match unsafe { read_ext(ext) } {
        Err(what) => return cx.refuse(callback, format!("{what} (op '{name}')")),
        Ok(Err(what)) => {
            let what = format!("{}: {what}", op_spec::op_name(raw.code));
            cx.last_msg = Some(format!("graph node '{name}': {what}"));
            cx.host_error = Some(RuntimeError::Graph { node: name, what });
            return status::ERROR;
        }
        Ok(Ok(x)) => x,
    };
    let rec = OpRecord::read(raw, ext.as_ref());
    let src = cx.src;
    match cx.graph.push(&rec, name, tensor, |t| src.tensor_info(t).map(|(_, d)| d)) {
        Ok(id) => {
            // SAFETY: `out` is checked and writable per the ABI.
            unsafe { *out = id as RfNode };
            status::OK
        }
        Err(e) => {
            cx.last_msg = Some(e.to_string());
            cx.host_error = Some(e);
            status::ERROR
        }
    }
}

unsafe extern "C" fn record_op(c: *mut c_void, op: *const RfOp, out: *mut RfNode) -> i32 {
    // SAFETY: the ABI's contract for op/out, checked inside.
    guarded(c, "op", |cx| unsafe { record(cx, "op", op, std::ptr::null(), out) })
}

unsafe extern "C" fn record_op_ex(c: *mut c_void, op: *const RfOp, ext: *const RfOpExt, out: *mut RfNode) -> i32 {
    // SAFETY: the ABI's contract for op/ext/out, checked inside.
    guarded(c, "op_ex", |cx| unsafe { record(cx, "op_ex", op, ext, out) })
}

unsafe extern "C" fn supports(c: *mut c_void, op: u32, what: u32, slot: u32, value: i64) -> i32 {
    guarded(c, "supports", |_| if op_spec::supports(op, what, slot, value) { status::OK } else { status::NOT_FOUND })
}

unsafe extern "C" fn last_error(c: *mut c_void, out: *mut RfStr) -> i32 {
    guarded(c, "last_error", |cx| {
        arg!(cx, "last_error", ptr_arg(out, "out"));
        match &cx.last_msg {
            // SAFETY: `out` is checked; the message lives in the ctx until the next callback.
            Some(m) => unsafe {
                *out = RfStr::new(m);
                status::OK
            },
            None => status::NOT_FOUND,
        }
    })
}

unsafe extern "C" fn set_error(c: *mut c_void, msg: RfStr) {
    let _ = guarded(c, "set_error", |cx| {
        // SAFETY: the plugin passes a message valid for the call; checked, then copied.
        let m = arg!(cx, "set_error", unsafe { bytes_arg(msg, "msg") });
        let m = String::from_utf8_lossy(m).into_owned();
        cx.plugin_error.get_or_insert(m);
        status::OK
    });
}

/// Ask `plugin` for the forward graph of `src`. Safe to call from several threads at once.
pub fn build_graph(plugin: &Plugin, src: &ModelSource) -> Result<Graph, RuntimeError> {
    let mut cx = Ctx { src, plugin, graph: Graph::default(), host_error: None, plugin_error: None, last_msg: None };
    let addr = &mut cx as *mut Ctx as usize;
    let table = RfHostV1 {
        abi_version: ABI_VERSION,
        struct_size: std::mem::size_of::<RfHostV1>() as u32,
        ctx: addr as *mut c_void,
        meta_int,
        meta_float,
        meta_str,
        meta_array_f64,
        tensor_shape,
        op: record_op,
        set_error,
        op_ex: record_op_ex,
        supports,
        last_error,
    };
    let arch = src.arch().to_string();
    live().push(Live { addr, owner: std::thread::current().id(), foreign: None });
    // SAFETY: the table and ctx outlive the call (cx is not touched or moved until deregistered
    // below); the plugin's build function follows the ABI.
    let rc = unsafe { (plugin.build)(&table, RfStr::new(&arch)) };
    let foreign = {
        let mut list = live();
        let i = list.iter().position(|l| l.addr == addr);
        i.map(|i| list.swap_remove(i)).and_then(|l| l.foreign)
    };
    let Ctx { graph, host_error, plugin_error, .. } = cx;
    if let Some(e) = host_error {
        return Err(match e {
            RuntimeError::MissingTensor { name } => RuntimeError::MissingTensorOfArch { name, arch },
            e => e,
        });
    }
    if let Some((callback, what)) = foreign {
        return Err(RuntimeError::PluginCallback { plugin: plugin.name.clone(), path: plugin.path.clone(), callback, what });
    }
    if rc != status::OK {
        return Err(RuntimeError::PluginBuild {
            plugin: plugin.name.clone(),
            path: plugin.path.clone(),
            arch,
            what: plugin_error.unwrap_or_else(|| format!("failed with status {rc}")),
        });
    }
    graph.finish()?;
    Ok(graph)
}

#[cfg(test)]
mod tests;
