//! A device error after load (issue 10, "Bad input and failures"): a kernel that writes to an
//! invalid address poisons the device's context. The error must surface as
//! `GpuError::DeviceLost` naming the first failing call and the vendor's error, every later call
//! on the device must fail the same way at once (a kernel launch, an allocation, a copy, a
//! synchronisation, opening the device again), and nothing may hang.
//!
//! Its own test binary, with one test: the error is sticky for the whole process, so no other
//! GPU test may share it. The faulting kernel is compiled here through the run-time compile API
//! (`rocmforge_gpu::compile_source`); it is not part of `kernels/`.
//!
//! Without a GPU the test prints a note and passes, unless `ROCMFORGE_REQUIRE_GPU=1`.
//! `ROCMFORGE_TEST_DEVICE` picks the device (default `auto`). Prints `RESULT|gpu_fault|...` lines.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use rocmforge_gpu::{compile_source, Device, DeviceSpec, GpuError, KernelArgs, Kernels, Module};

/// Each thread writes one float at `p + i * stride` (p is an address nothing is mapped at).
const FAULT_SOURCE: &str = r#"#include "compat.h"
extern "C" __global__ void rf_test_write_invalid(float* p, u64 stride) {
    p[((u64)blockIdx.x * blockDim.x + threadIdx.x) * stride] = 1.0f;
}
"#;

/// The null page: never mapped on either vendor, so the first store faults.
const INVALID_ADDRESS: u64 = 0x10;

/// Generous bound on the whole sequence: it takes well under a second when nothing hangs (the
/// kernels were compiled before the clock starts).
const LIVENESS: Duration = Duration::from_secs(120);

fn expect_lost<T>(what: &str, r: Result<T, GpuError>, first: &str) -> String {
    match r {
        Err(e @ GpuError::DeviceLost { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(first), "{what}: the error does not name the first failure '{first}': {msg}");
            println!("RESULT|gpu_fault|{what}|DeviceLost|ok");
            msg
        }
        Err(e) => panic!("{what}: expected DeviceLost, got {e:?}"),
        Ok(_) => panic!("{what}: succeeded on a lost device"),
    }
}

#[test]
fn invalid_address_marks_the_device_lost_and_every_later_call_fails_fast() {
    let require = std::env::var("ROCMFORGE_REQUIRE_GPU").is_ok_and(|v| v == "1");
    let spec: DeviceSpec = std::env::var("ROCMFORGE_TEST_DEVICE").ok().and_then(|s| s.parse().ok()).unwrap_or(DeviceSpec::Auto);
    let dev = match Device::open(spec) {
        Ok(d) => d,
        Err(e) if require => panic!("ROCMFORGE_REQUIRE_GPU=1 but no GPU: {e}"),
        Err(e) => return println!("note: no GPU, skipping ({e})"),
    };
    println!("device: {}", dev.info());
    // Everything that compiles runs before the fault (and before the liveness clock).
    let k = Kernels::new(&dev).expect("kernels");
    let code = compile_source(&dev, "fault", FAULT_SOURCE).expect("compile the fault kernel");
    let module = Module::load(&dev, &code).expect("load the fault kernel");
    let fault = module.function("rf_test_write_invalid").expect("fault kernel");
    let s = dev.new_stream().expect("stream");
    // The device works before the fault.
    let x = dev.upload(&[1.0f32, 2.0, 3.0, 4.0]).expect("upload");
    let mut y = dev.alloc::<f32>(4).expect("alloc");
    k.scale(&s, &x, 2.0, &mut y).expect("scale");
    let mut host = [0f32; 4];
    s.copy_to_host(&y, &mut host).expect("download");
    assert_eq!(host, [2.0, 4.0, 6.0, 8.0]);
    assert!(dev.lost().is_none());

    // The fault and everything after it run on a worker thread, so a hang fails the test
    // (after LIVENESS) instead of blocking it forever.
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut a = KernelArgs::new();
        a.u64(INVALID_ADDRESS).u64(1 << 20);
        // SAFETY: deliberately unsound for the device: the kernel stores to an unmapped
        // address, which the driver reports as a sticky error; no host memory is touched.
        let launched = unsafe { fault.launch(&s, (4, 1, 1), (64, 1, 1), 0, &mut a) };
        // The launch is asynchronous: the fault shows at the launch (rarely) or at the next
        // synchronisation, which must fail as DeviceLost, naming the first error.
        let first = match launched.and_then(|_| s.synchronize()) {
            Err(e @ GpuError::DeviceLost { .. }) => e,
            other => panic!("the invalid store did not surface as DeviceLost: {other:?}"),
        };
        let GpuError::DeviceLost { call, code, name, .. } = &first else { unreachable!() };
        let first_str = format!("{call} failed: {name} ({code})");
        println!("RESULT|gpu_fault|first error|{first_str}|{:.3}s", t0.elapsed().as_secs_f64());
        println!("first error message: {first}");
        assert!(dev.lost().is_some_and(|e| e.to_string() == first.to_string()), "Device::lost() must report the first error");

        // Every later call fails fast, naming the same first error.
        let t1 = Instant::now();
        expect_lost("alloc", dev.alloc::<f32>(4).map(|_| ()), &first_str);
        expect_lost("kernel launch", k.scale(&s, &x, 2.0, &mut y), &first_str);
        expect_lost("stream sync", s.synchronize(), &first_str);
        expect_lost("device sync", dev.synchronize(), &first_str);
        let mut host = [0f32; 4];
        expect_lost("copy to host", s.copy_to_host(&x, &mut host), &first_str);
        expect_lost("memory query", dev.memory(), &first_str);
        expect_lost("new stream", dev.new_stream().map(|_| ()), &first_str);
        let msg = expect_lost("open again", Device::open(spec).map(|_| ()), &first_str);
        println!("RESULT|gpu_fault|later calls|{:.3}s for 8 calls|ok", t1.elapsed().as_secs_f64());
        println!("open-again message: {msg}");
        // Dropping everything on a lost device must not hang either.
        drop((k, module, x, y, s));
        tx.send(()).expect("report");
    });
    match rx.recv_timeout(LIVENESS) {
        Ok(()) => worker.join().expect("worker"),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The worker panicked: show its message.
            if let Err(p) = worker.join() {
                std::panic::resume_unwind(p);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("a call on the faulted device hung for {LIVENESS:?}"),
    }
    println!("RESULT|gpu_fault|no hang|ok|ok");
}
