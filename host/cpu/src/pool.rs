//! A persistent thread pool for the CPU kernels: `n - 1` worker threads plus the caller.
//!
//! Every op of a decode step is short (tens of microseconds for SmolLM2-sized matrices), so a
//! dispatch must cost about a microsecond: workers spin on an epoch counter for a short while
//! after each job and only then sleep on a condition variable. `run(f)` calls `f(i, n)` once on
//! every thread (the caller is thread 0) and returns when all calls have returned.
//!
//! Two kinds of job. `run` is strict: every index runs, and the caller waits for all workers.
//! `run_dynamic` is for jobs that pull work from a shared counter: a worker that has not started
//! by the time the caller finished its own call is not waited for. On a busy machine (more
//! runnable threads than cores) a preempted worker would otherwise stall every op for a scheduler
//! time slice; with `run_dynamic` the caller simply does that worker's share.
//!
//! Invariants: one job at a time (`run_lock`). Strict: the job pointer is only dereferenced by
//! workers between the epoch bump that publishes it and their decrement of `remaining`, and `run`
//! does not return (not even by unwinding) before `remaining` is zero. Dynamic: a worker
//! dereferences the pointer only after `active += 1` and then seeing `open == its epoch`; the
//! caller sets `open = 0` and then waits for `active == 0` (both SeqCst: either the caller sees
//! the worker's increment or the worker sees the job closed). Either way the borrowed closure
//! outlives every use.
//! A `run` issued from inside a job (nested) runs inline as a one-thread job instead of deadlocking.
//! Modelled on the spin-then-sleep scheme of ggml's CPU threadpool, written from scratch.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it goes to sleep. Long enough to bridge the serial gaps
/// between the matmuls of one decode step, short enough not to burn a core between requests.
const SPIN: Duration = Duration::from_micros(200);

type Job = dyn Fn(usize, usize) + Sync;

struct Shared {
    n_threads: usize,
    epoch: AtomicU64,
    /// Lifetime-erased pointer to the current job; valid while `remaining > 0` (see header).
    job: Mutex<Option<(JobPtr, u64, bool)>>,
    remaining: AtomicUsize,
    /// Epoch of the dynamic job still accepting workers (0 = none).
    open: AtomicU64,
    /// Workers inside (or deciding whether to enter) a dynamic job.
    active: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
}

#[derive(Clone, Copy)]
struct JobPtr(*const Job);
// SAFETY: the pointee is `Sync` and is only dereferenced while `run` keeps it alive.
unsafe impl Send for JobPtr {}

thread_local! {
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
}

/// Persistent workers; see the module header.
pub struct ThreadPool {
    shared: Arc<Shared>,
    run_lock: Mutex<()>,
    handles: Vec<JoinHandle<()>>,
}

impl ThreadPool {
    /// A pool of `n` threads in total (the caller counts as one); `n == 0` is treated as 1.
    pub fn new(n: usize) -> Self {
        let n = n.max(1);
        let shared = Arc::new(Shared {
            n_threads: n,
            epoch: AtomicU64::new(0),
            job: Mutex::new(None),
            remaining: AtomicUsize::new(0),
            open: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut handles = Vec::with_capacity(n - 1);
        for idx in 1..n {
            let sh = Arc::clone(&shared);
            let h = std::thread::Builder::new().name(format!("rocmforge-cpu-{idx}")).spawn(move || worker(sh, idx));
            match h {
                Ok(h) => handles.push(h),
                // Could not start a thread (resource limits): run with the ones we have.
                Err(_) => break,
            }
        }
        let started = handles.len() + 1;
        if started != n {
            // Rebuild the shared state with the real count so job indices stay dense.
            // (Workers already started only ever see epochs of this pool, with n_threads fixed
            // at construction; we simply stop them and start over with fewer.)
            shared.shutdown.store(true, Ordering::SeqCst);
            notify_all(&shared);
            for h in handles {
                let _ = h.join();
            }
            return ThreadPool::new(started);
        }
        ThreadPool { shared, run_lock: Mutex::new(()), handles }
    }

    /// The process-wide pool: `ROCMFORGE_THREADS` if set to a positive integer, else
    /// `std::thread::available_parallelism()`.
    pub fn global() -> &'static ThreadPool {
        static GLOBAL: OnceLock<ThreadPool> = OnceLock::new();
        GLOBAL.get_or_init(|| ThreadPool::new(default_threads()))
    }

    /// Threads taking part in each `run`, the caller included.
    pub fn n_threads(&self) -> usize {
        self.shared.n_threads
    }

    /// Call `f(i, n)` for every `i in 0..n` on `n` threads (the caller runs `i == 0`) and return
    /// when all have finished. A panic in any call is re-raised here after all calls finished.
    pub fn run<F: Fn(usize, usize) + Sync>(&self, f: F) {
        self.dispatch(&f, false)
    }

    /// Like [`run`](Self::run), but only the caller's call is guaranteed: a worker joins if it
    /// arrives before the caller's `f` returned. `f` must therefore share its work dynamically
    /// (an atomic counter of chunks), never by thread index. Returns when every call that started
    /// has finished.
    pub fn run_dynamic<F: Fn(usize, usize) + Sync>(&self, f: F) {
        self.dispatch(&f, true)
    }

    fn dispatch(&self, f: &(dyn Fn(usize, usize) + Sync + '_), dynamic: bool) {
        let n = self.shared.n_threads;
        if n == 1 || IN_JOB.with(|c| c.get()) {
            f(0, 1);
            return;
        }
        let _serial = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let sh = &*self.shared;
        // SAFETY: erases the closure's lifetime; `Wait` below keeps `f` alive until no worker can
        // touch the pointer any more (see the module header).
        let ptr: *const Job = unsafe { std::mem::transmute::<&(dyn Fn(usize, usize) + Sync + '_), &'static Job>(f) };
        let epoch = sh.epoch.load(Ordering::SeqCst) + 1;
        *sh.job.lock().unwrap_or_else(|e| e.into_inner()) = Some((JobPtr(ptr), epoch, dynamic));
        sh.panicked.store(false, Ordering::Relaxed);
        if dynamic {
            sh.open.store(epoch, Ordering::SeqCst);
        } else {
            sh.remaining.store(n - 1, Ordering::SeqCst);
        }
        sh.epoch.store(epoch, Ordering::SeqCst);
        if sh.sleepers.load(Ordering::SeqCst) > 0 {
            notify_all(sh);
        }
        struct Wait<'a>(&'a Shared, bool);
        impl Drop for Wait<'_> {
            fn drop(&mut self) {
                let counter = if self.1 {
                    self.0.open.store(0, Ordering::SeqCst);
                    &self.0.active
                } else {
                    &self.0.remaining
                };
                let mut spins = 0u32;
                while counter.load(Ordering::SeqCst) != 0 {
                    spins = spins.wrapping_add(1);
                    if spins.is_multiple_of(1024) {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        }
        let wait = Wait(sh, dynamic);
        IN_JOB.with(|c| c.set(true));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0, n)));
        IN_JOB.with(|c| c.set(false));
        drop(wait);
        if let Err(p) = r {
            std::panic::resume_unwind(p);
        }
        if sh.panicked.load(Ordering::Acquire) {
            panic!("a rocmforge-cpu worker thread panicked inside ThreadPool::run");
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        notify_all(&self.shared);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn default_threads() -> usize {
    if let Ok(s) = std::env::var("ROCMFORGE_THREADS") {
        if let Ok(n) = s.trim().parse::<usize>() {
            if n > 0 {
                return n;
            }
        }
    }
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn notify_all(sh: &Shared) {
    let _g = sh.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
    sh.wake.notify_all();
}

fn worker(sh: Arc<Shared>, idx: usize) {
    IN_JOB.with(|c| c.set(true));
    let mut seen = 0u64;
    loop {
        // Spin, then sleep, until a new epoch (a job) or shutdown.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if sh.shutdown.load(Ordering::Acquire) {
                return;
            }
            if sh.epoch.load(Ordering::Acquire) != seen {
                break;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                let g = sh.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
                sh.sleepers.fetch_add(1, Ordering::SeqCst);
                let mut g = g;
                while sh.epoch.load(Ordering::SeqCst) == seen && !sh.shutdown.load(Ordering::SeqCst) {
                    g = sh.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                sh.sleepers.fetch_sub(1, Ordering::SeqCst);
                drop(g);
            } else {
                std::hint::spin_loop();
            }
        }
        seen = sh.epoch.load(Ordering::SeqCst);
        let job = *sh.job.lock().unwrap_or_else(|e| e.into_inner());
        let Some((JobPtr(p), job_epoch, dynamic)) = job else {
            continue;
        };
        if job_epoch != seen {
            // A newer job was published meanwhile; the next loop iteration picks it up.
            continue;
        }
        let call = || {
            // SAFETY: the caller keeps the closure alive while we may run it (module header).
            let f: &Job = unsafe { &*p };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(idx, sh.n_threads))).is_err() {
                sh.panicked.store(true, Ordering::Release);
            }
        };
        if dynamic {
            sh.active.fetch_add(1, Ordering::SeqCst);
            if sh.open.load(Ordering::SeqCst) == seen {
                call();
            }
            sh.active.fetch_sub(1, Ordering::SeqCst);
        } else {
            call();
            sh.remaining.fetch_sub(1, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_index_runs_once_per_job() {
        let pool = ThreadPool::new(3);
        for _ in 0..1000 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            pool.run(|i, n| {
                assert_eq!(n, 3);
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn nested_run_is_inline_and_panics_propagate() {
        let pool = ThreadPool::new(2);
        let count = AtomicUsize::new(0);
        pool.run(|_, _| {
            pool.run(|i, n| {
                assert_eq!((i, n), (0, 1));
                count.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(count.load(Ordering::Relaxed), 2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.run(|i, _| assert_ne!(i, 1))));
        assert!(r.is_err());
        // The pool still works afterwards.
        let c2 = AtomicUsize::new(0);
        pool.run(|_, _| {
            c2.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(c2.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn dynamic_jobs_cover_all_chunks() {
        let pool = ThreadPool::new(3);
        for _ in 0..2000 {
            let next = AtomicUsize::new(0);
            let done: Vec<AtomicUsize> = (0..37).map(|_| AtomicUsize::new(0)).collect();
            pool.run_dynamic(|_, _| loop {
                let c = next.fetch_add(1, Ordering::Relaxed);
                if c >= done.len() {
                    break;
                }
                done[c].fetch_add(1, Ordering::Relaxed);
            });
            assert!(done.iter().all(|d| d.load(Ordering::Relaxed) == 1));
            // A strict job right after a dynamic one still runs on every thread.
            let hits = AtomicUsize::new(0);
            pool.run(|_, _| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(hits.load(Ordering::Relaxed), 3);
        }
    }

    #[test]
    fn sleeping_workers_wake_up() {
        let pool = ThreadPool::new(2);
        std::thread::sleep(Duration::from_millis(5));
        let c = AtomicUsize::new(0);
        pool.run(|_, _| {
            c.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(c.load(Ordering::Relaxed), 2);
    }
}
