//! The instruction-set levels this machine reports, so the suite cannot silently test only the
//! scalar path: on x86-64 CI (AVX2 at least) and on AArch64 (NEON always; `sdot` where the CPU,
//! or qemu's default `max` model, has FEAT_DotProd) `Isa::all_supported` must list a SIMD level,
//! and `Isa::detect` must pick the best one unless `ROCMFORGE_CPU_ISA` lowers it.

use rocmforge_cpu::Isa;

#[test]
fn simd_level_is_detected_for_this_architecture() {
    let best = Isa::best_supported();
    let all = Isa::all_supported();
    assert_eq!(all.first(), Some(&Isa::Scalar));
    assert_eq!(all.last(), Some(&best));
    if cfg!(target_arch = "aarch64") {
        assert!(matches!(best, Isa::Neon | Isa::NeonDot), "AArch64 must run the NEON kernels, got {best:?}");
        assert!(all.contains(&Isa::Neon));
        #[cfg(target_arch = "aarch64")]
        assert_eq!(best == Isa::NeonDot, std::arch::is_aarch64_feature_detected!("dotprod"));
        assert!(!all.iter().any(|i| matches!(i, Isa::Avx2 | Isa::Avx512)));
    } else if cfg!(target_arch = "x86_64") {
        assert!(matches!(best, Isa::Avx2 | Isa::Avx512), "x86-64 CI machines have AVX2, got {best:?}");
        assert!(!all.iter().any(|i| matches!(i, Isa::Neon | Isa::NeonDot)));
    }
    match std::env::var("ROCMFORGE_CPU_ISA").ok().as_deref().map(str::trim) {
        None => assert_eq!(Isa::detect(), best),
        Some("scalar") => assert_eq!(Isa::detect(), Isa::Scalar),
        Some("neon") if cfg!(target_arch = "aarch64") => assert_eq!(Isa::detect(), Isa::Neon),
        Some("avx2") if cfg!(target_arch = "x86_64") => assert_eq!(Isa::detect(), Isa::Avx2),
        // Unknown names and the other architecture's levels change nothing.
        Some(_) => assert_eq!(Isa::detect(), best),
    }
}

#[test]
fn qemu_default_cpu_has_dotprod() {
    // Under `scripts/test-aarch64.sh` (qemu-user, default `max` CPU) both NEON kernels must run:
    // `matmul.rs` and `llama_cpp_*.rs` then check `Neon` and `NeonDot` against the scalar path.
    if std::env::var_os("ROCMFORGE_EXPECT_DOTPROD").is_some() {
        assert_eq!(Isa::all_supported(), vec![Isa::Scalar, Isa::Neon, Isa::NeonDot]);
    }
}
