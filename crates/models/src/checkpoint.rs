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
//! candle reads the zip format only (its issue 1348); its pickle parser (`candle_core::pickle`)
//! is reused here for the pickles. It builds plain data: no class is instantiated, no code
//! runs, whatever the file says. Tensors are rebuilt from `torch._utils._rebuild_tensor_v2`
//! (also inside `_rebuild_parameter`) with their storage offset and strides, so views and
//! tensors sharing a storage come out right.

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::io::{Cursor, Read};
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
pub fn load(path: &Path, key: Option<&str>) -> Result<Checkpoint, CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    };
    let mut head = [0u8; 16];
    let n = std::fs::File::open(path)
        .and_then(|mut f| read_up_to(&mut f, &mut head))
        .map_err(io)?;
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") {
        let tensors = candle_core::pickle::read_all_with_key(path, key).map_err(|e| {
            CheckpointError::Malformed {
                path: path.to_owned(),
                format: Format::PytorchZip,
                why: e.to_string(),
            }
        })?;
        return Ok(Checkpoint::sorted(Format::PytorchZip, tensors));
    }
    if head.starts_with(LEGACY_MAGIC) {
        let bytes = std::fs::read(path).map_err(io)?;
        return read_legacy(&bytes, key).map_err(|why| match why {
            LegacyError::Malformed(why) => CheckpointError::Malformed {
                path: path.to_owned(),
                format: Format::PytorchLegacy,
                why,
            },
            LegacyError::Unsupported(what) => CheckpointError::Unsupported {
                path: path.to_owned(),
                what,
            },
        });
    }
    if head.len() >= 9 && head[8] == b'{' {
        let map = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
            CheckpointError::Malformed {
                path: path.to_owned(),
                format: Format::Safetensors,
                why: e.to_string(),
            }
        })?;
        return Ok(Checkpoint::sorted(
            Format::Safetensors,
            map.into_iter().collect(),
        ));
    }
    Err(CheckpointError::NotACheckpoint {
        path: path.to_owned(),
        why: format!(
            "first bytes {}",
            head.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

enum LegacyError {
    Malformed(String),
    Unsupported(String),
}

fn bad(why: impl Into<String>) -> LegacyError {
    LegacyError::Malformed(why.into())
}

/// One pickle from the cursor. candle's parser is data-only; a hostile file could still
/// trip an arithmetic check in it, so a panic becomes an error here.
fn pickle(cur: &mut Cursor<&[u8]>, what: &str) -> Result<Object, LegacyError> {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut stack = Stack::empty();
        stack.read_loop(cur)?;
        stack.finalize()
    }));
    match r {
        Ok(Ok(o)) => Ok(o),
        Ok(Err(e)) => Err(bad(format!("{what}: {e}"))),
        Err(_) => Err(bad(format!("{what}: the pickle parser failed"))),
    }
}

/// A storage reference from a persistent id.
struct StorageRef {
    key: String,
    dtype: DType,
    elems: usize,
}

fn storage_dtype(class: &str) -> Result<DType, LegacyError> {
    Ok(match class {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "ByteStorage" => DType::U8,
        "ShortStorage" => DType::I16,
        "IntStorage" => DType::I32,
        "LongStorage" => DType::I64,
        other => return Err(LegacyError::Unsupported(format!("storage type {other}"))),
    })
}

fn int(o: Object, what: &str) -> Result<i64, LegacyError> {
    o.int_or_long()
        .map_err(|o| bad(format!("{what}: expected an integer, found {o:?}")))
}

fn ints(o: Object, what: &str) -> Result<Vec<usize>, LegacyError> {
    let items = match o {
        Object::Tuple(v) | Object::List(v) => v,
        o => return Err(bad(format!("{what}: expected a tuple, found {o:?}"))),
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
fn tensor_ref(value: Object) -> Result<Option<TensorRef>, LegacyError> {
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
                .map_err(|o| bad(format!("parameter args {o:?}")))?;
            if a.is_empty() {
                return Err(bad("_rebuild_parameter without arguments"));
            }
            return tensor_ref(a.remove(0));
        }
        ("torch._utils", other) if other.starts_with("_rebuild") => {
            return Err(LegacyError::Unsupported(format!(
                "torch._utils.{other} tensors"
            )))
        }
        _ => return Ok(None),
    };
    let mut a = args
        .tuple()
        .map_err(|o| bad(format!("_rebuild_tensor_v2 args {o:?}")))?;
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
    let pid = a
        .remove(0)
        .persistent_load()
        .map_err(|o| bad(format!("tensor storage is not a persistent id: {o:?}")))?;
    let mut pid = pid
        .tuple()
        .map_err(|o| bad(format!("persistent id {o:?}")))?;
    if pid.len() < 5 {
        return Err(bad(format!("persistent id with {} fields", pid.len())));
    }
    if pid.len() > 5 && pid[5] != Object::None {
        return Err(LegacyError::Unsupported(
            "storage views (view metadata in a persistent id)".into(),
        ));
    }
    let elems = usize::try_from(int(pid.remove(4), "storage size")?)
        .map_err(|_| bad("negative storage size"))?;
    let key = pid
        .remove(2)
        .unicode()
        .map_err(|o| bad(format!("storage key {o:?}")))?;
    let (_, class) = pid
        .remove(1)
        .class()
        .map_err(|o| bad(format!("storage type {o:?}")))?;
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

fn read_legacy(bytes: &[u8], key: Option<&str>) -> Result<Checkpoint, LegacyError> {
    let mut cur = Cursor::new(&bytes[LEGACY_MAGIC.len()..]);
    let proto = int(pickle(&mut cur, "protocol version")?, "protocol version")?;
    if proto != LEGACY_PROTOCOL {
        return Err(LegacyError::Unsupported(format!(
            "legacy protocol version {proto} (this reader knows {LEGACY_PROTOCOL})"
        )));
    }
    let sys = pickle(&mut cur, "sys info")?;
    if let Object::Dict(items) = &sys {
        for (k, v) in items {
            if *k == Object::Unicode("little_endian".into()) && *v == Object::Bool(false) {
                return Err(LegacyError::Unsupported("big-endian checkpoints".into()));
            }
        }
    }
    let mut obj = pickle(&mut cur, "the saved object")?;
    let keys_obj = pickle(&mut cur, "storage keys")?;
    let keys: Vec<String> = match keys_obj {
        Object::List(v) | Object::Tuple(v) => v
            .into_iter()
            .map(|k| k.unicode().map_err(|o| bad(format!("storage key {o:?}"))))
            .collect::<Result<_, _>>()?,
        o => return Err(bad(format!("storage keys: expected a list, found {o:?}"))),
    };

    if let Some(k) = key {
        obj = match obj {
            Object::Dict(items) => items
                .into_iter()
                .find(|(n, _)| *n == Object::Unicode(k.to_owned()))
                .map(|(_, v)| v)
                .ok_or_else(|| bad(format!("no key `{k}` in the saved dict")))?,
            o => {
                return Err(bad(format!(
                    "key `{k}` asked, but the saved object is {o:?}"
                )))
            }
        };
    }
    let items = match obj {
        Object::Dict(items) => items,
        Object::Build { .. } | Object::Reduce { .. } => {
            return Err(LegacyError::Unsupported(
                "a pickled module (save its state_dict() instead)".into(),
            ))
        }
        o => return Err(bad(format!("expected a dict of tensors, found {o:?}"))),
    };
    let mut refs = Vec::new();
    let mut dtypes: HashMap<String, (DType, usize)> = HashMap::new();
    let mut names: Vec<String> = items
        .iter()
        .map(|(n, _)| match n {
            Object::Unicode(s) => s.clone(),
            o => format!("{o:?}"),
        })
        .collect();
    names.sort();
    for (name, value) in items {
        let name = name
            .unicode()
            .map_err(|o| bad(format!("tensor name {o:?}")))?;
        if let Some(t) = tensor_ref(value)? {
            dtypes.insert(t.storage.key.clone(), (t.storage.dtype, t.storage.elems));
            refs.push((name, t));
        }
    }

    if refs.is_empty() {
        return Err(bad(format!(
            "no tensors at the top level (keys: {}); name the nested state dict with `key`",
            names.join(", ")
        )));
    }

    // The storages follow the keys pickle, in the keys' order.
    let mut pos = LEGACY_MAGIC.len() + cur.position() as usize;
    let mut storages: HashMap<&str, &[u8]> = HashMap::new();
    for k in &keys {
        let count_bytes = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| bad(format!("storage {k}: file ends before its size")))?;
        let count = u64::from_le_bytes(count_bytes.try_into().expect("8 bytes")) as usize;
        pos += 8;
        let Some(&(dtype, elems)) = dtypes.get(k) else {
            return Err(bad(format!("storage {k} is listed but no tensor uses it")));
        };
        if count != elems {
            return Err(bad(format!(
                "storage {k}: {count} elements on disk, {elems} in its reference"
            )));
        }
        let len = count
            .checked_mul(dtype.size_in_bytes())
            .ok_or_else(|| bad(format!("storage {k}: size overflows")))?;
        let data = bytes
            .get(pos..pos + len)
            .ok_or_else(|| bad(format!("storage {k}: file ends inside its {len} bytes")))?;
        storages.insert(k.as_str(), data);
        pos += len;
    }

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
    Ok(Checkpoint::sorted(Format::PytorchLegacy, tensors))
}

/// Copies a strided view of a storage into a contiguous tensor.
fn gather(storage: &[u8], t: &TensorRef) -> Result<Tensor, String> {
    let es = t.storage.dtype.size_in_bytes();
    if t.size.len() != t.stride.len() {
        return Err(format!(
            "{} sizes but {} strides",
            t.size.len(),
            t.stride.len()
        ));
    }
    let n: usize = t.size.iter().product();
    let mut out = Vec::with_capacity(n * es);
    if n > 0 {
        // The largest element index the view touches must lie inside the storage.
        let last = t.offset
            + t.size
                .iter()
                .zip(&t.stride)
                .map(|(s, st)| (s - 1) * st)
                .sum::<usize>();
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
