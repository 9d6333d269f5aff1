//! The checkpoint reader against files PyTorch wrote (`tests/fixtures/make_checkpoints.py`):
//! every tensor's dtype, shape and values as PyTorch reports them.

mod torch_reference;

use candle_core::DType;
use geoloc_models::checkpoint::{load, CheckpointError, Format};
use torch_reference::{fixture, values};

fn expected() -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(fixture("tiny_expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::I64 => "int64",
        DType::U8 => "uint8",
        _ => "other",
    }
}

fn check_all(file: &str, key: Option<&str>, format: Format) {
    let ck = load(&fixture(file), key).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert_eq!(ck.format, format);
    let exp = expected();
    let names: Vec<&String> = ck.tensors.iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        exp.keys().collect::<Vec<_>>(),
        "{file}: names in file order"
    );
    for (name, want) in &exp {
        let t = ck.get(name).unwrap();
        assert_eq!(dtype_name(t.dtype()), want["dtype"], "{file} {name}");
        let shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).unwrap();
        assert_eq!(t.dims(), shape.as_slice(), "{file} {name}");
        let want: Vec<f64> = serde_json::from_value(want["values"].clone()).unwrap();
        assert_eq!(values(t), want, "{file} {name}: values, bit for bit");
    }
}

#[test]
fn legacy_format_reads_every_dtype_view_and_shared_storage() {
    check_all("tiny_legacy.pth", None, Format::PytorchLegacy);
}

#[test]
fn zip_format_reads_the_same() {
    // candle's own zip reader gives the same tensors and values as the legacy reader (whose
    // values the test above checks against PyTorch's).
    let ck = load(&fixture("tiny_zip.pth"), None).unwrap();
    assert_eq!(ck.format, Format::PytorchZip);
    let legacy = load(&fixture("tiny_legacy.pth"), None).unwrap();
    assert_eq!(ck.tensors.len(), legacy.tensors.len());
    for (name, t) in &legacy.tensors {
        // candle's zip reader keeps the storage layout rather than copying; compare values.
        let z = ck.get(name).unwrap_or_else(|| panic!("zip lacks {name}"));
        assert_eq!(z.dims(), t.dims(), "{name}");
        assert_eq!(values(z), values(t), "{name}");
    }
}

#[test]
fn nested_state_dict_needs_its_key() {
    check_all(
        "tiny_nested_legacy.pth",
        Some("state_dict"),
        Format::PytorchLegacy,
    );
    let e = load(&fixture("tiny_nested_legacy.pth"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("epoch, state_dict") && e.contains("key"), "{e}");
    let e = load(&fixture("tiny_nested_legacy.pth"), Some("model"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no key `model`"), "{e}");
}

#[test]
fn damaged_and_foreign_files_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("tiny_legacy.pth")).unwrap();
    // Cut inside the storages: named as a malformed legacy file, with the storage.
    let cut = dir.path().join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let e = load(&cut, None).unwrap_err();
    assert!(
        matches!(
            e,
            CheckpointError::Malformed {
                format: Format::PytorchLegacy,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("storage"), "{e}");
    // Every shorter prefix is an error, never a panic.
    for n in (16..bytes.len()).step_by(23) {
        std::fs::write(&cut, &bytes[..n]).unwrap();
        assert!(load(&cut, None).is_err(), "prefix of {n} bytes");
    }
    let other = dir.path().join("photo.jpg");
    std::fs::write(&other, b"\xff\xd8\xff\xe0 not weights").unwrap();
    assert!(matches!(
        load(&other, None),
        Err(CheckpointError::NotACheckpoint { .. })
    ));
    let e = load(&dir.path().join("missing.pth"), None).unwrap_err();
    assert!(matches!(e, CheckpointError::Io { .. }) && e.to_string().contains("missing.pth"));
}

#[test]
fn safetensors_files_read_through_candle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let a = candle_core::Tensor::new(&[[1.5f32, -2.0], [0.25, 8.0]], &candle_core::Device::Cpu)
        .unwrap();
    let b = candle_core::Tensor::new(&[7i64, 9], &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("b".to_string(), b), ("a".to_string(), a)]),
        &path,
    )
    .unwrap();
    let ck = load(&path, None).unwrap();
    assert_eq!(ck.format, Format::Safetensors);
    assert_eq!(
        ck.tensors
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(
        ck.get("a").unwrap().to_vec2::<f32>().unwrap(),
        [[1.5, -2.0], [0.25, 8.0]]
    );
    assert_eq!(ck.get("b").unwrap().to_vec1::<i64>().unwrap(), [7, 9]);
}
