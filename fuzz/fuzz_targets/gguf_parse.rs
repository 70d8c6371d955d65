//! Fuzz target: `GgufFile::from_bytes` on arbitrary bytes must return a typed error or a file
//! whose every tensor view has exactly `n_bytes` bytes. Accepted files are also re-written with
//! `GgufWriter::from_file` as an oracle: the rewrite must parse, keep metadata and tensor data,
//! and rewriting it again must give the same bytes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rocmforge_model::gguf::{GgufFile, GgufWriter};

fuzz_target!(|data: &[u8]| {
    let Ok(f) = GgufFile::from_bytes(Path::new("fuzz.gguf"), data.to_vec()) else {
        return;
    };
    let mut checksum = 0u8;
    for t in f.tensors() {
        let d = f.tensor_data(t);
        assert_eq!(d.len() as u64, t.n_bytes, "tensor view of {}", t.name);
        checksum ^= d.iter().fold(0u8, |a, &b| a ^ b);
        assert_eq!(f.tensor(&t.name), Some(t));
    }
    std::hint::black_box(checksum);
    for (k, v) in f.metadata() {
        assert!(f.get(k).is_some());
        std::hint::black_box((v.as_u64(), v.as_f64(), v.as_str(), v.type_name()));
    }
    // A legal but absurd alignment would make the rewrite emit gigabytes of padding.
    if f.alignment() > 1 << 16 {
        return;
    }
    let w = GgufWriter::from_file(&f).expect("a parsed file's tensor infos are writable");
    let bytes = w
        .to_bytes(|i| Ok(f.tensor_data(&f.tensors()[i])))
        .expect("rewrite");
    let g = GgufFile::from_bytes(Path::new("rewrite.gguf"), bytes.clone()).expect("rewrite parses");
    assert_eq!(g.metadata().len(), f.metadata().len());
    assert_eq!(g.tensors().len(), f.tensors().len());
    for (a, b) in f.tensors().iter().zip(g.tensors()) {
        assert_eq!(
            (&a.name, &a.dims, a.ty, a.n_bytes),
            (&b.name, &b.dims, b.ty, b.n_bytes)
        );
        assert_eq!(f.tensor_data(a), g.tensor_data(b));
    }
    let again = GgufWriter::from_file(&g)
        .expect("writable")
        .to_bytes(|i| Ok(g.tensor_data(&g.tensors()[i])));
    assert_eq!(again.expect("second rewrite"), bytes);
});
