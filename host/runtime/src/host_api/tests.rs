//! The host callbacks against misbehaving plugins, in-process: each "plugin" below is an
//! `extern "C"` build function wired into a [`Plugin`] by hand, so it can do what no well-formed
//! plugin does (pass null pointers, call from another thread, keep the ctx past build, make the
//! host panic through a key only test builds know). Every case must end in an error that names
//! what the plugin did, and a good build must still work afterwards.
//! The same failures through real `.so` files are in host/runtime/tests/c_plugin.rs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use rocmforge_abi::{cap, op, status, RfHostV1, RfNode, RfOp, RfOpExt, RfStr, NO_NODE};
use rocmforge_model::gguf::{GgufValue, GgufWriter};
use rocmforge_quant::GgmlType;

use super::build_graph;
use crate::plugin::Plugin;
use crate::source::ModelSource;
use crate::RuntimeError;

/// meta_int panics for this key in test builds only (see `meta_int`).
pub(super) const PANIC_KEY: &str = "test.host_panics_here";

/// A tiny GGUF: architecture "t", one embedding table [8, 16].
fn model() -> &'static Path {
    static M: OnceLock<PathBuf> = OnceLock::new();
    M.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("rocmforge-host-api-test-{}.gguf", std::process::id()));
        let mut w = GgufWriter::new();
        w.set("general.architecture", GgufValue::Str("t".into()));
        w.set("t.block_count", GgufValue::U32(2));
        w.add_tensor_info("token_embd.weight", vec![8, 16], GgmlType::F32).expect("tensor info");
        w.write_file(&path, |_| Ok(vec![0u8; 8 * 16 * 4])).expect("write test GGUF");
        path
    })
}

fn plugin(name: &str, build: unsafe extern "C" fn(*const RfHostV1, RfStr) -> i32) -> Plugin {
    Plugin {
        name: name.into(),
        version: "0".into(),
        path: PathBuf::from(format!("/test/{name}.so")),
        archs: vec![("t".into(), String::new())],
        tensors: vec![],
        config: vec![],
        meta_claims: vec![],
        abi_version: rocmforge_abi::ABI_VERSION,
        table_size: 0,
        build,
    }
}

fn run(name: &str, build: unsafe extern "C" fn(*const RfHostV1, RfStr) -> i32) -> Result<crate::Graph, RuntimeError> {
    let reg = crate::Registry::default();
    let src = ModelSource::open(model(), &reg).expect("open test GGUF");
    build_graph(&plugin(name, build), &src)
}

/// The expected callback error, with its message.
fn callback_err(r: Result<crate::Graph, RuntimeError>) -> (&'static str, String) {
    match r {
        Err(RuntimeError::PluginCallback { callback, what, plugin, path }) => {
            assert!(path.to_string_lossy().contains(&plugin), "{plugin} {path:?}");
            (callback, what)
        }
        Err(e) => panic!("expected PluginCallback, got {e:?}"),
        Ok(g) => panic!("the build succeeded with {} nodes", g.nodes.len()),
    }
}

fn h<'a>(host: *const RfHostV1) -> &'a RfHostV1 {
    // SAFETY: the host passes a valid table for the duration of build.
    unsafe { &*host }
}

fn base_op(code: u32, name: &'static str) -> RfOp {
    RfOp { code, inputs: [NO_NODE; 4], iparams: [0; 8], fparams: [0.0; 8], name: RfStr::new(name), tensor: RfStr::EMPTY }
}

/// A good graph: embedding lookup -> output (what every "and the host keeps running" check runs).
unsafe extern "C" fn good(host: *const RfHostV1, _: RfStr) -> i32 {
    let h = h(host);
    let mut w = base_op(op::WEIGHT, "token_embd.weight");
    w.tensor = RfStr::new("token_embd.weight");
    let mut id: RfNode = 0;
    // SAFETY: valid table and arguments.
    let mut rc = unsafe { (h.op)(h.ctx, &w, &mut id) };
    let mut g = base_op(op::GET_ROWS, "inp_embd");
    g.inputs[0] = id;
    // SAFETY: as above.
    rc |= unsafe { (h.op)(h.ctx, &g, &mut id) };
    let mut o = base_op(op::OUTPUT, "logits");
    o.inputs[0] = id;
    // SAFETY: as above.
    rc |= unsafe { (h.op)(h.ctx, &o, &mut id) };
    rc
}

fn assert_host_still_works() {
    let g = run("good", good).expect("a good build after a failed one");
    assert_eq!(g.nodes.len(), 3);
}

#[test]
fn good_build_works() {
    assert_host_still_works();
}

static PANIC_RC: AtomicUsize = AtomicUsize::new(usize::MAX);
static PANIC_LAST: OnceLock<String> = OnceLock::new();

unsafe extern "C" fn makes_host_panic(host: *const RfHostV1, _: RfStr) -> i32 {
    let h = h(host);
    let mut v = 0i64;
    // SAFETY: valid arguments; the host panics inside and must answer PANIC instead of unwinding.
    let rc = unsafe { (h.meta_int)(h.ctx, RfStr::new(PANIC_KEY), &mut v) };
    PANIC_RC.store(rc as usize, Ordering::SeqCst);
    let mut s = RfStr::EMPTY;
    // SAFETY: valid arguments; the message is copied before the next callback.
    if unsafe { (h.last_error)(h.ctx, &mut s) } == status::OK {
        // SAFETY: valid until the next callback.
        let _ = PANIC_LAST.set(String::from_utf8_lossy(unsafe { s.as_bytes() }).into_owned());
    }
    rc
}

#[test]
fn host_panic_in_a_callback_reaches_plugin_and_user_as_a_message() {
    let (callback, what) = callback_err(run("panicky", makes_host_panic));
    assert_eq!(callback, "meta_int");
    assert_eq!(what, format!("the host panicked: injected test panic for key '{PANIC_KEY}'"));
    assert_eq!(PANIC_RC.load(Ordering::SeqCst), status::PANIC as usize, "the plugin sees PANIC");
    assert_eq!(PANIC_LAST.get().map(String::as_str), Some(format!("meta_int: {what}").as_str()), "and can read why");
    assert_host_still_works();
}

unsafe extern "C" fn null_out(host: *const RfHostV1, _: RfStr) -> i32 {
    let h = h(host);
    // SAFETY: deliberately null `out`: the host must check it.
    unsafe { (h.meta_int)(h.ctx, RfStr::new("t.block_count"), std::ptr::null_mut()) }
}
unsafe extern "C" fn null_key(host: *const RfHostV1, _: RfStr) -> i32 {
    let h = h(host);
    let mut v = 0.0;
    // SAFETY: deliberately a null key pointer with a length.
    unsafe { (h.meta_float)(h.ctx, RfStr { ptr: std::ptr::null(), len: 5 }, &mut v) }
}
unsafe extern "C" fn huge_key(host: *const RfHostV1, _: RfStr) -> i32 {
    let h = h(host);
    let mut s = RfStr::EMPTY;
    let k = "t.block_count";
    // SAFETY: deliberately a garbage length: refused before a slice is formed.
    unsafe { (h.meta_str)(h.ctx, RfStr { ptr: k.as_ptr(), len: usize::MAX / 2 }, &mut s) }
}
unsafe extern "C" fn null_dims(host: *const RfHostV1, _: RfStr) -> i32 {
    let h = h(host);
    let mut n = 0u32;
    // SAFETY: deliberately null `dims`.
    unsafe { (h.tensor_shape)(h.ctx, RfStr::new("token_embd.weight"), std::ptr::null_mut(), &mut n) }
}
unsafe extern "C" fn null_op(host: *const RfHostV1, _: RfStr) -> i32 {
    let h = h(host);
    let mut id: RfNode = 0;
    // SAFETY: deliberately a null op record.
    unsafe { (h.op)(h.ctx, std::ptr::null(), &mut id) }
}
unsafe extern "C" fn misaligned_out(host: *const RfHostV1, _: RfStr) -> i32 {
    let h = h(host);
    let mut buf = [0u64; 2];
    let p = (buf.as_mut_ptr() as *mut u8).wrapping_add(1) as *mut i64;
    // SAFETY: deliberately misaligned `out`: refused before the write.
    unsafe { (h.meta_int)(h.ctx, RfStr::new("t.block_count"), p) }
}
unsafe extern "C" fn null_array_buf(host: *const RfHostV1, _: RfStr) -> i32 {
    let h = h(host);
    let mut len = 0usize;
    // SAFETY: deliberately a null buffer with a capacity.
    unsafe { (h.meta_array_f64)(h.ctx, RfStr::new("t.block_count"), std::ptr::null_mut(), 4, &mut len) }
}

#[test]
fn bad_pointers_are_refused_with_the_callback_and_argument_named() {
    type Build = unsafe extern "C" fn(*const RfHostV1, RfStr) -> i32;
    let cases: [(&str, Build, &str, &str); 7] = [
        ("null_out", null_out, "meta_int", "`out` is a null pointer"),
        ("null_key", null_key, "meta_float", "`key` is a null pointer with length 5"),
        ("huge_key", huge_key, "meta_str", "`key` claims"),
        ("null_dims", null_dims, "tensor_shape", "`dims` is a null pointer"),
        ("null_op", null_op, "op", "`op` is a null pointer"),
        ("misaligned_out", misaligned_out, "meta_int", "is not aligned to 8 bytes"),
        ("null_array_buf", null_array_buf, "meta_array_f64", "`buf` is a null pointer"),
    ];
    for (name, build, want_cb, want) in cases {
        let (cb, what) = callback_err(run(name, build));
        assert_eq!(cb, want_cb, "{name}");
        assert!(what.contains(want), "{name}: {what}");
    }
    assert_host_still_works();
}

unsafe extern "C" fn foreign_thread(host: *const RfHostV1, _: RfStr) -> i32 {
    let h = h(host);
    let (ctx, f) = (h.ctx as usize, h.meta_int);
    let rc = std::thread::spawn(move || {
        let mut v = 0i64;
        // SAFETY: valid arguments, but from a thread the host must refuse.
        unsafe { f(ctx as *mut _, RfStr::new("t.block_count"), &mut v) }
    })
    .join()
    .expect("thread");
    assert_eq!(rc, status::INVALID_ARGUMENT);
    status::OK
}

#[test]
fn callback_from_another_thread_is_refused() {
    let (cb, what) = callback_err(run("foreign", foreign_thread));
    assert_eq!(cb, "meta_int");
    assert!(what.contains("callbacks must come from the thread that called build"), "{what}");
    assert_host_still_works();
}

static STALE: AtomicUsize = AtomicUsize::new(0);
unsafe extern "C" fn keeps_ctx(host: *const RfHostV1, arch: RfStr) -> i32 {
    STALE.store(h(host).ctx as usize, Ordering::SeqCst);
    // SAFETY: forwarded.
    unsafe { good(host, arch) }
}

#[test]
fn ctx_used_after_build_is_ignored_not_dereferenced() {
    run("keeps_ctx", keeps_ctx).expect("builds");
    let mut v = 0i64;
    // The ctx is gone (its stack frame reused); the host must not touch it.
    // SAFETY: valid out pointer; the stale ctx is the point of the test.
    let rc = unsafe { super::meta_int(STALE.load(Ordering::SeqCst) as *mut _, RfStr::new("t.block_count"), &mut v) };
    assert_eq!(rc, status::INVALID_ARGUMENT);
    assert_eq!(v, 0);
}

/// Records the embedding op with an extension record built by `ext_of`.
fn with_ext(host: *const RfHostV1, ext: *const RfOpExt) -> i32 {
    let h = h(host);
    let mut w = base_op(op::WEIGHT, "token_embd.weight");
    w.tensor = RfStr::new("token_embd.weight");
    let mut id: RfNode = 0;
    // SAFETY: valid table; `ext` is whatever the case passes (checked by the host).
    unsafe { (h.op_ex)(h.ctx, &w, ext, &mut id) }
}

#[repr(C, align(8))]
struct Bigger {
    ext: RfOpExt,
    extra: [u8; 16],
}

unsafe extern "C" fn ext_unknown_bytes(host: *const RfHostV1, _: RfStr) -> i32 {
    let mut b = Bigger { ext: RfOpExt::new(), extra: [0; 16] };
    b.ext.struct_size = std::mem::size_of::<Bigger>() as u32;
    b.extra[3] = 1; // a field some newer host would know
    with_ext(host, &b.ext)
}
unsafe extern "C" fn ext_zero_tail(host: *const RfHostV1, arch: RfStr) -> i32 {
    let mut b = Bigger { ext: RfOpExt::new(), extra: [0; 16] };
    b.ext.struct_size = std::mem::size_of::<Bigger>() as u32;
    match with_ext(host, &b.ext) {
        // SAFETY: forwarded.
        status::OK => unsafe { good(host, arch) },
        rc => rc,
    }
}
unsafe extern "C" fn ext_too_small(host: *const RfHostV1, _: RfStr) -> i32 {
    let mut x = RfOpExt::new();
    x.struct_size = 4;
    with_ext(host, &x)
}
unsafe extern "C" fn ext_slot_used(host: *const RfHostV1, _: RfStr) -> i32 {
    let mut x = RfOpExt::new();
    x.iparams[2] = 9; // integer parameter 10 of WEIGHT
    with_ext(host, &x)
}

#[test]
fn extension_records_are_read_by_size_and_unknown_bytes_refused() {
    match run("ext_unknown", ext_unknown_bytes) {
        Err(RuntimeError::Graph { node, what }) => {
            assert_eq!(node, "token_embd.weight");
            let known = std::mem::size_of::<RfOpExt>();
            assert!(what.starts_with(&format!("WEIGHT: extension record byte {} is non-zero", known + 3)), "{what}");
        }
        other => panic!("expected a Graph error, got {other:?}"),
    }
    // A longer record whose unknown tail is zero is fine: a newer plugin using nothing new.
    run("ext_zero_tail", ext_zero_tail).expect("a zero tail is accepted");
    let (cb, what) = callback_err(run("ext_small", ext_too_small));
    assert_eq!(cb, "op_ex");
    assert!(what.contains("`ext.struct_size` = 4 is smaller than the first RfOpExt"), "{what}");
    match run("ext_slot", ext_slot_used) {
        Err(RuntimeError::Graph { what, .. }) => assert!(what.starts_with("WEIGHT iparams[10] = 9:"), "{what}"),
        other => panic!("expected a Graph error, got {other:?}"),
    }
    assert_host_still_works();
}

static ANSWERS: OnceLock<Vec<i32>> = OnceLock::new();
unsafe extern "C" fn asks(host: *const RfHostV1, arch: RfStr) -> i32 {
    let h = h(host);
    let q = |o, w, s, v| {
        // SAFETY: valid table.
        unsafe { (h.supports)(h.ctx, o, w, s, v) }
    };
    let _ = ANSWERS.set(vec![q(op::ATTENTION, cap::OP, 0, 0), q(op::ATTENTION, cap::IPARAM, 7, 0), q(1000, cap::OP, 0, 0)]);
    // SAFETY: forwarded.
    unsafe { good(host, arch) }
}

#[test]
fn capability_query_goes_through_the_table() {
    run("asks", asks).expect("builds");
    assert_eq!(ANSWERS.get().expect("asked"), &vec![status::OK, status::NOT_FOUND, status::NOT_FOUND]);
}

// A Rust plugin exported the usual way, whose build panics: the plugin's own guard catches it and
// the user gets the panic message with the plugin named.
static ARCHS: [rocmforge_abi::RfArchClaim; 1] = [rocmforge_abi::arch("t", "")];
static NONE_T: [rocmforge_abi::RfTensorMap; 0] = [];
static NONE_C: [rocmforge_abi::RfConfigMap; 0] = [];
fn panicking_build(_: &mut rocmforge_abi::Builder, arch: &str) -> Result<(), rocmforge_abi::OpError> {
    panic!("no weights for architecture '{arch}'")
}
rocmforge_abi::export_plugin! { name: "panics", version: "0", archs: ARCHS, tensors: NONE_T, config: NONE_C, build: panicking_build }

#[test]
fn panicking_rust_plugin_is_reported_with_its_message() {
    // SAFETY: the exported table is 'static.
    let build = unsafe { (*rocmforge_plugin_v1()).build };
    match run("panics", build) {
        Err(RuntimeError::PluginBuild { plugin, what, .. }) => {
            assert_eq!(plugin, "panics");
            assert_eq!(what, "plugin panicked: no weights for architecture 't'");
        }
        other => panic!("expected PluginBuild, got {other:?}"),
    }
    assert_host_still_works();
}
