//! The vendor BLAS for prefill: one GEMM entry (`f16 x f16 -> f32`, f32 accumulation), from
//! cuBLAS on NVIDIA and rocBLAS on AMD, opened at run time with `libloading` like the driver
//! (`api.rs`), so the binary still starts on a machine without either.
//!
//! Why rocBLAS rather than hipBLAS on AMD: `rocblas_gemm_ex` has kept one signature and one set
//! of enum values from ROCm 3 to 7, while `hipblasGemmEx` changed its type enums between ROCm 5
//! and 6 (`hipblasDatatype_t` to `hipDataType`, behind `HIPBLAS_V2`), which a run-time loader
//! cannot tell apart. The two GEMM calls differ in shape (rocBLAS has a separate output matrix D
//! and a solution index), so the table holds one entry per vendor and [`Blas::gemm_f16`] picks,
//! as `DriverApi::error_name` does. Enum values:
//! - cuBLAS: `CUBLAS_OP_N` 0, `CUBLAS_OP_T` 1; `CUDA_R_16F` 2, `CUDA_R_32F` 0;
//!   `CUBLAS_COMPUTE_32F` 68; `CUBLAS_GEMM_DEFAULT` -1.
//! - rocBLAS: `rocblas_operation_none` 111, `_transpose` 112; `rocblas_datatype_f16_r` 150,
//!   `_f32_r` 151; `rocblas_gemm_algo_standard` 0.
//!
//! A handle is bound to one stream at creation (`SetStream`), so its GEMMs are ordered with the
//! kernels queued on that stream.

use std::ffi::{c_int, c_void};
use std::sync::Mutex;

use libloading::Library;

use crate::api::{open_first, Handle, Vendor};
use crate::device::{DeviceBuffer, Stream};
use crate::error::{GpuError, Result};

type Status = c_int;

/// Resolved entry points of cuBLAS or rocBLAS.
struct BlasApi {
    vendor: Vendor,
    lib_path: String,
    _lib: Library,
    create: unsafe extern "C" fn(*mut Handle) -> Status,
    destroy: unsafe extern "C" fn(Handle) -> Status,
    set_stream: unsafe extern "C" fn(Handle, Handle) -> Status,
    /// cublasGemmEx(handle, ta, tb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C,
    /// Ctype, ldc, computeType, algo)
    #[allow(clippy::type_complexity)]
    gemm_cuda: Option<
        unsafe extern "C" fn(
            Handle,
            c_int,
            c_int,
            c_int,
            c_int,
            c_int,
            *const c_void,
            *const c_void,
            c_int,
            c_int,
            *const c_void,
            c_int,
            c_int,
            *const c_void,
            *mut c_void,
            c_int,
            c_int,
            c_int,
            c_int,
        ) -> Status,
    >,
    /// rocblas_gemm_ex(handle, ta, tb, m, n, k, alpha, a, a_type, lda, b, b_type, ldb, beta, c,
    /// c_type, ldc, d, d_type, ldd, compute_type, algo, solution_index, flags)
    #[allow(clippy::type_complexity)]
    gemm_roc: Option<
        unsafe extern "C" fn(
            Handle,
            c_int,
            c_int,
            c_int,
            c_int,
            c_int,
            *const c_void,
            *const c_void,
            c_int,
            c_int,
            *const c_void,
            c_int,
            c_int,
            *const c_void,
            *const c_void,
            c_int,
            c_int,
            *mut c_void,
            c_int,
            c_int,
            c_int,
            c_int,
            i32,
            u32,
        ) -> Status,
    >,
}

/// Library names tried per vendor (`ROCMFORGE_BLAS_LIB` first when set).
fn candidates(v: Vendor) -> Vec<String> {
    let names: &[&str] = match v {
        Vendor::Cuda => &["libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so"],
        Vendor::Hip => {
            &["librocblas.so.5", "librocblas.so.4", "librocblas.so.3", "librocblas.so.0", "librocblas.so", "/opt/rocm/lib/librocblas.so"]
        }
    };
    let mut out: Vec<String> = std::env::var("ROCMFORGE_BLAS_LIB").ok().filter(|s| !s.is_empty()).into_iter().collect();
    out.extend(names.iter().map(|s| s.to_string()));
    out
}

/// The symbol `name` of `lib` as a function pointer of type `T`.
///
/// # Safety
/// `T` must match the symbol's C prototype; the library must outlive the pointer (it is leaked).
unsafe fn sym<T: Copy>(lib: &Library, path: &str, name: &str) -> Result<T> {
    // SAFETY: see the function's contract.
    unsafe { lib.get::<T>(name.as_bytes()) }
        .map(|s| *s)
        .map_err(|_| GpuError::MissingSymbol { lib: path.to_string(), symbol: name.to_string() })
}

impl BlasApi {
    fn load(v: Vendor) -> Result<BlasApi> {
        let (lib, path) = open_first(&candidates(v))?;
        // SAFETY (all lookups): the signatures are the documented C prototypes of cuBLAS v2 and
        // rocBLAS; the library is kept in the (leaked) table.
        unsafe {
            Ok(match v {
                Vendor::Cuda => BlasApi {
                    vendor: v,
                    create: sym(&lib, &path, "cublasCreate_v2")?,
                    destroy: sym(&lib, &path, "cublasDestroy_v2")?,
                    set_stream: sym(&lib, &path, "cublasSetStream_v2")?,
                    gemm_cuda: Some(sym(&lib, &path, "cublasGemmEx")?),
                    gemm_roc: None,
                    lib_path: path,
                    _lib: lib,
                },
                Vendor::Hip => BlasApi {
                    vendor: v,
                    create: sym(&lib, &path, "rocblas_create_handle")?,
                    destroy: sym(&lib, &path, "rocblas_destroy_handle")?,
                    set_stream: sym(&lib, &path, "rocblas_set_stream")?,
                    gemm_cuda: None,
                    gemm_roc: Some(sym(&lib, &path, "rocblas_gemm_ex")?),
                    lib_path: path,
                    _lib: lib,
                },
            })
        }
    }

    fn check(&self, call: &'static str, code: Status) -> Result<()> {
        if code == 0 {
            return Ok(());
        }
        let name = match (self.vendor, code) {
            (Vendor::Cuda, 1) => "CUBLAS_STATUS_NOT_INITIALIZED",
            (Vendor::Cuda, 3) => "CUBLAS_STATUS_ALLOC_FAILED",
            (Vendor::Cuda, 7) => "CUBLAS_STATUS_INVALID_VALUE",
            (Vendor::Cuda, 8) => "CUBLAS_STATUS_ARCH_MISMATCH",
            (Vendor::Cuda, 13) => "CUBLAS_STATUS_EXECUTION_FAILED",
            (Vendor::Cuda, 15) => "CUBLAS_STATUS_NOT_SUPPORTED",
            (Vendor::Hip, 1) => "rocblas_status_invalid_handle",
            (Vendor::Hip, 2) => "rocblas_status_not_implemented",
            (Vendor::Hip, 5) => "rocblas_status_memory_error",
            (Vendor::Hip, 7) => "rocblas_status_invalid_size",
            _ => "",
        };
        Err(GpuError::Driver { call, code, name: format!("{name} ({})", self.lib_path) })
    }
}

static LOADED: Mutex<[Option<&'static BlasApi>; 2]> = Mutex::new([None, None]);

fn blas_api(v: Vendor) -> Result<&'static BlasApi> {
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(api) = loaded[v as usize] {
        return Ok(api);
    }
    let api: &'static BlasApi = Box::leak(Box::new(BlasApi::load(v)?));
    loaded[v as usize] = Some(api);
    Ok(api)
}

/// A BLAS handle bound to one stream.
pub struct Blas {
    api: &'static BlasApi,
    handle: Handle,
    /// The stream's device: a lost device fails a GEMM before the BLAS library is called.
    dev: crate::device::Device,
}

// SAFETY: the handle is only used through &mut self / &self calls that the owner serialises (one
// backend owns it); cuBLAS and rocBLAS handles may move between threads.
unsafe impl Send for Blas {}

impl Blas {
    /// Open the vendor BLAS of `stream`'s device and bind a new handle to `stream`.
    pub fn new(stream: &Stream) -> Result<Blas> {
        let dev = stream.device();
        let api = blas_api(dev.info().vendor)?;
        dev.bind()?;
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the device's context is current.
        api.check("blas create", unsafe { (api.create)(&mut handle) })?;
        let b = Blas { api, handle, dev: dev.clone() };
        // SAFETY: both handles are live.
        api.check("blas set_stream", unsafe { (api.set_stream)(b.handle, stream.raw()) })?;
        Ok(b)
    }

    /// The library in use (for logs).
    pub fn library(&self) -> &str {
        &self.api.lib_path
    }

    /// `y[t][r] = sum_k w[r][k] * x[t][k]` for `r < n_rows`, `t < n_tok`, with `w` (row-major,
    /// `n_rows x k`) and `x` (`n_tok x k`) in f16 and `y` in f32, row stride `ldy` (>= n_rows).
    /// In BLAS's column-major terms: `Y (n_rows x n_tok) = W^T (n_rows x k) * X (k x n_tok)`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_f16(
        &mut self,
        w_ptr: u64,
        x: &DeviceBuffer<u16>,
        y_ptr: u64,
        n_rows: usize,
        n_tok: usize,
        k: usize,
        ldy: usize,
    ) -> Result<()> {
        self.dev.ensure_usable()?;
        if x.len() < n_tok * k || ldy < n_rows {
            return Err(GpuError::shape("gemm_f16", format!("x holds {} values for {n_tok} x {k}; ldy {ldy} < {n_rows}", x.len())));
        }
        let int = |v: usize| i32::try_from(v).map_err(|_| GpuError::shape("gemm_f16", format!("{v} exceeds 32 bits")));
        let (m, n, kk, ld) = (int(n_rows)?, int(n_tok)?, int(k)?, int(ldy)?);
        let (alpha, beta) = (1.0f32, 0.0f32);
        let a = &alpha as *const f32 as *const c_void;
        let b = &beta as *const f32 as *const c_void;
        let (wp, xp, yp) = (w_ptr as *const c_void, x.device_ptr() as *const c_void, y_ptr as *mut c_void);
        let api = self.api;
        // SAFETY: the pointers are device buffers of the stated sizes (the callers check w and y;
        // x is checked above); alpha/beta are host scalars (the default pointer mode).
        let rc = unsafe {
            if let Some(g) = api.gemm_cuda {
                g(self.handle, 1, 0, m, n, kk, a, wp, 2, kk, xp, 2, kk, b, yp, 0, ld, 68, -1)
            } else if let Some(g) = api.gemm_roc {
                g(self.handle, 112, 111, m, n, kk, a, wp, 150, kk, xp, 150, kk, b, yp, 151, ld, yp, 151, ld, 151, 0, 0, 0)
            } else {
                unreachable!("a BLAS table has one GEMM entry")
            }
        };
        api.check("blas gemm_ex", rc)
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        unsafe { (self.api.destroy)(self.handle) };
    }
}
