//! Weight files to named tensors: PyTorch's legacy `.pth` format, PyTorch's zip format and
//! safetensors, told apart by their first bytes.
//!
//! The legacy format (what `torch.save` wrote before PyTorch 1.6, and what torchvision's VGG16
//! and GoogLeNet files and the EfficientNet-Lite0 checkpoint still are) is a sequence of
//! pickles followed by raw storages:
//!
//! ```text
//! pickle: magic number 0x1950a86a20f9469cfc6c   (a fixed 15-byte prefix, checked as bytes)
//! pickle: protocol version 1001
//! pickle: sys info {protocol_version, little_endian, type_sizes}
//! pickle: the object (a state dict), storages referenced by persistent ids
//!         ("storage", <torch.XStorage>, key, location, element count[, view metadata])
//! pickle: the storage keys, sorted
//! then for each key in that order: element count (u64 little-endian), raw little-endian bytes
//! ```
//!
//! The zip format holds the same object pickle (`<archive>/data.pkl`) and one entry per storage
//! (`<archive>/data/<key>`); both formats go through one path here. candle's pickle parser
//! (`candle_core::pickle`) is reused for the pickles, after [`crate::pickle_guard`] has bounded
//! what they may build. It builds plain data: no class is instantiated, no code runs, whatever
//! the file says. Tensors are rebuilt from `torch._utils._rebuild_tensor_v2` (also inside
//! `_rebuild_parameter`) with their storage offset and strides, so views and
//! tensors sharing a storage come out right.

use crate::pickle_guard;
use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// The first pickle of every legacy file: protocol 2, `LONG1` of 10 bytes
/// (0x1950a86a20f9469cfc6c), `STOP`.
const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e";
const LEGACY_PROTOCOL: i64 = 1001;

/// How a weight file was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `torch.save` before PyTorch 1.6 (or with `_use_new_zipfile_serialization=False`).
    PytorchLegacy,
    /// `torch.save` since PyTorch 1.6: a zip archive.
    PytorchZip,
    /// A `.safetensors` file.
    Safetensors,
}

/// Why a weight file could not be read. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a weight file this reader knows (PyTorch legacy or zip .pth, .safetensors): {why}")]
    NotACheckpoint { path: PathBuf, why: String },
    #[error("{path}: malformed {format:?} checkpoint: {why}")]
    Malformed {
        path: PathBuf,
        format: Format,
        why: String,
    },
    #[error("{path}: {what} is not supported")]
    Unsupported { path: PathBuf, what: String },
}

/// The named tensors of a weight file, sorted by name (candle's pickle parser does not keep
/// a dict's order, and nothing here depends on it).
#[derive(Debug)]
pub struct Checkpoint {
    pub format: Format,
    pub tensors: Vec<(String, Tensor)>,
}

impl Checkpoint {
    fn sorted(format: Format, mut tensors: Vec<(String, Tensor)>) -> Self {
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        Checkpoint { format, tensors }
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// Reads every tensor of a weight file onto the CPU. `key` selects a nested state dict
/// (`{"state_dict": {...}, "epoch": 3}`); without it, a dict whose only dict value holds
/// tensors is not unwrapped: the caller says which key.
///
/// The file is untrusted input: whatever its bytes, this returns an error rather than
/// panicking, and allocates in proportion to the file's length, not to sizes it claims
/// (see [`crate::pickle_guard`]; `crates/models/tests/fuzz.rs` tries it).
pub fn load(path: &Path, key: Option<&str>) -> Result<Checkpoint, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    })?;
    from_bytes(path, &bytes, key)
}

/// [`load`] of a file's bytes; `path` names it in errors.
pub fn from_bytes(
    path: &Path,
    bytes: &[u8],
    key: Option<&str>,
) -> Result<Checkpoint, CheckpointError> {
    let head = &bytes[..bytes.len().min(16)];
    let (format, read): (Format, Reader) = if head.starts_with(b"PK\x03\x04") {
        (Format::PytorchZip, read_zip)
    } else if head.starts_with(LEGACY_MAGIC) {
        (Format::PytorchLegacy, read_legacy)
    } else if head.len() >= 9 && head[8] == b'{' {
        (Format::Safetensors, read_safetensors)
    } else {
        return Err(CheckpointError::NotACheckpoint {
            path: path.to_owned(),
            why: format!(
                "first bytes {}",
                head.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
        });
    };
    read(bytes, key).map_err(|e| match e {
        ReadError::Malformed(why) => CheckpointError::Malformed {
            path: path.to_owned(),
            format,
            why,
        },
        ReadError::Unsupported(what) => CheckpointError::Unsupported {
            path: path.to_owned(),
            what,
        },
    })
}

fn read_safetensors(bytes: &[u8], _key: Option<&str>) -> Result<Checkpoint, ReadError> {
    // The safetensors crate checks the header's length, every offset and every size against
    // the buffer before candle copies a tensor out of it.
    let map = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
        .map_err(|e| bad(crate::candle_message(&e)))?;
    Ok(Checkpoint::sorted(
        Format::Safetensors,
        map.into_iter().collect(),
    ))
}

/// A format's reader of a whole file's bytes.
type Reader = fn(&[u8], Option<&str>) -> Result<Checkpoint, ReadError>;

enum ReadError {
    Malformed(String),
    Unsupported(String),
}

fn bad(why: impl Into<String>) -> ReadError {
    ReadError::Malformed(why.into())
}

/// At most this many characters of a value are quoted in an error.
const QUOTE: usize = 160;

/// A value as an error quotes it: its debug form, cut.
fn brief(o: &Object) -> String {
    let s = format!("{o:?}");
    match s.char_indices().nth(QUOTE) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

/// The pickle at the start of `bytes` and its length. [`pickle_guard::weigh`] bounds what it
/// may build before candle's parser (data only: no class is instantiated, no code runs)
/// builds it; a panic in the parser would become an error here all the same.
fn pickle(bytes: &[u8], what: &str) -> Result<(Object, usize), ReadError> {
    let len = pickle_guard::weigh(bytes, pickle_guard::budget(bytes.len()))
        .map_err(|e| bad(format!("{what}: {e}")))?;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut stack = Stack::empty();
        stack.read_loop(&mut Cursor::new(&bytes[..len]))?;
        stack.finalize()
    }));
    match r {
        Ok(Ok(o)) => Ok((o, len)),
        Ok(Err(e)) => Err(bad(format!("{what}: {}", crate::candle_message(&e)))),
        Err(_) => Err(bad(format!("{what}: the pickle parser failed"))),
    }
}

/// A storage reference from a persistent id.
struct StorageRef {
    key: String,
    dtype: DType,
    elems: usize,
}

fn storage_dtype(class: &str) -> Result<DType, ReadError> {
    Ok(match class {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "ByteStorage" => DType::U8,
        "ShortStorage" => DType::I16,
        "IntStorage" => DType::I32,
        "LongStorage" => DType::I64,
        other => return Err(ReadError::Unsupported(format!("storage type {other}"))),
    })
}

fn int(o: Object, what: &str) -> Result<i64, ReadError> {
    o.int_or_long()
        .map_err(|o| bad(format!("{what}: expected an integer, found {}", brief(&o))))
}

fn ints(o: Object, what: &str) -> Result<Vec<usize>, ReadError> {
    let items = match o {
        Object::Tuple(v) | Object::List(v) => v,
        o => {
            return Err(bad(format!(
                "{what}: expected a tuple, found {}",
                brief(&o)
            )))
        }
    };
    items
        .into_iter()
        .map(|i| {
            let v = int(i, what)?;
            usize::try_from(v).map_err(|_| bad(format!("{what}: negative value {v}")))
        })
        .collect()
}

/// A tensor's recipe: its storage, offset, size and strides (in elements).
struct TensorRef {
    storage: StorageRef,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`, possibly wrapped
/// in `_rebuild_parameter(tensor, requires_grad, hooks)`. `None` for values that are not
/// tensors (a `num_batches_tracked` stored as a plain int, metadata).
fn tensor_ref(value: Object) -> Result<Option<TensorRef>, ReadError> {
    let (callable, args) = match value {
        Object::Reduce { callable, args } => (*callable, *args),
        _ => return Ok(None),
    };
    let (module, class) = match callable {
        Object::Class {
            module_name,
            class_name,
        } => (module_name, class_name),
        _ => return Ok(None),
    };
    let args = match (module.as_str(), class.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2") => args,
        ("torch._utils", "_rebuild_parameter") => {
            let mut a = args
                .tuple()
                .map_err(|o| bad(format!("parameter args {}", brief(&o))))?;
            if a.is_empty() {
                return Err(bad("_rebuild_parameter without arguments"));
            }
            return tensor_ref(a.remove(0));
        }
        ("torch._utils", other) if other.starts_with("_rebuild") => {
            return Err(ReadError::Unsupported(format!(
                "torch._utils.{other} tensors"
            )))
        }
        _ => return Ok(None),
    };
    let mut a = args
        .tuple()
        .map_err(|o| bad(format!("_rebuild_tensor_v2 args {}", brief(&o))))?;
    if a.len() < 4 {
        return Err(bad(format!(
            "_rebuild_tensor_v2 with {} arguments",
            a.len()
        )));
    }
    let stride = ints(a.remove(3), "stride")?;
    let size = ints(a.remove(2), "size")?;
    let offset = usize::try_from(int(a.remove(1), "storage offset")?)
        .map_err(|_| bad("negative storage offset"))?;
    let pid = a.remove(0).persistent_load().map_err(|o| {
        bad(format!(
            "tensor storage is not a persistent id: {}",
            brief(&o)
        ))
    })?;
    let mut pid = pid
        .tuple()
        .map_err(|o| bad(format!("persistent id {}", brief(&o))))?;
    if pid.len() < 5 {
        return Err(bad(format!("persistent id with {} fields", pid.len())));
    }
    if pid.len() > 5 && pid[5] != Object::None {
        return Err(ReadError::Unsupported(
            "storage views (view metadata in a persistent id)".into(),
        ));
    }
    let elems = usize::try_from(int(pid.remove(4), "storage size")?)
        .map_err(|_| bad("negative storage size"))?;
    let key = pid
        .remove(2)
        .unicode()
        .map_err(|o| bad(format!("storage key {}", brief(&o))))?;
    let (_, class) = pid
        .remove(1)
        .class()
        .map_err(|o| bad(format!("storage type {}", brief(&o))))?;
    Ok(Some(TensorRef {
        storage: StorageRef {
            key,
            dtype: storage_dtype(&class)?,
            elems,
        },
        offset,
        size,
        stride,
    }))
}

/// The tensors of a saved object: the dict at `key` (or the object itself), each value that
/// is a tensor with its recipe.
fn tensors_of(mut obj: Object, key: Option<&str>) -> Result<Vec<(String, TensorRef)>, ReadError> {
    if let Some(k) = key {
        obj = match obj {
            Object::Dict(items) => items
                .into_iter()
                .find(|(n, _)| *n == Object::Unicode(k.to_owned()))
                .map(|(_, v)| v)
                .ok_or_else(|| bad(format!("no key `{k}` in the saved dict")))?,
            o => {
                return Err(bad(format!(
                    "key `{k}` asked, but the saved object is {}",
                    brief(&o)
                )))
            }
        };
    }
    let items = match obj {
        Object::Dict(items) => items,
        Object::Build { .. } | Object::Reduce { .. } => {
            return Err(ReadError::Unsupported(
                "a pickled module (save its state_dict() instead)".into(),
            ))
        }
        o => {
            return Err(bad(format!(
                "expected a dict of tensors, found {}",
                brief(&o)
            )))
        }
    };
    let mut names: Vec<String> = items
        .iter()
        .map(|(n, _)| match n {
            Object::Unicode(s) => s.clone(),
            o => brief(o),
        })
        .collect();
    names.sort();
    let mut refs = Vec::new();
    for (name, value) in items {
        let name = name
            .unicode()
            .map_err(|o| bad(format!("tensor name {}", brief(&o))))?;
        if let Some(t) = tensor_ref(value)? {
            refs.push((name, t));
        }
    }
    if refs.is_empty() {
        names.truncate(20);
        return Err(bad(format!(
            "no tensors at the top level (keys: {}); name the nested state dict with `key`",
            names.join(", ")
        )));
    }
    Ok(refs)
}

/// Each storage's dtype and element count, one entry per key; two tensors that name one
/// storage must agree on it.
fn storage_table(
    refs: &[(String, TensorRef)],
) -> Result<HashMap<String, (DType, usize)>, ReadError> {
    let mut table: HashMap<String, (DType, usize)> = HashMap::new();
    for (name, t) in refs {
        let s = &t.storage;
        match table.insert(s.key.clone(), (s.dtype, s.elems)) {
            Some(prev) if prev != (s.dtype, s.elems) => {
                return Err(bad(format!(
                    "{name}: storage {} is {:?} x {} here and {:?} x {} elsewhere",
                    s.key, s.dtype, s.elems, prev.0, prev.1
                )))
            }
            _ => {}
        }
    }
    Ok(table)
}

/// Rebuilds each tensor from its storage's bytes.
fn build(
    format: Format,
    refs: Vec<(String, TensorRef)>,
    storages: &HashMap<&str, &[u8]>,
) -> Result<Checkpoint, ReadError> {
    let mut tensors = Vec::with_capacity(refs.len());
    for (name, t) in refs {
        let data = storages.get(t.storage.key.as_str()).ok_or_else(|| {
            bad(format!(
                "{name}: storage {} is not in the file",
                t.storage.key
            ))
        })?;
        let tensor = gather(data, &t).map_err(|why| bad(format!("{name}: {why}")))?;
        tensors.push((name, tensor));
    }
    Ok(Checkpoint::sorted(format, tensors))
}

fn storage_bytes(key: &str, dtype: DType, elems: usize) -> Result<usize, ReadError> {
    elems
        .checked_mul(dtype.size_in_bytes())
        .ok_or_else(|| bad(format!("storage {key}: size overflows")))
}

fn read_legacy(bytes: &[u8], key: Option<&str>) -> Result<Checkpoint, ReadError> {
    let mut pos = LEGACY_MAGIC.len();
    let mut next = |what: &str| -> Result<Object, ReadError> {
        let (o, len) = pickle(&bytes[pos..], what)?;
        pos += len;
        Ok(o)
    };
    let proto = int(next("protocol version")?, "protocol version")?;
    if proto != LEGACY_PROTOCOL {
        return Err(ReadError::Unsupported(format!(
            "legacy protocol version {proto} (this reader knows {LEGACY_PROTOCOL})"
        )));
    }
    let sys = next("sys info")?;
    if let Object::Dict(items) = &sys {
        for (k, v) in items {
            if *k == Object::Unicode("little_endian".into()) && *v == Object::Bool(false) {
                return Err(ReadError::Unsupported("big-endian checkpoints".into()));
            }
        }
    }
    let obj = next("the saved object")?;
    let keys_obj = next("storage keys")?;
    let keys: Vec<String> = match keys_obj {
        Object::List(v) | Object::Tuple(v) => v
            .into_iter()
            .map(|k| {
                k.unicode()
                    .map_err(|o| bad(format!("storage key {}", brief(&o))))
            })
            .collect::<Result<_, _>>()?,
        o => {
            return Err(bad(format!(
                "storage keys: expected a list, found {}",
                brief(&o)
            )))
        }
    };
    let refs = tensors_of(obj, key)?;
    let table = storage_table(&refs)?;

    // The storages follow the keys pickle, in the keys' order: each an element count (u64
    // little-endian), then its bytes.
    let mut storages: HashMap<&str, &[u8]> = HashMap::new();
    for k in &keys {
        let count_bytes = pos
            .checked_add(8)
            .and_then(|end| bytes.get(pos..end))
            .ok_or_else(|| bad(format!("storage {k}: file ends before its size")))?;
        let count = u64::from_le_bytes(count_bytes.try_into().expect("8 bytes"));
        pos += 8;
        let Some(&(dtype, elems)) = table.get(k.as_str()) else {
            return Err(bad(format!("storage {k} is listed but no tensor uses it")));
        };
        if count != elems as u64 {
            return Err(bad(format!(
                "storage {k}: {count} elements on disk, {elems} in its reference"
            )));
        }
        let len = storage_bytes(k, dtype, elems)?;
        let data = pos
            .checked_add(len)
            .and_then(|end| bytes.get(pos..end))
            .ok_or_else(|| bad(format!("storage {k}: file ends inside its {len} bytes")))?;
        let (k, _) = table.get_key_value(k.as_str()).expect("looked up above");
        storages.insert(k.as_str(), data);
        pos += len;
    }
    build(Format::PytorchLegacy, refs, &storages)
}

/// The bytes of a zip entry stored uncompressed (as `torch.save` writes every entry), as a
/// slice of the file: nothing is copied, and an entry can hold no more than the file. `want`
/// is the size its storage needs. The entries' CRCs are not checked (the legacy format has
/// none either; a model card checks the whole file's blake3).
fn stored<'b>(
    zip: &mut zip::ZipArchive<Cursor<&'b [u8]>>,
    bytes: &'b [u8],
    name: &str,
    want: Option<usize>,
) -> Result<&'b [u8], ReadError> {
    let e = zip.by_name(name).map_err(|e| bad(format!("{name}: {e}")))?;
    if e.compression() != zip::CompressionMethod::Stored {
        return Err(ReadError::Unsupported(format!(
            "{name}: compressed zip entries ({:?}; torch.save stores them)",
            e.compression()
        )));
    }
    let size = e.size();
    if let Some(w) = want {
        if size != w as u64 {
            return Err(bad(format!("{name}: {size} bytes, its storage needs {w}")));
        }
    }
    let start = e
        .data_start()
        .ok_or_else(|| bad(format!("{name}: no data offset")))?;
    start
        .checked_add(size)
        .and_then(|end| bytes.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?))
        .ok_or_else(|| {
            bad(format!(
                "{name}: {size} bytes at offset {start} pass the end of a file of {}",
                bytes.len()
            ))
        })
}

/// PyTorch's zip format: `<archive>/data.pkl` (the object, storages as persistent ids, the
/// same recipes as the legacy format) and `<archive>/data/<key>` (each storage's raw
/// little-endian bytes), read in place ([`stored`]).
fn read_zip(bytes: &[u8], key: Option<&str>) -> Result<Checkpoint, ReadError> {
    let mut zip =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| bad(format!("zip archive: {e}")))?;
    let pkl = zip
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .map(|n| n.into_owned())
        .ok_or_else(|| bad("no <archive>/data.pkl entry"))?;
    let prefix = pkl
        .strip_suffix("data.pkl")
        .expect("checked suffix")
        .to_owned();
    let (obj, _) = pickle(stored(&mut zip, bytes, &pkl, None)?, "data.pkl")?;
    let refs = tensors_of(obj, key)?;
    let table = storage_table(&refs)?;
    let mut storages: HashMap<&str, &[u8]> = HashMap::with_capacity(table.len());
    for (k, &(dtype, elems)) in &table {
        if k.contains(['/', '\\']) || k.contains("..") {
            return Err(bad(format!("storage key {k:?} is not a plain name")));
        }
        let want = storage_bytes(k, dtype, elems)?;
        storages.insert(
            k,
            stored(&mut zip, bytes, &format!("{prefix}data/{k}"), Some(want))?,
        );
    }
    build(Format::PytorchZip, refs, &storages)
}

/// Copies a strided view of a storage into a contiguous tensor. The view may not reach past
/// its storage, nor hold more elements than it (broadcast views of stride 0 are refused), so
/// what is allocated is bounded by the storage's real bytes.
fn gather(storage: &[u8], t: &TensorRef) -> Result<Tensor, String> {
    let es = t.storage.dtype.size_in_bytes();
    if t.size.len() != t.stride.len() {
        return Err(format!(
            "{} sizes but {} strides",
            t.size.len(),
            t.stride.len()
        ));
    }
    let n = t
        .size
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("its element count overflows")?;
    if n > t.storage.elems {
        return Err(format!(
            "a view of {n} elements over a storage of {}",
            t.storage.elems
        ));
    }
    if t.storage.elems.checked_mul(es) != Some(storage.len()) {
        return Err(format!(
            "storage of {} bytes for {} elements",
            storage.len(),
            t.storage.elems
        ));
    }
    let mut out = Vec::with_capacity(n * es);
    if n > 0 {
        // The largest element index the view touches must lie inside the storage.
        let last = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |a, (&s, &st)| {
                (s - 1).checked_mul(st).and_then(|x| a.checked_add(x))
            })
            .ok_or("its extent overflows")?;
        if last >= t.storage.elems {
            return Err(format!(
                "view reaches element {last} of a storage of {}",
                t.storage.elems
            ));
        }
        let mut idx = vec![0usize; t.size.len()];
        for _ in 0..n {
            let e = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
            out.extend_from_slice(&storage[e * es..(e + 1) * es]);
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < t.size[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
    }
    Tensor::from_raw_buffer(&out, t.storage.dtype, &t.size, &Device::Cpu).map_err(|e| e.to_string())
}
