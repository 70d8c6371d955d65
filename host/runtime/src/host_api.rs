//! The host side of the plugin ABI: an [`RfHostV1`] table whose callbacks answer metadata and
//! tensor-shape queries from a [`ModelSource`] and record ops into a [`Graph`].
//!
//! Callbacks never unwind into the plugin: each body runs under `catch_unwind`. The first error
//! (a graph shape error, a missing tensor) is kept with full detail; the plugin only sees a status
//! code and is expected to stop and return it.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use rocmforge_abi::{status, RfHostV1, RfNode, RfOp, RfStr, ABI_VERSION};

use crate::graph::Graph;
use crate::plugin::Plugin;
use crate::source::ModelSource;
use crate::RuntimeError;

struct Ctx<'a> {
    src: &'a ModelSource,
    graph: Graph,
    /// Detailed error recorded by the host itself.
    host_error: Option<RuntimeError>,
    /// Message given by the plugin through set_error.
    plugin_error: Option<String>,
}

fn ctx<'a>(p: *mut c_void) -> &'a mut Ctx<'a> {
    // SAFETY: `p` is the `ctx` pointer of the table built in `build_graph`, which outlives the
    // plugin's build call; callbacks run on the calling thread, one at a time.
    unsafe { &mut *(p as *mut Ctx<'a>) }
}

fn key_of<'k>(k: RfStr) -> Option<&'k str> {
    // SAFETY: the plugin passes a valid (ptr, len) for the duration of the call.
    unsafe { k.as_str() }
}

fn guarded(f: impl FnOnce() -> i32) -> i32 {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(status::PANIC)
}

unsafe extern "C" fn meta_int(c: *mut c_void, key: RfStr, out: *mut i64) -> i32 {
    guarded(|| {
        let Some(k) = key_of(key) else { return status::ERROR };
        match ctx(c).src.meta(k) {
            None => status::NOT_FOUND,
            Some(v) => match v.as_i64().or_else(|| v.as_bool().map(i64::from)) {
                // SAFETY: `out` points to a writable i64 per the ABI.
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
    guarded(|| {
        let Some(k) = key_of(key) else { return status::ERROR };
        match ctx(c).src.meta(k) {
            None => status::NOT_FOUND,
            Some(v) => match v.as_f64() {
                // SAFETY: `out` points to a writable f64 per the ABI.
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
    guarded(|| {
        let Some(k) = key_of(key) else { return status::ERROR };
        match ctx(c).src.meta(k) {
            None => status::NOT_FOUND,
            Some(v) => match v.as_str() {
                // SAFETY: `out` is writable; the string lives in the source, which outlives build.
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
    guarded(|| {
        let Some(k) = key_of(key) else { return status::ERROR };
        match ctx(c).src.meta(k) {
            None => status::NOT_FOUND,
            Some(v) => match v.as_array().and_then(|a| a.to_f64_vec()) {
                Some(vals) => {
                    // SAFETY: `len` is writable per the ABI.
                    unsafe { *len = vals.len() };
                    if vals.len() > cap {
                        return status::TOO_SMALL;
                    }
                    // SAFETY: `buf` has `cap` >= vals.len() writable slots per the ABI.
                    unsafe { std::ptr::copy_nonoverlapping(vals.as_ptr(), buf, vals.len()) };
                    status::OK
                }
                None => status::WRONG_TYPE,
            },
        }
    })
}

unsafe extern "C" fn tensor_shape(c: *mut c_void, name: RfStr, dims: *mut i64, n_dims: *mut u32) -> i32 {
    guarded(|| {
        let Some(n) = key_of(name) else { return status::ERROR };
        match ctx(c).src.tensor_info(n) {
            None => status::NOT_FOUND,
            Some((_, d)) => {
                let k = d.len().min(4);
                for (i, &x) in d.iter().take(k).enumerate() {
                    // SAFETY: `dims` has room for 4 entries per the ABI.
                    unsafe { *dims.add(i) = x as i64 };
                }
                // SAFETY: `n_dims` is writable per the ABI.
                unsafe { *n_dims = k as u32 };
                status::OK
            }
        }
    })
}

unsafe extern "C" fn record_op(c: *mut c_void, op: *const RfOp, out: *mut RfNode) -> i32 {
    guarded(|| {
        let cx = ctx(c);
        if cx.host_error.is_some() {
            return status::ERROR;
        }
        // SAFETY: `op` points to a valid RfOp for the duration of the call.
        let raw = unsafe { &*op };
        // SAFETY: strings inside the op are valid for the call.
        let name = unsafe { raw.name.as_bytes() };
        // SAFETY: as above.
        let tensor = unsafe { raw.tensor.as_bytes() };
        let name = String::from_utf8_lossy(name).into_owned();
        let tensor = String::from_utf8_lossy(tensor).into_owned();
        let src = cx.src;
        match cx.graph.push(raw, name, tensor, |t| src.tensor_info(t).map(|(_, d)| d)) {
            Ok(id) => {
                // SAFETY: `out` is writable per the ABI.
                unsafe { *out = id as RfNode };
                status::OK
            }
            Err(e) => {
                cx.host_error = Some(e);
                status::ERROR
            }
        }
    })
}

unsafe extern "C" fn set_error(c: *mut c_void, msg: RfStr) {
    let _ = guarded(|| {
        // SAFETY: the plugin passes a valid message for the duration of the call; we copy it.
        let m = String::from_utf8_lossy(unsafe { msg.as_bytes() }).into_owned();
        ctx(c).plugin_error.get_or_insert(m);
        status::OK
    });
}

/// Ask `plugin` for the forward graph of `src`.
pub fn build_graph(plugin: &Plugin, src: &ModelSource) -> Result<Graph, RuntimeError> {
    let mut cx = Ctx { src, graph: Graph::default(), host_error: None, plugin_error: None };
    let table = RfHostV1 {
        abi_version: ABI_VERSION,
        struct_size: std::mem::size_of::<RfHostV1>() as u32,
        ctx: &mut cx as *mut Ctx as *mut c_void,
        meta_int,
        meta_float,
        meta_str,
        meta_array_f64,
        tensor_shape,
        op: record_op,
        set_error,
    };
    let arch = src.arch().to_string();
    // SAFETY: the table and ctx outlive the call; the plugin's build function follows the ABI.
    let rc = unsafe { (plugin.build)(&table, RfStr::new(&arch)) };
    let Ctx { graph, host_error, plugin_error, .. } = cx;
    if let Some(e) = host_error {
        return Err(match e {
            RuntimeError::MissingTensor { name } => RuntimeError::MissingTensorOfArch { name, arch },
            e => e,
        });
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
