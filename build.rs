//! Kernel build step. The GPU kernels under `kernels/` are embedded into the binary and compiled
//! ahead of time when `hipcc` / `nvcc` exist (see DESIGN.md §2.4). No GPU toolchain is needed to
//! build: without one, kernels are compiled at first use by hipRTC / NVRTC.
fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=HIPCC");
}
