//! The C header `include/rocmforge_plugin.h` against the Rust ABI definitions.
//!
//! A C program, generated here from one list of checks, is compiled with the system C compiler
//! (`cc`, strict C99 with warnings as errors) against the header and prints `sizeof`, `offsetof`,
//! alignment and field sizes of every ABI struct and the value (and size) of every constant; each
//! number must equal what Rust's `size_of` / `offset_of!` / `align_of` / constants give. Two
//! completeness checks keep the list itself honest: every `pub struct Rf*` field and every
//! `pub const` of `src/lib.rs` must be in the list, and every `#define RF_*` of the header too,
//! so a field or constant added on one side only fails this test.
//!
//! Modelled on the layout tests bindgen generates (`size_of`/`offset_of` per field), run in the
//! other direction: the C compiler is the reference for the C side.

use std::collections::BTreeSet;
use std::mem::{align_of, offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

use rocmforge_abi::{
    cap, moe_act, moe_gating, moe_group, op, output_kind, pool, rope_yarn, rows_src, status, tensor_flags, transform, RfArchClaim,
    RfConfigMap, RfHostV1, RfMetaClaim, RfNode, RfOp, RfOpExt, RfPluginV1, RfStr, RfTensorMap, ABI_VERSION, NO_NODE, PLUGIN_SYMBOL,
};

const LIB_RS: &str = include_str!("../src/lib.rs");
const HEADER: &str = include_str!("../include/rocmforge_plugin.h");

/// `size_of` the field `f` selects, without needing a value.
fn field_size<T, F>(_f: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// One numeric check: a C expression and the value Rust says it must have.
struct Check {
    c_expr: String,
    rust: i128,
}

#[derive(Default)]
struct Checks {
    list: Vec<Check>,
    /// struct name -> field names covered.
    fields: Vec<(&'static str, Vec<&'static str>)>,
    /// (Rust path "op::WEIGHT", C name "RF_OP_WEIGHT") covered.
    consts: Vec<(String, String)>,
    /// C typedefs the generated program needs (alignment probes).
    prelude: String,
}

impl Checks {
    fn num(&mut self, c_expr: impl Into<String>, rust: i128) {
        self.list.push(Check { c_expr: c_expr.into(), rust });
    }
}

macro_rules! check_struct {
    ($c:ident, $t:ident { $($f:ident),* $(,)? }) => {{
        let t = stringify!($t);
        $c.num(format!("sizeof({t})"), size_of::<$t>() as i128);
        $c.prelude.push_str(&format!("typedef struct {{ char c; {t} x; }} align_{t};\n"));
        $c.num(format!("offsetof(align_{t}, x)"), align_of::<$t>() as i128);
        $(
            let f = stringify!($f);
            $c.num(format!("offsetof({t}, {f})"), offset_of!($t, $f) as i128);
            $c.num(format!("sizeof((({t} *)0)->{f})"), field_size(|s: &$t| &s.$f) as i128);
        )*
        $c.fields.push((t, vec![$(stringify!($f)),*]));
    }};
}

macro_rules! check_const {
    ($c:ident, $prefix:literal, $m:ident :: { $($k:ident),* $(,)? }) => {{
        $(
            let cname = format!("{}{}", $prefix, stringify!($k));
            $c.num(format!("{cname}"), $m::$k as i128);
            $c.num(format!("sizeof({cname})"), size_of_val(&$m::$k) as i128);
            $c.consts.push((format!("{}::{}", stringify!($m), stringify!($k)), cname));
        )*
    }};
}

fn all_checks() -> Checks {
    let mut c = Checks::default();
    check_struct!(c, RfStr { ptr, len });
    check_struct!(c, RfTensorMap { gguf, hf, flags, transform });
    check_struct!(c, RfConfigMap { gguf, hf });
    check_struct!(c, RfArchClaim { gguf_arch, hf_arch });
    check_struct!(
        c,
        RfPluginV1 {
            abi_version,
            struct_size,
            name,
            version,
            archs,
            n_archs,
            tensors,
            n_tensors,
            config,
            n_config,
            build,
            meta_claims,
            n_meta_claims
        }
    );
    check_struct!(c, RfMetaClaim { gguf_arch, key });
    check_struct!(c, RfOp { code, inputs, iparams, fparams, name, tensor });
    check_struct!(
        c,
        RfHostV1 {
            abi_version,
            struct_size,
            ctx,
            meta_int,
            meta_float,
            meta_str,
            meta_array_f64,
            tensor_shape,
            op,
            set_error,
            op_ex,
            supports,
            last_error
        }
    );
    check_struct!(c, RfOpExt { struct_size, flags, inputs, iparams, fparams });
    c.num("RF_HOST_V1_BASE_SIZE", RfHostV1::base_size() as i128);
    c.consts.push(("RfHostV1::base_size()".into(), "RF_HOST_V1_BASE_SIZE".into()));
    c.num("RF_HOST_V1_SIZE_WITH_EXTENSIONS", size_of::<RfHostV1>() as i128);
    c.consts.push(("RfHostV1::has_extensions".into(), "RF_HOST_V1_SIZE_WITH_EXTENSIONS".into()));
    assert!(RfHostV1::has_extensions(size_of::<RfHostV1>() as u32) && !RfHostV1::has_extensions(RfHostV1::base_size() as u32));
    c.num("sizeof(RfNode)", size_of::<RfNode>() as i128);
    c.num("(RfNode)-1 > 0", 1); // unsigned, as Rust's u32
    c.num("sizeof(RfPluginEntryV1)", size_of::<unsafe extern "C" fn() -> *const RfPluginV1>() as i128);

    check_const!(c, "RF_STATUS_", status::{ OK, ERROR, NOT_FOUND, WRONG_TYPE, PANIC, TOO_SMALL, INVALID_ARGUMENT });
    check_const!(c, "RF_CAP_", cap::{ OP, INPUT, IPARAM, FPARAM, IPARAM_VALUE });
    check_const!(c, "RF_TRANSFORM_", transform::{ NONE, PERMUTE_Q, PERMUTE_K, ADD_ONE, INTERLEAVED_GATE, INTERLEAVED_UP, TRANSPOSE, KV_B_TO_K_B, KV_B_TO_V_B });
    check_const!(c, "RF_TENSOR_FLAG_", tensor_flags::{ OPTIONAL });
    check_const!(c, "RF_OP_", op::{
        WEIGHT, GET_ROWS, RMS_NORM, LAYER_NORM, MATMUL, ADD, MUL, SCALE, ROPE, ATTENTION, SILU, GELU,
        GELU_ERF, SWIGLU, GEGLU, SOFTCAP, VIEW, OUTPUT_ROWS, OUTPUT, POOL, L2_NORM, MOE_ROUTE, MOE_GATE_UP, MOE_DOWN, SIGMOID,
        HEAD_MATMUL, CONCAT, LATENT_ATTENTION
    });
    check_const!(c, "RF_MOE_GATING_", moe_gating::{ SOFTMAX, SOFTMAX_NORM, SIGMOID, SIGMOID_NORM });
    check_const!(c, "RF_MOE_GROUP_", moe_group::{ MAX, TOP2_SUM });
    check_const!(c, "RF_MOE_ACT_", moe_act::{ SWIGLU, GEGLU, SWIGLU_OAI });
    check_const!(c, "RF_ROPE_YARN_", rope_yarn::{ TRUNCATED, EXACT });
    check_const!(c, "RF_ROWS_SRC_", rows_src::{ TOKENS, POSITIONS, CONSTANT });
    check_const!(c, "RF_POOL_", pool::{ MEAN, CLS, LAST });
    check_const!(c, "RF_OUTPUT_KIND_", output_kind::{ LOGITS, EMBEDDING });
    c.num("RF_ABI_VERSION", ABI_VERSION as i128);
    c.num("sizeof(RF_ABI_VERSION)", size_of_val(&ABI_VERSION) as i128);
    c.consts.push(("ABI_VERSION".into(), "RF_ABI_VERSION".into()));
    c.num("RF_NO_NODE", NO_NODE as i128);
    c.num("sizeof(RF_NO_NODE)", size_of_val(&NO_NODE) as i128);
    c.consts.push(("NO_NODE".into(), "RF_NO_NODE".into()));
    // PLUGIN_SYMBOL is a string: checked separately (first line the program prints).
    c.consts.push(("PLUGIN_SYMBOL".into(), "RF_PLUGIN_SYMBOL".into()));
    c
}

fn abi_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Compile `src` with the system C compiler into `out`, failing with a clear message without one.
fn cc(args: &[&str], what: &str) {
    let result = Command::new("cc").args(args).output();
    match result {
        Err(e) => panic!("cannot run the C compiler `cc` ({e}): install gcc or clang; this test compiles {what}"),
        Ok(o) if !o.status.success() => {
            panic!("cc failed on {what}:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
        }
        Ok(_) => {}
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("abi-header-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("create scratch dir under CARGO_TARGET_TMPDIR");
    d
}

#[test]
fn header_layout_and_constants_match_rust() {
    let checks = all_checks();
    let mut prog = String::from("#include <stdio.h>\n#include \"rocmforge_plugin.h\"\n");
    prog.push_str(&checks.prelude);
    prog.push_str("int main(void) {\n    printf(\"%s\\n\", RF_PLUGIN_SYMBOL);\n");
    for ch in &checks.list {
        prog.push_str(&format!("    printf(\"%lld\\n\", (long long)({}));\n", ch.c_expr));
    }
    prog.push_str("    return 0;\n}\n");

    let dir = scratch("layout");
    let src = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&src, &prog).expect("write layout.c");
    let inc = abi_dir().join("include");
    cc(
        &[
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-pedantic",
            "-Werror",
            "-I",
            inc.to_str().unwrap(),
            src.to_str().unwrap(),
            "-o",
            exe.to_str().unwrap(),
        ],
        "the header layout probe",
    );
    let out = Command::new(&exe).output().expect("run the layout probe");
    assert!(out.status.success(), "layout probe failed");
    let text = String::from_utf8(out.stdout).expect("probe output is ASCII");
    let mut lines = text.lines();
    assert_eq!(lines.next().map(str::as_bytes), Some(PLUGIN_SYMBOL), "RF_PLUGIN_SYMBOL");
    let mut mismatches = Vec::new();
    for ch in &checks.list {
        let got: i128 = lines.next().and_then(|l| l.trim().parse().ok()).expect("one number per check");
        if got != ch.rust {
            mismatches.push(format!("{}: C says {got}, Rust says {}", ch.c_expr, ch.rust));
        }
    }
    assert!(mismatches.is_empty(), "header and Rust ABI disagree:\n{}", mismatches.join("\n"));
    assert!(checks.list.len() > 100, "suspiciously few checks: {}", checks.list.len());
}

/// `pub struct RfXxx { pub a: .., pub b: .. }` blocks of lib.rs: struct name -> field names.
fn rust_struct_fields() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut cur: Option<(String, Vec<String>)> = None;
    for line in LIB_RS.lines() {
        if let Some(rest) = line.strip_prefix("pub struct ") {
            let name = rest.split(|c: char| !c.is_alphanumeric() && c != '_').next().unwrap_or("").to_string();
            if rest.trim_end().ends_with('{') {
                cur = Some((name, Vec::new()));
            }
            continue;
        }
        if let Some((_, fields)) = cur.as_mut() {
            if line.starts_with('}') {
                out.push(cur.take().expect("inside a struct"));
            } else if let Some(f) = line.trim_start().strip_prefix("pub ") {
                if let Some((name, _)) = f.split_once(':') {
                    fields.push(name.trim().to_string());
                }
            }
        }
    }
    out
}

/// Every `pub const NAME` of lib.rs, as "NAME" (top level) or "module::NAME".
fn rust_consts() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut module: Option<String> = None;
    for line in LIB_RS.lines() {
        if let Some(rest) = line.strip_prefix("pub mod ") {
            if rest.trim_end().ends_with('{') {
                module = Some(rest.trim_end_matches(|c: char| c == '{' || c.is_whitespace()).to_string());
            }
            continue;
        }
        if module.is_some() && line.starts_with('}') {
            module = None;
            continue;
        }
        if let Some(rest) = line.trim_start().strip_prefix("pub const ").filter(|r| !r.starts_with("fn ")) {
            let name = rest.split(':').next().unwrap_or("").trim();
            // `impl` blocks hold associated consts (RfStr::EMPTY), not ABI constants.
            if line.starts_with("pub const ") || module.is_some() {
                out.insert(match &module {
                    Some(m) => format!("{m}::{name}"),
                    None => name.to_string(),
                });
            }
        }
    }
    out
}

#[test]
fn every_rust_field_and_constant_is_checked() {
    let checks = all_checks();
    let rust = rust_struct_fields();
    let rf: Vec<_> = rust.iter().filter(|(n, _)| n.starts_with("Rf")).collect();
    assert!(rf.len() >= 7, "parsed only {} Rf structs from lib.rs: {rust:?}", rf.len());
    for (name, fields) in rf {
        let covered =
            checks.fields.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("struct {name} is not checked against the header"));
        let covered: Vec<String> = covered.1.iter().map(|s| s.to_string()).collect();
        assert_eq!(&covered, fields, "fields of {name} (in order) differ between lib.rs and this test's list");
    }
    let consts = rust_consts();
    assert!(consts.contains("op::OUTPUT") && consts.contains("status::PANIC"), "lib.rs parse failed: {consts:?}");
    let covered: BTreeSet<String> = checks.consts.iter().map(|(r, _)| r.clone()).collect();
    let missing: Vec<_> = consts.difference(&covered).collect();
    assert!(missing.is_empty(), "constants of lib.rs not checked against the header: {missing:?}");
}

#[test]
fn every_header_define_is_checked() {
    let checks = all_checks();
    // Helper macros, not ABI values.
    let helpers = ["RF_PLUGIN_EXPORT", "RF_STR_INIT", "RF_STR_LIT"];
    let defined: BTreeSet<String> = HEADER
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("#define "))
        .map(|r| r.split(|c: char| !c.is_alphanumeric() && c != '_').next().unwrap_or("").to_string())
        .filter(|n| n.starts_with("RF_") && !helpers.contains(&n.as_str()))
        .collect();
    let covered: BTreeSet<String> = checks.consts.iter().map(|(_, c)| c.clone()).collect();
    let unchecked: Vec<_> = defined.difference(&covered).collect();
    assert!(unchecked.is_empty(), "header defines not checked against Rust: {unchecked:?}");
    assert!(defined.len() >= 30, "parsed only {} defines", defined.len());
}

/// The header is usable from strict C99 with a static plugin table, as the docs promise.
#[test]
fn header_compiles_a_static_plugin_table() {
    let dir = scratch("static");
    let src = dir.join("table.c");
    std::fs::write(
        &src,
        r#"#include "rocmforge_plugin.h"
static int32_t build(const RfHostV1 *host, RfStr arch) { (void)arch; return host ? RF_STATUS_OK : RF_STATUS_ERROR; }
static const RfArchClaim archs[1] = {{RF_STR_INIT("x"), RF_STR_INIT("XForCausalLM")}};
static const RfTensorMap tensors[1] = {{RF_STR_INIT("output.weight"), RF_STR_INIT("lm_head.weight"), RF_TENSOR_FLAG_OPTIONAL, RF_TRANSFORM_NONE}};
static const RfPluginV1 table = {RF_ABI_VERSION, sizeof(RfPluginV1), RF_STR_INIT("x"), RF_STR_INIT("0"),
    archs, 1, tensors, 1, NULL, 0, build, NULL, 0};
RF_PLUGIN_EXPORT const RfPluginV1 *rocmforge_plugin_v1(void) { return &table; }
RfPluginEntryV1 entry = rocmforge_plugin_v1;
"#,
    )
    .expect("write table.c");
    let inc = abi_dir().join("include");
    let obj = dir.join("table.o");
    cc(
        &[
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-pedantic",
            "-Werror",
            "-c",
            "-I",
            inc.to_str().unwrap(),
            src.to_str().unwrap(),
            "-o",
            obj.to_str().unwrap(),
        ],
        "a static plugin table",
    );
}
