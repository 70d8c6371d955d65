//! `GgufWriter` -> `GgufFile` round trips on synthetic files (every value type, nested arrays,
//! several tensor types, custom alignment, v2), byte-exact re-writes, and the writer's own
//! checks. The layout the writer must produce is checked independently against a hand-assembled
//! file (bytes spelled out from the GGUF spec, not produced by our writer).

use rocmforge_model::gguf::{GgufArray, GgufFile, GgufValue, GgufWriter, TensorInfo};
use rocmforge_model::ModelError;
use rocmforge_quant::GgmlType;
use std::path::Path;

fn all_values() -> Vec<(String, GgufValue)> {
    let nested = GgufArray::Array(vec![
        GgufArray::I32(vec![1, -2, 3]),
        GgufArray::Str(vec!["a".into(), "ünï".into()]),
        GgufArray::Array(vec![GgufArray::F64(vec![0.5]), GgufArray::Bool(vec![])]),
    ]);
    vec![
        ("general.architecture".into(), GgufValue::Str("llama".into())),
        ("t.u8".into(), GgufValue::U8(200)),
        ("t.i8".into(), GgufValue::I8(-100)),
        ("t.u16".into(), GgufValue::U16(60000)),
        ("t.i16".into(), GgufValue::I16(-30000)),
        ("t.u32".into(), GgufValue::U32(4_000_000_000)),
        ("t.i32".into(), GgufValue::I32(-2_000_000_000)),
        ("t.f32".into(), GgufValue::F32(-1.25e-7)),
        ("t.bool".into(), GgufValue::Bool(true)),
        ("t.str".into(), GgufValue::Str("héllo\n\u{1F600}".into())),
        ("t.empty_str".into(), GgufValue::Str(String::new())),
        ("t.u64".into(), GgufValue::U64(u64::MAX)),
        ("t.i64".into(), GgufValue::I64(i64::MIN)),
        ("t.f64".into(), GgufValue::F64(std::f64::consts::PI)),
        ("a.u8".into(), GgufValue::Array(GgufArray::U8(vec![0, 1, 255]))),
        ("a.i8".into(), GgufValue::Array(GgufArray::I8(vec![-128, 127]))),
        ("a.u16".into(), GgufValue::Array(GgufArray::U16(vec![1, 65535]))),
        ("a.i16".into(), GgufValue::Array(GgufArray::I16(vec![-1]))),
        ("a.u32".into(), GgufValue::Array(GgufArray::U32(vec![7; 5]))),
        ("a.i32".into(), GgufValue::Array(GgufArray::I32(vec![]))),
        ("a.f32".into(), GgufValue::Array(GgufArray::F32(vec![1.0, f32::INFINITY, -0.0]))),
        ("a.bool".into(), GgufValue::Array(GgufArray::Bool(vec![true, false, true]))),
        ("a.str".into(), GgufValue::Array(GgufArray::Str(vec!["x".into(), String::new(), "yz".into()]))),
        ("a.u64".into(), GgufValue::Array(GgufArray::U64(vec![u64::MAX]))),
        ("a.i64".into(), GgufValue::Array(GgufArray::I64(vec![i64::MIN, 0]))),
        ("a.f64".into(), GgufValue::Array(GgufArray::F64(vec![1e300]))),
        ("a.nested".into(), GgufValue::Array(nested)),
        ("a.empty_nested".into(), GgufValue::Array(GgufArray::Array(vec![]))),
    ]
}

/// Deterministic filler bytes for tensor `i`.
fn data_for(t: &TensorInfo, i: usize) -> Vec<u8> {
    (0..t.n_bytes).map(|k| (k as usize * 31 + i * 7) as u8).collect()
}

fn sample_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    for (k, v) in all_values() {
        w.set(k, v);
    }
    w.add_tensor_info("f32.weight", vec![3, 2], GgmlType::F32).unwrap();
    w.add_tensor_info("q4.weight", vec![64, 2], GgmlType::Q4_0).unwrap();
    w.add_tensor_info("f16.odd", vec![5], GgmlType::F16).unwrap();
    w.add_tensor_info("empty", vec![0, 4], GgmlType::F32).unwrap();
    w.add_tensor_info("qk.weight", vec![256, 1, 1, 2], GgmlType::Q4_K).unwrap();
    w
}

fn write(w: &GgufWriter) -> Vec<u8> {
    let infos = w.tensor_infos().unwrap();
    w.to_bytes(|i| Ok(data_for(&infos[i], i))).unwrap()
}

#[test]
fn round_trip_every_value_type_and_tensors() {
    let w = sample_writer();
    let bytes = write(&w);
    let f = GgufFile::from_bytes(Path::new("mem.gguf"), bytes.clone()).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.data_offset() % 32, 0);
    assert_eq!(f.metadata(), all_values().as_slice());
    assert_eq!(f.tensors(), w.tensor_infos().unwrap().as_slice());
    let want_bytes = [24u64, 36 * 2, 10, 0, 144 * 2];
    for (i, t) in f.tensors().iter().enumerate() {
        assert_eq!(t.n_bytes, want_bytes[i], "{}", t.name);
        assert_eq!(t.offset % 32, 0);
        assert_eq!(f.tensor_data(t), data_for(t, i).as_slice(), "{}", t.name);
    }
    assert_eq!(f.tensor("q4.weight").unwrap().n_elements(), 128);
    // Re-writing the read file gives the same bytes.
    let again = GgufWriter::from_file(&f).unwrap().to_bytes(|i| Ok(f.tensor_data(&f.tensors()[i]))).unwrap();
    assert_eq!(again, bytes);
    // The last tensor is padded too: the file ends on an alignment boundary.
    assert_eq!(bytes.len() % 32, 0);
}

#[test]
fn custom_alignment_and_version_2() {
    let mut w = sample_writer();
    w.set("general.alignment", GgufValue::U32(256));
    w.set_version(2).unwrap();
    let bytes = write(&w);
    let f = GgufFile::from_bytes(Path::new("mem.gguf"), bytes.clone()).unwrap();
    assert_eq!((f.version(), f.alignment()), (2, 256));
    assert_eq!(f.data_offset() % 256, 0);
    for t in f.tensors() {
        assert_eq!(t.offset % 256, 0);
    }
    let again = GgufWriter::from_file(&f).unwrap().to_bytes(|i| Ok(f.tensor_data(&f.tensors()[i]))).unwrap();
    assert_eq!(again, bytes);
    assert!(w.set_version(1).is_err());
}

#[test]
fn set_replaces_in_place_and_remove() {
    let mut w = GgufWriter::new();
    w.set("a", GgufValue::U32(1));
    w.set("b", GgufValue::U32(2));
    w.set("a", GgufValue::Str("x".into()));
    let keys: Vec<&str> = w.metadata().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a", "b"]);
    assert_eq!(w.get("a"), Some(&GgufValue::Str("x".into())));
    assert_eq!(w.remove("a"), Some(GgufValue::Str("x".into())));
    assert_eq!(w.metadata().len(), 1);
}

/// The writer's output equals a file assembled by hand from the GGUF spec.
#[test]
fn writer_layout_matches_hand_assembled_file() {
    let mut w = GgufWriter::new();
    w.set("k", GgufValue::Array(GgufArray::U16(vec![1, 2])));
    w.add_tensor_info("t", vec![3], GgmlType::F32).unwrap();
    let data = [1u8; 12];
    let got = w.to_bytes(|_| Ok(&data[..])).unwrap();

    let mut want = Vec::new();
    want.extend_from_slice(b"GGUF");
    want.extend_from_slice(&3u32.to_le_bytes());
    want.extend_from_slice(&1u64.to_le_bytes()); // tensors
    want.extend_from_slice(&1u64.to_le_bytes()); // kv
    want.extend_from_slice(&1u64.to_le_bytes());
    want.push(b'k');
    want.extend_from_slice(&9u32.to_le_bytes()); // ARRAY
    want.extend_from_slice(&2u32.to_le_bytes()); // of U16
    want.extend_from_slice(&2u64.to_le_bytes());
    want.extend_from_slice(&[1, 0, 2, 0]);
    want.extend_from_slice(&1u64.to_le_bytes());
    want.push(b't');
    want.extend_from_slice(&1u32.to_le_bytes()); // n_dims
    want.extend_from_slice(&3u64.to_le_bytes());
    want.extend_from_slice(&0u32.to_le_bytes()); // F32
    want.extend_from_slice(&0u64.to_le_bytes()); // offset
    while want.len() % 32 != 0 {
        want.push(0);
    }
    want.extend_from_slice(&data);
    want.extend_from_slice(&[0u8; 20]);
    assert_eq!(got, want);
}

#[test]
fn write_file_then_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let w = sample_writer();
    let infos = w.tensor_infos().unwrap();
    w.write_file(&path, |i| Ok(data_for(&infos[i], i))).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.path(), path);
    assert_eq!(f.as_bytes(), write(&w).as_slice());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no .partial file left: {leftovers:?}");

    // A failing data callback leaves nothing behind.
    let bad = dir.path().join("bad.gguf");
    let err = w.write_file(&bad, |_| Err::<Vec<u8>, _>(ModelError::Other("boom".into()))).unwrap_err();
    assert!(matches!(err, ModelError::Other(_)));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn streaming_writer_checks_order_and_lengths() {
    let w = sample_writer();
    let infos = w.tensor_infos().unwrap();
    let mut out = Vec::new();
    w.write_header(&mut out).unwrap();
    // Out of order.
    let err = w.write_tensor_data(&mut out, 1, &data_for(&infos[1], 1)).unwrap_err();
    assert!(err.to_string().contains("out of order"), "{err}");
    // Wrong length.
    let err = w.write_tensor_data(&mut out, 0, &[0u8; 5]).unwrap_err();
    assert!(matches!(&err, ModelError::BadTensor { tensor, .. } if tensor == "f32.weight"), "{err}");
    // No such tensor.
    assert!(w.write_tensor_data(&mut out, 99, &[]).is_err());
    for (i, t) in infos.iter().enumerate() {
        w.write_tensor_data(&mut out, i, &data_for(t, i)).unwrap();
    }
    assert_eq!(out, write(&w));
}

#[test]
fn add_tensor_info_rejects_bad_shapes() {
    let mut w = GgufWriter::new();
    w.add_tensor_info("a", vec![32], GgmlType::Q8_0).unwrap();
    let dup = w.add_tensor_info("a", vec![32], GgmlType::Q8_0).unwrap_err();
    assert!(dup.to_string().contains("duplicate"), "{dup}");
    let blocks = w.add_tensor_info("b", vec![33, 2], GgmlType::Q8_0).unwrap_err();
    assert!(blocks.to_string().contains("multiple of"), "{blocks}");
    let overflow = w.add_tensor_info("c", vec![1 << 32, 1 << 32], GgmlType::F32).unwrap_err();
    assert!(overflow.to_string().contains("overflow"), "{overflow}");
    let dims = w.add_tensor_info("d", vec![1; 9], GgmlType::F32).unwrap_err();
    assert!(dims.to_string().contains("dims"), "{dims}");
    assert_eq!(w.n_tensors(), 1);
}

#[test]
fn writer_rejects_bad_alignment_and_deep_nesting() {
    let mut w = GgufWriter::new();
    w.set("general.alignment", GgufValue::U32(48));
    assert!(w.write_header(&mut Vec::new()).is_err());
    w.set("general.alignment", GgufValue::U32(0));
    assert!(w.write_header(&mut Vec::new()).is_err());
    w.set("general.alignment", GgufValue::U32(16));
    let mut a = GgufArray::U8(vec![1]);
    for _ in 0..8 {
        a = GgufArray::Array(vec![a]);
    }
    // Depth 9 (eight wrappers around a u8 array).
    w.set("deep", GgufValue::Array(a.clone()));
    assert!(w.write_header(&mut Vec::new()).is_err());
    // Depth 8 is fine and reads back.
    let GgufArray::Array(inner) = a else { unreachable!() };
    w.set("deep", GgufValue::Array(inner[0].clone()));
    let bytes = w.to_bytes(|_| Ok(Vec::new())).unwrap();
    let f = GgufFile::from_bytes(Path::new("mem"), bytes).unwrap();
    assert_eq!(f.alignment(), 16);
    assert_eq!(f.get("deep"), Some(&GgufValue::Array(inner[0].clone())));
}
