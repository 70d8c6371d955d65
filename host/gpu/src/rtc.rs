//! Run-time kernel compilation: NVRTC (NVIDIA) and hipRTC (AMD) behind one table, like the
//! driver table in `api.rs`, plus the on-disk cache of compiled code objects.
//!
//! NVRTC produces a cubin for the exact `sm_XY` of the device (no PTX JIT at load); hipRTC a code
//! object for the device's `gfx...` target. Library search: `ROCMFORGE_NVRTC_LIB` /
//! `ROCMFORGE_HIPRTC_LIB`, then the usual sonames, then the toolkit directories (the H100 machine
//! keeps libnvrtc in /usr/local/cuda/lib64, off the loader path). HIP 5.x has no libhiprtc: its
//! hipRTC symbols live in libamdhip64 itself (ecosystem.md §1), the last candidate.
//!
//! Cache: `$ROCMFORGE_KERNEL_CACHE`, else `$XDG_CACHE_HOME/rocmforge/kernels`, else
//! `~/.cache/rocmforge/kernels`; one file per (source + headers, options, arch, driver and
//! compiler versions), named by the SHA-256 of all of them, written to a temporary name and
//! renamed so a concurrent reader never sees half a file. A cache that cannot be read or written
//! only costs a recompilation.

use std::ffi::{c_char, c_int, c_void, CString};
use std::path::PathBuf;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::api::{open_first, Vendor};
use crate::error::{GpuError, Result};

type Prog = *mut c_void;

macro_rules! rtc_table {
    ($( $f:ident : fn($($a:ty),*) -> $r:ty => $cn:literal $hn:literal; )*) => {
        /// Resolved NVRTC or hipRTC entry points (identical C signatures on both vendors).
        #[allow(dead_code)]
        pub(crate) struct RtcApi {
            pub vendor: Vendor,
            pub lib_path: String,
            _lib: libloading::Library,
            $( pub $f: unsafe extern "C" fn($($a),*) -> $r, )*
        }
        impl RtcApi {
            fn resolve(vendor: Vendor, lib: libloading::Library, lib_path: String) -> Result<Self> {
                Ok(RtcApi {
                    vendor,
                    $( $f: {
                        let name = match vendor { Vendor::Cuda => $cn, Vendor::Hip => $hn };
                        // SAFETY: the declared type is the symbol's C prototype on both vendors;
                        // the library is kept in the (leaked) table, so the pointer stays valid.
                        let s = unsafe { lib.get::<unsafe extern "C" fn($($a),*) -> $r>(name) }
                            .map_err(|_| GpuError::MissingSymbol { lib: lib_path.clone(), symbol: name.to_string() })?;
                        *s
                    }, )*
                    lib_path,
                    _lib: lib,
                })
            }
        }
    };
}

rtc_table! {
    version: fn(*mut c_int, *mut c_int) -> c_int => "nvrtcVersion" "hiprtcVersion";
    get_error_string: fn(c_int) -> *const c_char => "nvrtcGetErrorString" "hiprtcGetErrorString";
    create_program: fn(*mut Prog, *const c_char, *const c_char, c_int, *const *const c_char, *const *const c_char) -> c_int
        => "nvrtcCreateProgram" "hiprtcCreateProgram";
    compile_program: fn(Prog, c_int, *const *const c_char) -> c_int => "nvrtcCompileProgram" "hiprtcCompileProgram";
    get_log_size: fn(Prog, *mut usize) -> c_int => "nvrtcGetProgramLogSize" "hiprtcGetProgramLogSize";
    get_log: fn(Prog, *mut c_char) -> c_int => "nvrtcGetProgramLog" "hiprtcGetProgramLog";
    get_code_size: fn(Prog, *mut usize) -> c_int => "nvrtcGetCUBINSize" "hiprtcGetCodeSize";
    get_code: fn(Prog, *mut c_char) -> c_int => "nvrtcGetCUBIN" "hiprtcGetCode";
    destroy_program: fn(*mut Prog) -> c_int => "nvrtcDestroyProgram" "hiprtcDestroyProgram";
}

impl RtcApi {
    fn check(&self, call: &'static str, code: c_int) -> Result<()> {
        if code == 0 {
            return Ok(());
        }
        // SAFETY: *GetErrorString returns a static NUL-terminated string (or null).
        let p = unsafe { (self.get_error_string)(code) };
        let name = if p.is_null() {
            format!("error {code}")
        } else {
            // SAFETY: non-null, NUL-terminated, static.
            unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
        };
        Err(GpuError::Rtc { call, code, name })
    }

    /// (major, minor) of the compiler.
    pub(crate) fn version(&self) -> Result<(i32, i32)> {
        let (mut a, mut b) = (0, 0);
        // SAFETY: two valid out-pointers.
        self.check("rtcVersion", unsafe { (self.version)(&mut a, &mut b) })?;
        Ok((a, b))
    }
}

/// Candidate library paths for the compiler of vendor `v`.
pub(crate) fn rtc_candidates(v: Vendor) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let env = if v == Vendor::Cuda { "ROCMFORGE_NVRTC_LIB" } else { "ROCMFORGE_HIPRTC_LIB" };
    if let Ok(p) = std::env::var(env) {
        if !p.is_empty() {
            out.push(p);
        }
    }
    match v {
        Vendor::Cuda => {
            let names = ["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2"];
            out.extend(names.iter().map(|s| s.to_string()));
            let mut dirs: Vec<String> = Vec::new();
            for var in ["CUDA_PATH", "CUDA_HOME"] {
                if let Ok(d) = std::env::var(var) {
                    dirs.push(format!("{d}/lib64"));
                }
            }
            dirs.extend(["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"].map(String::from));
            for d in dirs {
                out.extend(names.iter().map(|n| format!("{d}/{n}")));
            }
        }
        Vendor::Hip => {
            let names = ["libhiprtc.so", "libhiprtc.so.7", "libhiprtc.so.6", "/opt/rocm/lib/libhiprtc.so"];
            out.extend(names.iter().map(|s| s.to_string()));
            out.extend(crate::api::driver_candidates(Vendor::Hip));
        }
    }
    out
}

static LOADED: Mutex<[Option<&'static RtcApi>; 2]> = Mutex::new([None, None]);

/// The process-wide compiler table of vendor `v`.
pub(crate) fn rtc(v: Vendor) -> Result<&'static RtcApi> {
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(api) = loaded[v as usize] {
        return Ok(api);
    }
    let cands = rtc_candidates(v);
    let mut tried = Vec::new();
    for c in &cands {
        let Ok((lib, path)) = open_first(std::slice::from_ref(c)) else {
            tried.push(c.clone());
            continue;
        };
        match RtcApi::resolve(v, lib, path) {
            Ok(api) => {
                let api: &'static RtcApi = Box::leak(Box::new(api));
                loaded[v as usize] = Some(api);
                return Ok(api);
            }
            // A runtime library without the compiler symbols (HIP 6+ libamdhip64): keep looking.
            Err(_) => tried.push(format!("{c} (no compiler symbols)")),
        }
    }
    Err(GpuError::LibraryNotFound { tried })
}

/// One source file to compile, with the headers it includes by name (`#include "compat.h"`).
pub struct KernelSource<'a> {
    /// Program name, shown in compiler logs and used in the cache file name.
    pub name: &'a str,
    pub source: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
}

/// What a compilation targets.
pub(crate) struct Target<'a> {
    pub vendor: Vendor,
    /// `sm_90` or `gfx90a`.
    pub arch: &'a str,
    /// Driver version number, part of the cache key (a new driver may reject old code).
    pub driver_version: i32,
    pub options: Vec<String>,
}

/// Compile `src` for `target` (or take it from the disk cache). Returns the code object (a
/// cubin or an AMD code object) ready for module load.
pub(crate) fn compile(src: &KernelSource<'_>, target: &Target<'_>) -> Result<Vec<u8>> {
    let api = rtc(target.vendor)?;
    let (maj, min) = api.version()?;
    let key = cache_key(src, target, (maj, min));
    let ext = if target.vendor == Vendor::Cuda { "cubin" } else { "hsaco" };
    let path = cache_dir().map(|d| d.join(format!("{}-{}-{}.{ext}", src.name, target.arch, &key[..24])));
    if let Some(p) = &path {
        if let Ok(bytes) = std::fs::read(p) {
            if !bytes.is_empty() {
                return Ok(bytes);
            }
        }
    }
    let code = compile_uncached(api, src, target)?;
    if let Some(p) = &path {
        // Best effort: a read-only home directory only costs a recompilation next time.
        let _ = write_atomic(p, &code);
    }
    Ok(code)
}

/// Compile without consulting the cache (used by `compile` and the compile-only check).
pub(crate) fn compile_uncached(api: &RtcApi, src: &KernelSource<'_>, target: &Target<'_>) -> Result<Vec<u8>> {
    let shape = |what: &str| GpuError::shape("compile", format!("{}: {what} contains a NUL byte", src.name));
    let c_src = CString::new(src.source).map_err(|_| shape("source"))?;
    let c_name = CString::new(format!("{}.cu", src.name)).map_err(|_| shape("name"))?;
    let mut h_src = Vec::new();
    let mut h_name = Vec::new();
    for (n, s) in src.headers {
        h_name.push(CString::new(*n).map_err(|_| shape("header name"))?);
        h_src.push(CString::new(*s).map_err(|_| shape("header"))?);
    }
    let hp: Vec<*const c_char> = h_src.iter().map(|c| c.as_ptr()).collect();
    let np: Vec<*const c_char> = h_name.iter().map(|c| c.as_ptr()).collect();
    let mut opts: Vec<String> = vec![format!("--gpu-architecture={}", target.arch)];
    opts.extend(target.options.iter().cloned());
    let c_opts: Vec<CString> = opts.iter().map(|o| CString::new(o.as_str())).collect::<Result<_, _>>().map_err(|_| shape("option"))?;
    let op: Vec<*const c_char> = c_opts.iter().map(|c| c.as_ptr()).collect();

    let mut prog: Prog = std::ptr::null_mut();
    // SAFETY: every pointer is a live NUL-terminated string (CStrings above) and the header arrays
    // have `headers.len()` entries.
    let rc = unsafe { (api.create_program)(&mut prog, c_src.as_ptr(), c_name.as_ptr(), hp.len() as c_int, hp.as_ptr(), np.as_ptr()) };
    api.check("rtcCreateProgram", rc)?;
    // Destroy the program on every path below.
    struct Guard<'a>(&'a RtcApi, Prog);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            // SAFETY: the program was created above and is destroyed once.
            unsafe { (self.0.destroy_program)(&mut self.1) };
        }
    }
    let guard = Guard(api, prog);
    // SAFETY: valid program; `op` holds `op.len()` live option strings.
    let rc = unsafe { (api.compile_program)(guard.1, op.len() as c_int, op.as_ptr()) };
    let log = program_log(api, guard.1);
    if rc != 0 {
        let log = if log.trim().is_empty() { format!("(no log; status {rc}, options {opts:?})") } else { log };
        return Err(GpuError::Compile { kernel: src.name.to_string(), log });
    }
    let mut size = 0usize;
    // SAFETY: valid program, valid out-pointer.
    api.check("rtcGetCodeSize", unsafe { (api.get_code_size)(guard.1, &mut size) })?;
    let mut code = vec![0u8; size];
    // SAFETY: `code` has the size the compiler reported.
    api.check("rtcGetCode", unsafe { (api.get_code)(guard.1, code.as_mut_ptr() as *mut c_char) })?;
    if code.is_empty() {
        return Err(GpuError::Compile { kernel: src.name.to_string(), log: format!("empty code object; log:\n{log}") });
    }
    Ok(code)
}

fn program_log(api: &RtcApi, prog: Prog) -> String {
    let mut n = 0usize;
    // SAFETY: valid program and out-pointer.
    if unsafe { (api.get_log_size)(prog, &mut n) } != 0 || n == 0 {
        return String::new();
    }
    let mut buf = vec![0u8; n];
    // SAFETY: buffer of the reported size.
    if unsafe { (api.get_log)(prog, buf.as_mut_ptr() as *mut c_char) } != 0 {
        return String::new();
    }
    while buf.last() == Some(&0) {
        buf.pop();
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn cache_key(src: &KernelSource<'_>, t: &Target<'_>, rtc_version: (i32, i32)) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(src.name.as_bytes());
    field(src.source.as_bytes());
    for (n, s) in src.headers {
        field(n.as_bytes());
        field(s.as_bytes());
    }
    for o in &t.options {
        field(o.as_bytes());
    }
    field(t.vendor.name().as_bytes());
    field(t.arch.as_bytes());
    field(&t.driver_version.to_le_bytes());
    field(&rtc_version.0.to_le_bytes());
    field(&rtc_version.1.to_le_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The kernel cache directory (see the module header); `None` if no home can be found.
pub fn cache_dir() -> Option<PathBuf> {
    let nonempty = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty()).map(PathBuf::from);
    if let Some(d) = nonempty("ROCMFORGE_KERNEL_CACHE") {
        return Some(d);
    }
    if let Some(d) = nonempty("XDG_CACHE_HOME") {
        return Some(d.join("rocmforge").join("kernels"));
    }
    nonempty("HOME").map(|h| h.join(".cache").join("rocmforge").join("kernels"))
}

fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let io = |source| GpuError::Cache { path: path.display().to_string(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(arch: &str, opts: &[&str]) -> Target<'static> {
        let arch: &'static str = Box::leak(arch.to_string().into_boxed_str());
        Target { vendor: Vendor::Cuda, arch, driver_version: 13000, options: opts.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn cache_key_changes_with_every_input() {
        let src = KernelSource { name: "ops", source: "a", headers: &[("compat.h", "x")] };
        let base = cache_key(&src, &target("sm_90", &["-DA"]), (13, 0));
        assert_eq!(base, cache_key(&src, &target("sm_90", &["-DA"]), (13, 0)));
        assert_ne!(base, cache_key(&src, &target("sm_80", &["-DA"]), (13, 0)));
        assert_ne!(base, cache_key(&src, &target("sm_90", &["-DB"]), (13, 0)));
        assert_ne!(base, cache_key(&src, &target("sm_90", &["-DA"]), (13, 1)));
        let src2 = KernelSource { name: "ops", source: "a", headers: &[("compat.h", "y")] };
        assert_ne!(base, cache_key(&src2, &target("sm_90", &["-DA"]), (13, 0)));
        // Field boundaries are part of the hash: "ab" + "c" differs from "a" + "bc".
        let t = target("sm_90", &["ab", "c"]);
        let u = target("sm_90", &["a", "bc"]);
        assert_ne!(cache_key(&src, &t, (13, 0)), cache_key(&src, &u, (13, 0)));
    }
}
