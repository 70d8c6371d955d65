//! The model manager and a model whose device was lost (`Backend::device_lost`): the resident
//! instance is dropped — by the next `acquire` of it, or by the reaper even while requests hold
//! it — and the next request loads a fresh instance through the loader (which, in the real
//! server, the GPU layer then keeps off the lost device). The loss is injected through a test
//! backend: this tests the manager's control flow, not a device.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rocmforge_chat::RenderRequest;
use rocmforge_engine::request::Request;
use rocmforge_tokenizer::Tokenizer;

use crate::backend::fake::{byte_tokenizer, Fake};
use crate::backend::{Backend, BackendError, BoxFuture, EventRx, Loader, ModelFacts};
use crate::manager::{Manager, Resolved};

/// The fake model, plus a switch that makes it report a lost device.
struct Lossy {
    inner: Fake,
    lost: Arc<Mutex<Option<String>>>,
}

impl Backend for Lossy {
    fn facts(&self) -> &ModelFacts {
        self.inner.facts()
    }
    fn tokenizer(&self) -> &Arc<Tokenizer> {
        self.inner.tokenizer()
    }
    fn render_chat(&self, req: &RenderRequest<'_>) -> Result<String, BackendError> {
        self.inner.render_chat(req)
    }
    fn chat_tokens(&self, req: &RenderRequest<'_>) -> Result<Vec<u32>, BackendError> {
        self.inner.chat_tokens(req)
    }
    fn raw_tokens(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>, BackendError> {
        self.inner.raw_tokens(text, add_special, parse_special)
    }
    fn submit(&self, req: Request) -> Result<EventRx, BackendError> {
        self.inner.submit(req)
    }
    fn embed(&self, inputs: Vec<Vec<u32>>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, BackendError>> {
        self.inner.embed(inputs)
    }
    fn device_lost(&self) -> Option<String> {
        self.lost.lock().unwrap().clone()
    }
}

/// Counts loads and keeps each loaded instance's switch.
#[derive(Default)]
struct Loads {
    n: AtomicUsize,
    switches: Mutex<Vec<Arc<Mutex<Option<String>>>>>,
}

impl Loader for Loads {
    fn load(&self, _: &std::path::Path, _: Option<usize>) -> Result<Arc<dyn Backend>, BackendError> {
        self.n.fetch_add(1, Ordering::SeqCst);
        let lost = Arc::new(Mutex::new(None));
        self.switches.lock().unwrap().push(lost.clone());
        let inner = Fake { facts: ModelFacts { n_ctx: 64, ..Default::default() }, tok: byte_tokenizer(), pieces: vec!["a"], stats: None };
        Ok(Arc::new(Lossy { inner, lost }))
    }
}

const WHY: &str = "GPU cuda:0 is unusable after a device error (StreamSynchronize failed: CUDA_ERROR_ILLEGAL_ADDRESS (700))";

fn manager() -> (Arc<Manager>, Arc<Loads>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let loads = Arc::new(Loads::default());
    let mgr = Manager::new(rocmforge_store::Store::new(dir.path()), Vec::new(), Vec::new(), loads.clone());
    (Arc::new(mgr), loads, dir)
}

fn lose(loads: &Loads, instance: usize) {
    *loads.switches.lock().unwrap()[instance].lock().unwrap() = Some(WHY.into());
}

#[tokio::test]
async fn acquire_drops_a_model_whose_device_was_lost_and_loads_it_again() {
    let (mgr, loads, _dir) = manager();
    let r = Resolved::for_tests("/models/m.gguf");
    let first = mgr.acquire(&r, None, None).await.expect("load").model.id;
    let again = mgr.acquire(&r, None, None).await.expect("reuse").model.id;
    assert_eq!((first, loads.n.load(Ordering::SeqCst)), (again, 1), "a working model is reused");
    lose(&loads, 0);
    let lease = mgr.acquire(&r, None, None).await.expect("reload");
    assert_eq!(loads.n.load(Ordering::SeqCst), 2, "the lost instance is not reused");
    assert_ne!(lease.model.id, first);
    assert!(lease.model.backend.device_lost().is_none());
    let ids: Vec<u64> = mgr.residents().iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![lease.model.id], "only the fresh instance is resident");
}

#[tokio::test]
async fn the_reaper_drops_a_lost_model_even_while_a_request_holds_it() {
    let (mgr, loads, _dir) = manager();
    let r = Resolved::for_tests("/models/m.gguf");
    let held = mgr.acquire(&r, None, None).await.expect("load");
    lose(&loads, 0);
    mgr.reap();
    assert!(mgr.residents().is_empty(), "the lost model is still resident");
    // The request that held it ends (its lease drops) without bringing it back.
    drop(held);
    assert!(mgr.residents().is_empty());
    let lease = mgr.acquire(&r, None, None).await.expect("reload");
    assert_eq!(loads.n.load(Ordering::SeqCst), 2);
    assert!(lease.model.backend.device_lost().is_none());
}

#[tokio::test]
async fn a_failed_reload_is_a_load_error_naming_the_device() {
    // What a named GPU does after the loss: the loader refuses, and the request gets a load
    // error that says why (the real message comes from rocmforge_gpu's DeviceLost).
    struct Refuses;
    impl Loader for Refuses {
        fn load(&self, _: &std::path::Path, _: Option<usize>) -> Result<Arc<dyn Backend>, BackendError> {
            Err(BackendError::Failed(format!("GPU: {WHY}; it stays unusable until the process restarts")))
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mgr = Arc::new(Manager::new(rocmforge_store::Store::new(dir.path()), Vec::new(), Vec::new(), Arc::new(Refuses)));
    let e = mgr.acquire(&Resolved::for_tests("/models/m.gguf"), None, None).await.err().expect("refused").to_string();
    assert!(e.contains("/models/m.gguf") && e.contains("CUDA_ERROR_ILLEGAL_ADDRESS") && e.contains("restarts"), "{e}");
    assert!(mgr.residents().is_empty());
}
