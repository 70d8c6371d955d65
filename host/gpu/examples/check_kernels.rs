//! Compile-only check of every kernel in `kernels/`, with no GPU: NVRTC (NVIDIA) or hipRTC (AMD)
//! compile each source for the given targets and report code-object sizes or the compiler log.
//!
//! Usage: `check_kernels [cuda:sm_90[:32] | hip:gfx90a[:64] ...]`; with no arguments:
//! `hip:gfx90a:64 hip:gfx1030:32 cuda:sm_90:32`. A target whose compiler library is absent is
//! skipped with a note unless ROCMFORGE_REQUIRE_RTC=1 (then it fails). Exit status 1 on any
//! compile error. Used by scripts/check-kernels.sh.
use rocmforge_gpu::{compile_all, compiler_library, GpuError, Vendor};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let targets = if args.is_empty() { vec!["hip:gfx90a:64".to_string(), "hip:gfx1030:32".into(), "cuda:sm_90:32".into()] } else { args };
    let require = std::env::var("ROCMFORGE_REQUIRE_RTC").is_ok_and(|v| v == "1");
    let mut failed = false;
    for t in &targets {
        let parts: Vec<&str> = t.split(':').collect();
        let (vendor, arch) = match parts.as_slice() {
            ["cuda", a, ..] => (Vendor::Cuda, *a),
            ["hip", a, ..] => (Vendor::Hip, *a),
            _ => {
                eprintln!("bad target {t}: expected cuda:ARCH[:WARP] or hip:ARCH[:WARP]");
                std::process::exit(2);
            }
        };
        let default_warp = if vendor == Vendor::Hip && arch.starts_with("gfx9") { 64 } else { 32 };
        let warp = parts.get(2).and_then(|w| w.parse().ok()).unwrap_or(default_warp);
        let start = std::time::Instant::now();
        match compile_all(vendor, arch, warp) {
            Ok(sizes) => {
                let lib = compiler_library(vendor).unwrap_or_default();
                let list: Vec<String> = sizes.iter().map(|(n, b)| format!("{n} {b} B")).collect();
                println!("ok   {t} (warp {warp}) in {:.1} s with {lib}: {}", start.elapsed().as_secs_f64(), list.join(", "));
            }
            Err(GpuError::LibraryNotFound { tried }) if !require => {
                println!("skip {t}: no compiler library (tried {} paths: {})", tried.len(), tried.first().cloned().unwrap_or_default());
            }
            Err(e) => {
                println!("FAIL {t} (warp {warp}): {e}");
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
