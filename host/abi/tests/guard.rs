//! Panics and errors inside a Rust plugin never unwind into the host: they become a status code
//! and a message handed to `set_error`.
//!
//! The test binary is itself a plugin: `export_plugin!` below generates the same `extern "C"`
//! entry points a real cdylib exports, and the tests call them through a mock [`RfHostV1`] the
//! way the host does. A C plugin cannot panic, so this is where the "plugin panicked inside
//! build" failure mode is covered (the host side of a build error is covered by
//! host/runtime/tests/c_plugin.rs).

use std::ffi::c_void;

use rocmforge_abi::{arch, guard, op, status, Builder, Meta, OpError, RfHostV1, RfNode, RfOp, RfStr, ABI_VERSION};

/// What the mock host saw.
#[derive(Default)]
struct Mock {
    errors: Vec<String>,
    ops: Vec<(u32, String)>,
    /// Ops recorded through op_ex.
    ext_ops: Vec<String>,
}

fn mock<'a>(ctx: *mut c_void) -> &'a mut Mock {
    // SAFETY: every table built by `host_table` points ctx at a live `Mock` owned by the test.
    unsafe { &mut *(ctx as *mut Mock) }
}

unsafe extern "C" fn meta_int(_: *mut c_void, key: RfStr, out: *mut i64) -> i32 {
    // SAFETY: the key is valid for the call (ABI).
    match unsafe { key.as_str() } {
        Some("t.block_count") => {
            // SAFETY: out is writable (ABI).
            unsafe { *out = 2 };
            status::OK
        }
        _ => status::NOT_FOUND,
    }
}
unsafe extern "C" fn meta_float(_: *mut c_void, _: RfStr, _: *mut f64) -> i32 {
    status::NOT_FOUND
}
unsafe extern "C" fn meta_str(_: *mut c_void, _: RfStr, _: *mut RfStr) -> i32 {
    status::NOT_FOUND
}
unsafe extern "C" fn meta_array_f64(_: *mut c_void, _: RfStr, _: *mut f64, _: usize, _: *mut usize) -> i32 {
    status::NOT_FOUND
}
unsafe extern "C" fn tensor_shape(_: *mut c_void, _: RfStr, _: *mut i64, _: *mut u32) -> i32 {
    status::NOT_FOUND
}
unsafe extern "C" fn record_op(ctx: *mut c_void, o: *const RfOp, out: *mut RfNode) -> i32 {
    let m = mock(ctx);
    // SAFETY: the op and its strings are valid for the call (ABI).
    let (code, name) = unsafe { ((*o).code, String::from_utf8_lossy((*o).name.as_bytes()).into_owned()) };
    m.ops.push((code, name));
    // SAFETY: out is writable (ABI).
    unsafe { *out = (m.ops.len() - 1) as RfNode };
    status::OK
}
unsafe extern "C" fn set_error(ctx: *mut c_void, msg: RfStr) {
    // SAFETY: the message is valid for the call (ABI); copied here.
    let s = String::from_utf8_lossy(unsafe { msg.as_bytes() }).into_owned();
    mock(ctx).errors.push(s);
}

fn host_table(m: &mut Mock) -> RfHostV1 {
    RfHostV1 {
        abi_version: ABI_VERSION,
        struct_size: std::mem::size_of::<RfHostV1>() as u32,
        ctx: m as *mut Mock as *mut c_void,
        meta_int,
        meta_float,
        meta_str,
        meta_array_f64,
        tensor_shape,
        op: record_op,
        set_error,
        op_ex,
        supports,
        last_error,
    }
}

unsafe extern "C" fn op_ex(ctx: *mut c_void, o: *const RfOp, _ext: *const rocmforge_abi::RfOpExt, out: *mut RfNode) -> i32 {
    // SAFETY: the op and its strings are valid for the call (ABI).
    let name = unsafe { String::from_utf8_lossy((*o).name.as_bytes()).into_owned() };
    mock(ctx).ext_ops.push(name);
    // SAFETY: forwarded arguments, valid per the ABI.
    unsafe { record_op(ctx, o, out) }
}
unsafe extern "C" fn supports(_: *mut c_void, _: u32, _: u32, _: u32, _: i64) -> i32 {
    status::NOT_FOUND
}
unsafe extern "C" fn last_error(_: *mut c_void, _: *mut RfStr) -> i32 {
    status::NOT_FOUND
}

// ------------------------------------------------------------------------------------------
// A Rust plugin whose behaviour is chosen by the architecture name it is asked to build.
// ------------------------------------------------------------------------------------------

static ARCHS: [rocmforge_abi::RfArchClaim; 1] = [arch("t", "")];
static TENSORS: [rocmforge_abi::RfTensorMap; 0] = [];
static CONFIG: [rocmforge_abi::RfConfigMap; 0] = [];

fn build(b: &mut Builder, arch: &str) -> Result<(), OpError> {
    match arch {
        "panic_str" => panic!("boom in build"),
        "panic_string" => {
            let n = b.meta_usize("t.block_count")?;
            panic!("layer {} of {n} has no weights", n + 1)
        }
        "index" => {
            let v: Vec<usize> = Vec::new();
            let i = b.meta_usize("t.block_count")?;
            Err(OpError(format!("unreachable {}", v[i])))
        }
        "error" => Err(OpError(format!("missing metadata key '{}'", "t.embedding_length"))),
        _ => {
            let x = b.weight("token_embd.weight")?;
            let x = b.get_rows("inp_embd", x)?;
            b.output("logits", x)?;
            Ok(())
        }
    }
}

rocmforge_abi::export_plugin! {
    name: "guard-test",
    version: "0",
    archs: ARCHS,
    tensors: TENSORS,
    config: CONFIG,
    build: build,
}

/// Call the exported build for `arch` through `host`, as the runtime does.
fn call_build(host: &RfHostV1, arch: &str) -> i32 {
    let table = rocmforge_plugin_v1();
    // SAFETY: the exported table is 'static; host and arch live across the call.
    unsafe { ((*table).build)(host, RfStr::new(arch)) }
}

#[test]
fn exported_table_is_well_formed() {
    // SAFETY: the entry point returns a pointer to a 'static table.
    let t = unsafe { &*rocmforge_plugin_v1() };
    assert_eq!(t.abi_version, ABI_VERSION);
    assert_eq!(t.struct_size as usize, std::mem::size_of::<rocmforge_abi::RfPluginV1>());
    // SAFETY: 'static strings from the macro.
    assert_eq!(unsafe { t.name.as_str() }, Some("guard-test"));
    assert_eq!(t.n_archs, 1);
}

#[test]
fn panic_with_str_in_build_becomes_status_panic_and_message() {
    let mut m = Mock::default();
    let h = host_table(&mut m);
    let rc = call_build(&h, "panic_str");
    assert_eq!(rc, status::PANIC);
    assert_eq!(m.errors, vec!["plugin panicked: boom in build".to_string()]);
}

#[test]
fn panic_with_formatted_message_keeps_the_message() {
    let mut m = Mock::default();
    let h = host_table(&mut m);
    let rc = call_build(&h, "panic_string");
    assert_eq!(rc, status::PANIC);
    assert_eq!(m.errors, vec!["plugin panicked: layer 3 of 2 has no weights".to_string()]);
}

#[test]
fn index_out_of_bounds_panic_is_caught() {
    let mut m = Mock::default();
    let h = host_table(&mut m);
    assert_eq!(call_build(&h, "index"), status::PANIC);
    assert_eq!(m.errors.len(), 1);
    assert!(m.errors[0].starts_with("plugin panicked: index out of bounds"), "{:?}", m.errors);
}

#[test]
fn error_in_build_becomes_status_error_and_message() {
    let mut m = Mock::default();
    let h = host_table(&mut m);
    assert_eq!(call_build(&h, "error"), status::ERROR);
    assert_eq!(m.errors, vec!["missing metadata key 't.embedding_length'".to_string()]);
}

#[test]
fn successful_build_records_ops_and_no_error() {
    let mut m = Mock::default();
    let h = host_table(&mut m);
    assert_eq!(call_build(&h, "ok"), status::OK);
    assert!(m.errors.is_empty(), "{:?}", m.errors);
    let codes: Vec<u32> = m.ops.iter().map(|(c, _)| *c).collect();
    assert_eq!(codes, vec![op::WEIGHT, op::GET_ROWS, op::OUTPUT]);
    assert_eq!(m.ops[1].1, "inp_embd");
}

#[test]
fn plugin_refuses_a_host_of_another_abi_version() {
    let mut m = Mock::default();
    let mut h = host_table(&mut m);
    h.abi_version = ABI_VERSION + 1;
    assert_eq!(call_build(&h, "ok"), status::ERROR);
    assert_eq!(m.errors, vec![format!("host ABI version {} but plugin built for {ABI_VERSION}", ABI_VERSION + 1)]);
    assert!(m.ops.is_empty(), "no op may be recorded through a refused table");
}

#[test]
fn plugin_refuses_a_host_table_that_is_too_small() {
    let mut m = Mock::default();
    let mut h = host_table(&mut m);
    h.struct_size = 16;
    assert_eq!(call_build(&h, "ok"), status::ERROR);
    assert_eq!(m.errors, vec!["host table of 16 bytes is older than this plugin expects".to_string()]);
    assert!(m.ops.is_empty());
}

/// `guard` on its own: `g` wraps it for a host table that outlives every call.
fn g<F: FnOnce() -> Result<(), String> + std::panic::UnwindSafe>(h: *const RfHostV1, f: F) -> i32 {
    // SAFETY: callers pass null or a table that lives across the call.
    unsafe { guard(h, f) }
}

#[test]
fn guard_directly_ok_error_panic() {
    let mut m = Mock::default();
    let h = host_table(&mut m);
    assert_eq!(g(&h, || Ok(())), status::OK);
    assert_eq!(g(&h, || Err("bad".into())), status::ERROR);
    assert_eq!(g(&h, || -> Result<(), String> { std::panic::panic_any(17u32) }), status::PANIC);
    assert_eq!(m.errors, vec!["bad".to_string(), "plugin panicked: unknown panic".to_string()]);
}

#[test]
fn guard_with_null_host_still_catches() {
    assert_eq!(g(std::ptr::null(), || panic!("nobody to tell")), status::PANIC);
    assert_eq!(g(std::ptr::null(), || Err("nobody to tell".into())), status::ERROR);
}

// ------------------------------------------------------------------------------------------
// A host of the first revision of v1 (table ending at set_error): a plugin rebuilt against the
// current header still works on it, answers `false` to capability queries and refuses, with a
// message, an op that needs extension slots.
// ------------------------------------------------------------------------------------------

#[test]
fn builder_works_on_a_first_revision_host() {
    let mut m = Mock::default();
    let mut h = host_table(&mut m);
    h.struct_size = RfHostV1::base_size() as u32;
    assert_eq!(call_build(&h, "ok"), status::OK, "{:?}", m.errors);
    assert_eq!(m.ops.len(), 3);
    // SAFETY: `h` is a valid table for the builder's lifetime.
    let mut b = unsafe { Builder::from_raw(&h) }.expect("a first-revision host is accepted");
    assert!(!b.supports(op::ATTENTION, rocmforge_abi::cap::OP, 0, 0), "an old host cannot answer: no");
    let x = rocmforge_abi::Node(0);
    let err = b.raw_op(op::SILU, "x_act", &[Some(x), None, None, None, None, Some(x)], &[], &[], "").unwrap_err();
    assert_eq!(err.0, "op 'x_act' needs extension slots, which this host (ABI v1, first revision) does not have");
    // Base-slot ops still go through `op`.
    b.raw_op(op::SILU, "x_act", &[Some(x)], &[], &[], "").expect("a base op");
}

#[test]
fn builder_uses_op_ex_only_when_an_extension_slot_is_set() {
    let mut m = Mock::default();
    let h = host_table(&mut m);
    // SAFETY: `h` is a valid table for the builder's lifetime.
    let mut b = unsafe { Builder::from_raw(&h) }.expect("builder");
    b.raw_op(op::SILU, "a", &[Some(rocmforge_abi::Node(0))], &[], &[], "").expect("base op");
    b.raw_op(op::SILU, "b", &[Some(rocmforge_abi::Node(0))], &[0; 9], &[], "").expect("zero extension slots: base op");
    b.raw_op(op::SILU, "c", &[Some(rocmforge_abi::Node(0))], &[0, 0, 0, 0, 0, 0, 0, 0, 5], &[], "").expect("extension op");
    let err = b.raw_op(op::SILU, "d", &[], &[0; 17], &[], "").unwrap_err();
    assert!(err.0.contains("exceed the ABI's 8, 16 and 16"), "{err}");
    drop(b);
    assert_eq!(m.ops.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>(), vec!["a", "b", "c"]);
    assert_eq!(m.ext_ops, vec!["c".to_string()], "only the op with a set extension slot used op_ex");
}
