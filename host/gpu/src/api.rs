//! The vendor table: one set of function pointers over what the CUDA driver API and HIP share,
//! resolved at run time from `libcuda.so.1` or `libamdhip64.so` (DESIGN.md decision 3).
//!
//! Every entry is declared once, with its C signature and its symbol name on each vendor; every
//! call site in this crate goes through the same field whichever library filled it, so an H100
//! run exercises the code an AMD user runs except for this table. Where the two APIs differ in
//! more than a name (the error-name query returns its string differently), the table holds one
//! optional entry per vendor and `DriverApi::error_name` picks.
//!
//! Invariants:
//! - Status codes are plain `i32` (0 = success on both vendors); handles are opaque pointers;
//!   device pointers are `u64` (`CUdeviceptr` and `hipDeviceptr_t` are both 64 bits).
//! - Enum values that differ between vendors (device attributes) are mapped in [`attr_code`];
//!   the ones we pass that are equal (stream/event flags, capture modes, function attribute 8)
//!   are constants here. HIP values were read from HIP 5.2.3's `hip_runtime_api.h` (compiled and
//!   printed) and match the ROCm 6/7 bindings.
//! - A loaded library is never unloaded (the table is leaked, process-wide), so the function
//!   pointers stay valid for the life of the process.
//!
//! Modelled on the "dynamic loading" shape of cudarc and cubecl-hip-sys (a struct of resolved
//! symbols); the symbol list is our own, kept to the API subset stable from HIP 5.2 to 7.x and
//! CUDA 11.4 to 13.

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::Mutex;

use libloading::Library;

use crate::error::{GpuError, Result};

/// GPU vendor runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vendor {
    /// NVIDIA, through the CUDA driver API (`libcuda`) and NVRTC.
    Cuda,
    /// AMD, through HIP (`libamdhip64`) and hipRTC.
    Hip,
}

impl Vendor {
    pub fn name(self) -> &'static str {
        match self {
            Vendor::Cuda => "cuda",
            Vendor::Hip => "hip",
        }
    }
}

pub(crate) type Handle = *mut c_void;
pub(crate) type DevPtr = u64;

/// Stream flag: do not synchronize with the legacy default stream (`CU_STREAM_NON_BLOCKING`,
/// `hipStreamNonBlocking`).
pub(crate) const STREAM_NON_BLOCKING: c_uint = 1;
/// Event flag: no timing (`CU_EVENT_DISABLE_TIMING`, `hipEventDisableTiming`).
pub(crate) const EVENT_DISABLE_TIMING: c_uint = 2;
/// Stream capture mode "thread local" (equal on both vendors).
pub(crate) const CAPTURE_MODE_THREAD_LOCAL: c_int = 1;
/// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` / `hipFuncAttributeMaxDynamicSharedMemorySize`.
pub(crate) const FUNC_ATTR_MAX_DYNAMIC_SHARED: c_int = 8;

/// Device attributes we query (values differ per vendor: [`attr_code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attr {
    MaxThreadsPerBlock,
    MaxSharedPerBlock,
    MaxSharedPerBlockOptin,
    WarpSize,
    ClockRateKhz,
    MultiprocessorCount,
    MemoryClockRateKhz,
    MemoryBusWidthBits,
    L2CacheSize,
    ComputeCapabilityMajor,
    ComputeCapabilityMinor,
    PciBusId,
    PciDeviceId,
    PciDomainId,
}

/// The vendor's enum value for `a` (`CUdevice_attribute` / `hipDeviceAttribute_t`).
pub(crate) fn attr_code(v: Vendor, a: Attr) -> c_int {
    use Attr::*;
    match v {
        Vendor::Cuda => match a {
            MaxThreadsPerBlock => 1,
            MaxSharedPerBlock => 8,
            WarpSize => 10,
            ClockRateKhz => 13,
            MultiprocessorCount => 16,
            PciBusId => 33,
            PciDeviceId => 34,
            MemoryClockRateKhz => 36,
            MemoryBusWidthBits => 37,
            L2CacheSize => 38,
            PciDomainId => 50,
            ComputeCapabilityMajor => 75,
            ComputeCapabilityMinor => 76,
            MaxSharedPerBlockOptin => 97,
        },
        Vendor::Hip => match a {
            ClockRateKhz => 5,
            L2CacheSize => 19,
            ComputeCapabilityMajor => 23,
            MaxThreadsPerBlock => 56,
            MemoryBusWidthBits => 59,
            MemoryClockRateKhz => 60,
            ComputeCapabilityMinor => 61,
            MultiprocessorCount => 63,
            PciBusId => 67,
            PciDeviceId => 68,
            PciDomainId => 69,
            MaxSharedPerBlock => 74,
            MaxSharedPerBlockOptin => 75,
            WarpSize => 87,
        },
    }
}

/// Declares the table: `field: fn(args) -> ret => [cuda names] [hip names];` Names are tried in
/// order (newer versioned symbols first). Required entries must resolve on the vendor being
/// loaded; optional ones become `None` (an empty list means "not on this vendor").
macro_rules! driver_table {
    (
        required { $( $f:ident : fn($($a:ty),*) $(-> $r:ty)? => [$($cn:literal),*] [$($hn:literal),*]; )* }
        optional { $( $of:ident : fn($($oa:ty),*) $(-> $or:ty)? => [$($ocn:literal),*] [$($ohn:literal),*]; )* }
    ) => {
        /// Resolved entry points of one vendor's driver / runtime library.
        #[allow(dead_code)]
        pub(crate) struct DriverApi {
            pub vendor: Vendor,
            pub lib_path: String,
            _lib: Library,
            $( pub $f: unsafe extern "C" fn($($a),*) $(-> $r)?, )*
            $( pub $of: Option<unsafe extern "C" fn($($oa),*) $(-> $or)?>, )*
        }

        impl DriverApi {
            fn resolve(vendor: Vendor, lib: Library, lib_path: String) -> Result<Self> {
                Ok(DriverApi {
                    vendor,
                    $( $f: {
                        let names: &[&str] = match vendor { Vendor::Cuda => &[$($cn),*], Vendor::Hip => &[$($hn),*] };
                        // SAFETY: the declared signature is the C prototype of this symbol on
                        // both vendors (see the table below); the library outlives the pointer.
                        unsafe { lookup(&lib, names) }.ok_or_else(|| GpuError::MissingSymbol {
                            lib: lib_path.clone(),
                            symbol: names.join(" / "),
                        })?
                    }, )*
                    $( $of: {
                        let names: &[&str] = match vendor { Vendor::Cuda => &[$($ocn),*], Vendor::Hip => &[$($ohn),*] };
                        // SAFETY: as above.
                        unsafe { lookup(&lib, names) }
                    }, )*
                    lib_path,
                    _lib: lib,
                })
            }
        }
    };
}

/// The first of `names` that `lib` exports, as a function pointer of type `T`.
///
/// # Safety
/// `T` must be the function-pointer type matching the symbol's C prototype.
unsafe fn lookup<T: Copy>(lib: &Library, names: &[&str]) -> Option<T> {
    for n in names {
        // SAFETY: the caller guarantees T matches; we copy the pointer out of the Symbol, which is
        // sound because the library is kept alive (never unloaded) alongside it.
        if let Ok(s) = unsafe { lib.get::<T>(*n) } {
            return Some(*s);
        }
    }
    None
}

driver_table! {
    required {
        init: fn(c_uint) -> c_int => ["cuInit"] ["hipInit"];
        driver_get_version: fn(*mut c_int) -> c_int => ["cuDriverGetVersion"] ["hipDriverGetVersion"];
        device_get_count: fn(*mut c_int) -> c_int => ["cuDeviceGetCount"] ["hipGetDeviceCount"];
        device_get: fn(*mut c_int, c_int) -> c_int => ["cuDeviceGet"] ["hipDeviceGet"];
        device_get_name: fn(*mut c_char, c_int, c_int) -> c_int => ["cuDeviceGetName"] ["hipDeviceGetName"];
        device_total_mem: fn(*mut usize, c_int) -> c_int => ["cuDeviceTotalMem_v2"] ["hipDeviceTotalMem"];
        device_get_attribute: fn(*mut c_int, c_int, c_int) -> c_int => ["cuDeviceGetAttribute"] ["hipDeviceGetAttribute"];
        primary_ctx_retain: fn(*mut Handle, c_int) -> c_int => ["cuDevicePrimaryCtxRetain"] ["hipDevicePrimaryCtxRetain"];
        primary_ctx_release: fn(c_int) -> c_int => ["cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease"] ["hipDevicePrimaryCtxRelease"];
        ctx_set_current: fn(Handle) -> c_int => ["cuCtxSetCurrent"] ["hipCtxSetCurrent"];
        ctx_synchronize: fn() -> c_int => ["cuCtxSynchronize"] ["hipDeviceSynchronize"];
        mem_get_info: fn(*mut usize, *mut usize) -> c_int => ["cuMemGetInfo_v2"] ["hipMemGetInfo"];
        mem_alloc: fn(*mut DevPtr, usize) -> c_int => ["cuMemAlloc_v2"] ["hipMalloc"];
        mem_free: fn(DevPtr) -> c_int => ["cuMemFree_v2"] ["hipFree"];
        memcpy_htod: fn(DevPtr, *const c_void, usize) -> c_int => ["cuMemcpyHtoD_v2"] ["hipMemcpyHtoD"];
        memcpy_dtoh: fn(*mut c_void, DevPtr, usize) -> c_int => ["cuMemcpyDtoH_v2"] ["hipMemcpyDtoH"];
        memcpy_dtod: fn(DevPtr, DevPtr, usize) -> c_int => ["cuMemcpyDtoD_v2"] ["hipMemcpyDtoD"];
        memcpy_htod_async: fn(DevPtr, *const c_void, usize, Handle) -> c_int => ["cuMemcpyHtoDAsync_v2"] ["hipMemcpyHtoDAsync"];
        memcpy_dtoh_async: fn(*mut c_void, DevPtr, usize, Handle) -> c_int => ["cuMemcpyDtoHAsync_v2"] ["hipMemcpyDtoHAsync"];
        memcpy_dtod_async: fn(DevPtr, DevPtr, usize, Handle) -> c_int => ["cuMemcpyDtoDAsync_v2"] ["hipMemcpyDtoDAsync"];
        memset_d32_async: fn(DevPtr, c_uint, usize, Handle) -> c_int => ["cuMemsetD32Async"] ["hipMemsetD32Async"];
        stream_create: fn(*mut Handle, c_uint) -> c_int => ["cuStreamCreate"] ["hipStreamCreateWithFlags"];
        stream_destroy: fn(Handle) -> c_int => ["cuStreamDestroy_v2", "cuStreamDestroy"] ["hipStreamDestroy"];
        stream_synchronize: fn(Handle) -> c_int => ["cuStreamSynchronize"] ["hipStreamSynchronize"];
        stream_wait_event: fn(Handle, Handle, c_uint) -> c_int => ["cuStreamWaitEvent"] ["hipStreamWaitEvent"];
        event_create: fn(*mut Handle, c_uint) -> c_int => ["cuEventCreate"] ["hipEventCreateWithFlags"];
        event_destroy: fn(Handle) -> c_int => ["cuEventDestroy_v2", "cuEventDestroy"] ["hipEventDestroy"];
        event_record: fn(Handle, Handle) -> c_int => ["cuEventRecord"] ["hipEventRecord"];
        event_synchronize: fn(Handle) -> c_int => ["cuEventSynchronize"] ["hipEventSynchronize"];
        event_elapsed_time: fn(*mut f32, Handle, Handle) -> c_int => ["cuEventElapsedTime_v2", "cuEventElapsedTime"] ["hipEventElapsedTime"];
        module_load_data: fn(*mut Handle, *const c_void) -> c_int => ["cuModuleLoadData"] ["hipModuleLoadData"];
        module_unload: fn(Handle) -> c_int => ["cuModuleUnload"] ["hipModuleUnload"];
        module_get_function: fn(*mut Handle, Handle, *const c_char) -> c_int => ["cuModuleGetFunction"] ["hipModuleGetFunction"];
        launch_kernel: fn(Handle, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, Handle, *mut *mut c_void, *mut *mut c_void) -> c_int
            => ["cuLaunchKernel"] ["hipModuleLaunchKernel"];
        stream_begin_capture: fn(Handle, c_int) -> c_int => ["cuStreamBeginCapture_v2", "cuStreamBeginCapture"] ["hipStreamBeginCapture"];
        stream_end_capture: fn(Handle, *mut Handle) -> c_int => ["cuStreamEndCapture"] ["hipStreamEndCapture"];
        graph_instantiate: fn(*mut Handle, Handle, u64) -> c_int => ["cuGraphInstantiateWithFlags"] ["hipGraphInstantiateWithFlags"];
        graph_launch: fn(Handle, Handle) -> c_int => ["cuGraphLaunch"] ["hipGraphLaunch"];
        graph_exec_destroy: fn(Handle) -> c_int => ["cuGraphExecDestroy"] ["hipGraphExecDestroy"];
        graph_destroy: fn(Handle) -> c_int => ["cuGraphDestroy"] ["hipGraphDestroy"];
    }
    optional {
        // Stream-ordered allocation: CUDA 11.2+, HIP 5.1+ (and not every AMD GPU has pools).
        mem_alloc_async: fn(*mut DevPtr, usize, Handle) -> c_int => ["cuMemAllocAsync"] ["hipMallocAsync"];
        mem_free_async: fn(DevPtr, Handle) -> c_int => ["cuMemFreeAsync"] ["hipFreeAsync"];
        device_get_pci_bus_id: fn(*mut c_char, c_int, c_int) -> c_int => ["cuDeviceGetPCIBusId"] ["hipDeviceGetPCIBusId"];
        func_set_attribute: fn(Handle, c_int, c_int) -> c_int => ["cuFuncSetAttribute"] ["hipFuncSetAttribute"];
        graph_upload: fn(Handle, Handle) -> c_int => ["cuGraphUpload"] ["hipGraphUpload"];
        // The one call whose shape differs: CUDA returns the name through an out-pointer.
        get_error_name_cuda: fn(c_int, *mut *const c_char) -> c_int => ["cuGetErrorName"] [];
        get_error_name_hip: fn(c_int) -> *const c_char => [] ["hipGetErrorName"];
    }
}

impl DriverApi {
    /// The vendor's name for status `code` (`CUDA_ERROR_OUT_OF_MEMORY`, `hipErrorNoDevice`).
    pub(crate) fn error_name(&self, code: c_int) -> String {
        let mut p: *const c_char = std::ptr::null();
        if let Some(f) = self.get_error_name_cuda {
            // SAFETY: cuGetErrorName writes a pointer to a static string or returns an error.
            if unsafe { f(code, &mut p) } != 0 {
                p = std::ptr::null();
            }
        } else if let Some(f) = self.get_error_name_hip {
            // SAFETY: hipGetErrorName returns a pointer to a static string (never freed).
            p = unsafe { f(code) };
        }
        if p.is_null() {
            return format!("error {code}");
        }
        // SAFETY: non-null pointers above are NUL-terminated static strings of the library.
        unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    /// `Ok` for status 0, else a typed error naming `call`.
    pub(crate) fn check(&self, call: &'static str, code: c_int) -> Result<()> {
        if code == 0 {
            Ok(())
        } else {
            Err(GpuError::Driver { call, code, name: self.error_name(code) })
        }
    }
}

/// Does status `code` of vendor `v` poison the context, so that the device is unusable for the
/// rest of the process? These are the codes whose documentation says "any further work will
/// return the same error; the process must be terminated" (CUDA 13's `cuda.h`; HIP's
/// `hip_runtime_api.h`, 5.2 to 7.1, where the same names carry the same numbers):
///
/// | | CUDA (`CUresult`) | HIP (`hipError_t`) |
/// |---|---|---|
/// | uncorrectable ECC error | 214 `CUDA_ERROR_ECC_UNCORRECTABLE` | 214 `hipErrorECCNotCorrectable` |
/// | uncorrectable NVLink error / contained error | 220 `NVLINK_UNCORRECTABLE`, 226 `CONTAINED` | - |
/// | illegal address in a kernel | 700 `CUDA_ERROR_ILLEGAL_ADDRESS` | 700 `hipErrorIllegalAddress` |
/// | kernel timed out (watchdog) | 702 `CUDA_ERROR_LAUNCH_TIMEOUT` | 702 `hipErrorLaunchTimeOut` |
/// | device-side assert | 710 `CUDA_ERROR_ASSERT` | 710 `hipErrorAssert` |
/// | stack error, illegal instruction, misaligned address, bad address space, bad PC | 714-718 | - |
/// | kernel exception (launch failed) | 719 `CUDA_ERROR_LAUNCH_FAILED` | 719 `hipErrorLaunchFailure` |
/// | an earlier launch failed | - | 53 `hipErrorPriorLaunchFailure` |
/// | tensor memory leak at kernel exit | 721 `CUDA_ERROR_TENSOR_MEMORY_LEAK` | - |
/// | error signalled by an external device | 911 `CUDA_ERROR_EXTERNAL_DEVICE` | - (911 is another error on HIP) |
///
/// A GPU that falls off the bus shows up as one of these (or as `*_UNKNOWN`, 999, which we do
/// not treat as fatal: it is also returned for recoverable failures). On AMD, ROCm usually
/// aborts the whole process on a memory fault in a kernel ("Memory access fault by GPU node")
/// before HIP can return 700 / 719, so this path covers what HIP does report.
pub(crate) fn poisons_context(v: Vendor, code: c_int) -> bool {
    match v {
        Vendor::Cuda => matches!(code, 214 | 220 | 226 | 700 | 702 | 710 | 714..=719 | 721 | 911),
        Vendor::Hip => matches!(code, 53 | 214 | 700 | 702 | 710 | 719),
    }
}

/// Library file names tried for each vendor, in order (plus `ROCMFORGE_CUDA_LIB` /
/// `ROCMFORGE_HIP_LIB` when set, first).
pub(crate) fn driver_candidates(v: Vendor) -> Vec<String> {
    let (env, names): (&str, &[&str]) = match v {
        Vendor::Cuda => ("ROCMFORGE_CUDA_LIB", &["libcuda.so.1", "libcuda.so"]),
        Vendor::Hip => (
            "ROCMFORGE_HIP_LIB",
            &["libamdhip64.so", "libamdhip64.so.7", "libamdhip64.so.6", "libamdhip64.so.5", "/opt/rocm/lib/libamdhip64.so"],
        ),
    };
    let mut out: Vec<String> = std::env::var(env).ok().filter(|s| !s.is_empty()).into_iter().collect();
    out.extend(names.iter().map(|s| s.to_string()));
    out
}

/// Open the first library of `candidates` that loads; returns it with its name.
pub(crate) fn open_first(candidates: &[String]) -> Result<(Library, String)> {
    let mut tried = Vec::new();
    for c in candidates {
        // SAFETY: loading a vendor GPU library runs its initialisers; these are the system's
        // driver/runtime libraries, which are designed to be dlopen'ed.
        match unsafe { Library::new(c) } {
            Ok(lib) => return Ok((lib, c.clone())),
            Err(e) => tried.push(format!("{c} ({e})")),
        }
    }
    Err(GpuError::LibraryNotFound { tried })
}

static LOADED: Mutex<[Option<&'static DriverApi>; 2]> = Mutex::new([None, None]);

/// The process-wide table of vendor `v`, loading (and `init`-ing) the library on first use.
pub(crate) fn driver(v: Vendor) -> Result<&'static DriverApi> {
    let slot = v as usize;
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(api) = loaded[slot] {
        return Ok(api);
    }
    let (lib, path) = open_first(&driver_candidates(v))?;
    let api = DriverApi::resolve(v, lib, path)?;
    // SAFETY: cuInit / hipInit take flags that must be 0.
    let rc = unsafe { (api.init)(0) };
    if rc != 0 {
        // Without a usable GPU the runtimes fail here (CUDA_ERROR_NO_DEVICE, or
        // hipErrorInvalidDevice / hipErrorNoDevice from HIP): that is "no device", not a bug.
        let call = if v == Vendor::Cuda { "cuInit" } else { "hipInit" };
        return Err(GpuError::NoDevice { vendor: v.name(), detail: format!("{call}: {} ({rc}), {}", api.error_name(rc), api.lib_path) });
    }
    let api: &'static DriverApi = Box::leak(Box::new(api));
    loaded[slot] = Some(api);
    Ok(api)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_poisoning_codes_per_vendor() {
        // Sticky on both vendors: illegal address, launch failure / exception, ECC, assert.
        for code in [700, 719, 214, 710, 702] {
            assert!(poisons_context(Vendor::Cuda, code), "cuda {code}");
            assert!(poisons_context(Vendor::Hip, code), "hip {code}");
        }
        // CUDA only: misaligned address (716), illegal instruction (715), external device (911);
        // HIP's 911 is hipErrorInvalidChannelDescriptor, its 53 hipErrorPriorLaunchFailure.
        for code in [714, 715, 716, 717, 718, 721, 911, 220, 226] {
            assert!(poisons_context(Vendor::Cuda, code), "cuda {code}");
        }
        assert!(!poisons_context(Vendor::Hip, 911));
        assert!(poisons_context(Vendor::Hip, 53));
        // Recoverable: out of memory (2), invalid value (1), launch out of resources (701),
        // not ready (600), unknown (999), no device (100), cooperative launch too large (720).
        for code in [0, 1, 2, 100, 600, 701, 720, 999] {
            assert!(!poisons_context(Vendor::Cuda, code), "cuda {code}");
            assert!(!poisons_context(Vendor::Hip, code), "hip {code}");
        }
    }
}
