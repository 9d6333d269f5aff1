//! Weight files are untrusted input: the legacy and zip `.pth` readers and the safetensors
//! reader must return an error, never panic, never allocate what a file merely claims, and
//! finish, whatever the bytes.
//!
//! Inputs: every fixture PyTorch wrote (`tests/fixtures/*.pth`), a safetensors file of the
//! same tensors, and the real EfficientNet-Lite0 checkpoint; from them, prefixes, bit flips
//! and random edits (proptest), and hand-made hostile pickles named by what they try.
//!
//! Memory is measured by a counting allocator around this test binary's allocations: each
//! read may grow the heap by at most [`allowed`] of its input's length (the tensors' bytes
//! twice, plus [`pickle_guard::budget`] twice), whatever sizes the file states.
//!
//! The budget: `GEOLOC_FUZZ_SCALE` (default 1) multiplies every count; `cargo xtask fuzz`
//! runs these tests optimised at scale 20. Each test prints what it tried.

mod torch_reference;

use geoloc_models::checkpoint::{from_bytes, Checkpoint, CheckpointError};
use geoloc_models::pickle_guard;
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use torch_reference::fixture;

struct Counting;
static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            let n = NOW.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(n, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        NOW.fetch_sub(l.size(), Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            if new >= l.size() {
                let n = NOW.fetch_add(new - l.size(), Relaxed) + (new - l.size());
                PEAK.fetch_max(n, Relaxed);
            } else {
                NOW.fetch_sub(l.size() - new, Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// One reader at a time, so the heap's growth is one read's.
static ONE: Mutex<()> = Mutex::new(());

fn scale() -> usize {
    std::env::var("GEOLOC_FUZZ_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// The most a read of `len` bytes may grow the heap: tensors copied out of their storages
/// (and the zip reader's copy of each entry), and the pickles' values.
fn allowed(len: usize) -> usize {
    4 * len + 2 * pickle_guard::budget(len) as usize + (8 << 20)
}

/// What the reads of one test did.
#[derive(Default)]
struct Tally {
    inputs: usize,
    ok: usize,
    peak: usize,
    slowest: Duration,
}

impl Tally {
    /// Reads `bytes`; a panic fails the test, as does a heap growth over [`allowed`] or a
    /// read of more than 20 s.
    fn read(
        &mut self,
        bytes: &[u8],
        what: &dyn Fn() -> String,
    ) -> Result<Checkpoint, CheckpointError> {
        self.read_key(bytes, None, what)
    }

    fn read_key(
        &mut self,
        bytes: &[u8],
        key: Option<&str>,
        what: &dyn Fn() -> String,
    ) -> Result<Checkpoint, CheckpointError> {
        let start_heap = NOW.load(Relaxed);
        PEAK.store(start_heap, Relaxed);
        let t = Instant::now();
        let r = std::panic::catch_unwind(|| from_bytes(Path::new("fuzz.pth"), bytes, key))
            .unwrap_or_else(|_| panic!("{}: the reader panicked", what()));
        let took = t.elapsed();
        let grew = PEAK.load(Relaxed).saturating_sub(start_heap);
        assert!(
            grew <= allowed(bytes.len()),
            "{}: the heap grew by {grew} bytes reading {} bytes (allowed {})",
            what(),
            bytes.len(),
            allowed(bytes.len())
        );
        assert!(took < Duration::from_secs(20), "{}: took {took:?}", what());
        self.inputs += 1;
        self.ok += usize::from(r.is_ok());
        self.peak = self.peak.max(grew);
        self.slowest = self.slowest.max(took);
        r
    }

    fn report(&self, test: &str) {
        println!(
            "{test}: {} inputs, {} read as checkpoints, the rest refused with an error, none panicked; \
             largest heap growth {:.1} MiB, slowest read {:?}",
            self.inputs,
            self.ok,
            self.peak as f64 / (1 << 20) as f64,
            self.slowest
        );
    }
}

const FIXTURES: &[&str] = &[
    "tiny_legacy.pth",
    "tiny_zip.pth",
    "tiny_nested_legacy.pth",
    "adam_steps.pth",
    "sgd_steps.pth",
    "lite0_outputs.pth",
    "vgg_tiny_legacy.pth",
    "vgg_tiny_zip.pth",
    "googlenet_tiny_legacy.pth",
    "googlenet_tiny_zip.pth",
];

/// The fixtures' bytes, and a safetensors file of tiny_legacy's tensors.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = FIXTURES
        .iter()
        .map(|f| (f.to_string(), std::fs::read(fixture(f)).unwrap()))
        .collect();
    let ck = geoloc_models::checkpoint::load(&fixture("tiny_legacy.pth"), None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.safetensors");
    let map: std::collections::HashMap<String, candle_core::Tensor> =
        ck.tensors.into_iter().collect();
    candle_core::safetensors::save(&map, &p).unwrap();
    out.push(("tiny.safetensors".into(), std::fs::read(&p).unwrap()));
    out
}

/// A small deterministic generator (splitmix64), so every run tries the same inputs.
struct Mix(u64);
impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn the_unmodified_inputs_read() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Tally::default();
    for (name, bytes) in corpus() {
        let key = name.contains("nested").then_some("state_dict");
        t.read_key(&bytes, key, &|| name.clone())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    t.report("unmodified");
    assert_eq!(t.ok, t.inputs);
}

#[test]
fn every_prefix_is_an_error_not_a_panic() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Tally::default();
    for (name, bytes) in corpus() {
        // Every prefix of the first 8 KiB x scale (all of the tiny files), then prefixes
        // spaced through the rest, ending at each of its last 64 bytes.
        let dense = (8192 * scale()).min(bytes.len());
        let mut ends: Vec<usize> = (0..dense).collect();
        let step = (bytes.len() / (500 * scale())).max(1);
        ends.extend((dense..bytes.len()).step_by(step));
        ends.extend(bytes.len().saturating_sub(64).max(dense)..bytes.len());
        for n in ends {
            let r = t.read(&bytes[..n], &|| format!("{name}[..{n}]"));
            assert!(
                r.is_err(),
                "{name}[..{n}] of {} read as a checkpoint",
                bytes.len()
            );
        }
    }
    t.report("prefixes");
}

#[test]
fn bit_flips_and_byte_edits() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Tally::default();
    let mut g = Mix(14);
    for (name, bytes) in corpus() {
        let mut b = bytes.clone();
        // Every bit of the first 2 KiB (the headers and pickles of the tiny files), then
        // random bits anywhere.
        let dense = (2048 * scale()).min(b.len());
        let mut flips: Vec<(usize, u8)> = (0..dense)
            .flat_map(|i| (0..8).map(move |k| (i, 1u8 << k)))
            .collect();
        flips.extend((0..300 * scale()).map(|_| (g.below(b.len()), 1u8 << g.below(8))));
        for (i, bit) in flips {
            b[i] ^= bit;
            let _ = t.read(&b, &|| {
                format!("{name} with bit {bit:#04x} of byte {i} flipped")
            });
            b[i] ^= bit;
        }
        // Bytes set to values that mean something to the readers: 0, 0xff, and the
        // opcodes that copy, nest and call.
        for _ in 0..200 * scale() {
            let i = g.below(b.len());
            let old = b[i];
            b[i] = [0x00, 0xff, b'h', b'j', 0x85, b'R', b'(', 0x8a][g.below(8)];
            let _ = t.read(&b, &|| format!("{name} with byte {i} set to {:#04x}", b[i]));
            b[i] = old;
        }
    }
    t.report("bit flips and byte edits");
}

// ---- hostile files, by hand --------------------------------------------------------------

const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e";

/// A legacy file: magic, protocol 1001, sys info `{}`, `object` (a pickle body without
/// protocol or STOP), the storage keys `keys`, then `tail` (the storages).
fn legacy(object: &[u8], keys: &[&str], tail: &[u8]) -> Vec<u8> {
    let mut f = LEGACY_MAGIC.to_vec();
    f.extend_from_slice(b"\x80\x02\x8a\x02\xe9\x03."); // LONG1 1001
    f.extend_from_slice(b"\x80\x02}."); // {}
    f.extend_from_slice(b"\x80\x02");
    f.extend_from_slice(object);
    f.push(b'.');
    f.extend_from_slice(b"\x80\x02](");
    for k in keys {
        f.extend(unicode(k));
    }
    f.extend_from_slice(b"e.");
    f.extend_from_slice(tail);
    f
}

fn unicode(s: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend((s.len() as u32).to_le_bytes());
    v.extend(s.as_bytes());
    v
}

fn long(v: i64) -> Vec<u8> {
    let mut o = vec![0x8a, 8];
    o.extend(v.to_le_bytes());
    o
}

fn global(module: &str, name: &str) -> Vec<u8> {
    format!("c{module}\n{name}\n").into_bytes()
}

fn ints(v: &[i64]) -> Vec<u8> {
    let mut o = vec![b'('];
    for &x in v {
        o.extend(long(x));
    }
    o.push(b't');
    o
}

/// `{name: _rebuild_tensor_v2(storage(key, FloatStorage, numel), offset, size, stride)}`.
fn tensor_dict(name: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    tensor_dict_in(name, "0", numel, offset, size, stride)
}

/// [`tensor_dict`] over the storage called `key`.
fn tensor_dict_in(
    name: &str,
    key: &str,
    numel: i64,
    offset: i64,
    size: &[i64],
    stride: &[i64],
) -> Vec<u8> {
    let mut o = vec![b'}'];
    o.extend(unicode(name));
    o.extend(global("torch._utils", "_rebuild_tensor_v2"));
    o.push(b'(');
    // persistent id ('storage', torch.FloatStorage, key, 'cpu', numel)
    o.push(b'(');
    o.extend(unicode("storage"));
    o.extend(global("torch", "FloatStorage"));
    o.extend(unicode(key));
    o.extend(unicode("cpu"));
    o.extend(long(numel));
    o.extend_from_slice(b"tQ");
    o.extend(long(offset));
    o.extend(ints(size));
    o.extend(ints(stride));
    o.push(0x89); // requires_grad False
    o.extend(global("collections", "OrderedDict"));
    o.extend_from_slice(b")R"); // backward hooks
    o.extend_from_slice(b"tR"); // args tuple, REDUCE
    o.push(b's');
    o
}

fn storage(count: u64, floats: &[f32]) -> Vec<u8> {
    let mut o = count.to_le_bytes().to_vec();
    for f in floats {
        o.extend(f.to_le_bytes());
    }
    o
}

fn expect_refused(t: &mut Tally, case: &str, bytes: &[u8], says: &str) {
    match t.read(bytes, &|| case.to_string()) {
        Ok(_) => panic!("{case}: read as a checkpoint"),
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains(says), "{case}: {e}");
            println!("{case}: {e}");
        }
    }
}

#[test]
fn hostile_pickles_are_refused_by_name() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Tally::default();
    let tail4 = storage(4, &[1.0, 2.0, 3.0, 4.0]);

    // The hand-made writer is right: a well-formed file reads.
    let ok = legacy(&tensor_dict("w", 4, 0, &[2, 2], &[2, 1]), &["0"], &tail4);
    let ck = t.read(&ok, &|| "well-formed".into()).unwrap();
    assert_eq!(ck.tensors[0].1.dims(), [2, 2]);

    // Memo doubling ("billion laughs"): 60 rounds of PUT/GET/GET/TUPLE2 ask for 2^60 copies.
    let mut laughs = b"]".to_vec();
    for _ in 0..60 {
        laughs.extend_from_slice(b"q\x00h\x00\x86");
    }
    expect_refused(
        &mut t,
        "memo-doubling",
        &legacy(&laughs, &[], b""),
        "more than",
    );

    // A million nested tuples: dropping or printing them would overflow the stack.
    let mut deep = b")".to_vec();
    deep.extend(std::iter::repeat_n(0x85, 1_000_000));
    expect_refused(
        &mut t,
        "deep-nesting",
        &legacy(&deep, &[], b""),
        "nest deeper",
    );
    let mut deep_lists = vec![b']'; 100_000];
    deep_lists.extend(vec![b'a'; 99_999]);
    expect_refused(
        &mut t,
        "deep-list-appends",
        &legacy(&deep_lists, &[], b""),
        "nest deeper",
    );

    // A string announcing 4 GiB in a file of a few hundred bytes.
    expect_refused(
        &mut t,
        "huge-string-length",
        &legacy(b"X\xff\xff\xff\xffabc", &[], b""),
        "ends inside a BINUNICODE",
    );
    // A 255-byte integer (candle's parser would shift past 64 bits).
    let mut wide = vec![0x8a, 0xff];
    wide.extend([0x41; 255]);
    expect_refused(
        &mut t,
        "wide-long",
        &legacy(&wide, &[], b""),
        "wider than 64 bits",
    );
    // A million MARKs then APPENDS on nothing.
    let mut marks = vec![b'('; 1_000_000];
    marks.push(b'e');
    expect_refused(
        &mut t,
        "marks-without-list",
        &legacy(&marks, &[], b""),
        "not a container",
    );

    // GLOBAL of any callable, REDUCEd: data only, never called; not a tensor.
    let mut call = vec![b'}'];
    call.extend(unicode("w"));
    call.extend(global("os", "system"));
    call.extend(unicode("touch /tmp/geoloc-pwned"));
    call.extend_from_slice(b"\x85Rs");
    expect_refused(
        &mut t,
        "global-reduce-os-system",
        &legacy(&call, &[], b""),
        "no tensors",
    );
    assert!(!Path::new("/tmp/geoloc-pwned").exists());
    let mut builtin = global("builtins", "eval");
    builtin.extend(unicode("__import__('os')"));
    builtin.extend_from_slice(b"\x85R");
    expect_refused(
        &mut t,
        "global-reduce-eval-as-object",
        &legacy(&builtin, &[], b""),
        "state_dict",
    );
    let mut module = global("torch._utils", "_rebuild_qtensor");
    module.extend_from_slice(b")R");
    let mut qdict = vec![b'}'];
    qdict.extend(unicode("q"));
    qdict.extend(module);
    qdict.push(b's');
    expect_refused(
        &mut t,
        "rebuild-qtensor",
        &legacy(&qdict, &[], b""),
        "not supported",
    );

    // A storage of 2^61 floats claimed in a file that has 16 bytes of it.
    let huge = legacy(
        &tensor_dict("w", 1 << 61, 0, &[4], &[1]),
        &["0"],
        &storage(1 << 61, &[1.0, 2.0, 3.0, 4.0]),
    );
    expect_refused(
        &mut t,
        "storage-claims-2^61-elements",
        &huge,
        "file ends inside",
    );
    // Counts that disagree between the pickle and the storage header.
    let mismatch = legacy(
        &tensor_dict("w", 4, 0, &[4], &[1]),
        &["0"],
        &storage(1 << 40, &[]),
    );
    expect_refused(
        &mut t,
        "storage-count-mismatch",
        &mismatch,
        "elements on disk",
    );
    // A view past the end of its storage, by offset and by stride.
    let past = legacy(&tensor_dict("w", 4, 3, &[2], &[1]), &["0"], &tail4);
    expect_refused(
        &mut t,
        "offset-past-the-end",
        &past,
        "view reaches element 4",
    );
    let far = legacy(&tensor_dict("w", 4, 0, &[2], &[1 << 60]), &["0"], &tail4);
    expect_refused(&mut t, "stride-past-the-end", &far, "view reaches element");
    // A broadcast view of 2^40 elements over 4 (stride 0): refused before allocating.
    let bcast = legacy(&tensor_dict("w", 4, 0, &[1 << 40], &[0]), &["0"], &tail4);
    expect_refused(
        &mut t,
        "broadcast-2^40-elements",
        &bcast,
        "a view of 1099511627776 elements",
    );
    // Sizes whose product overflows, and a negative offset and size.
    let overflow = legacy(
        &tensor_dict("w", 4, 0, &[1 << 32, 1 << 32, 1 << 32], &[0, 0, 0]),
        &["0"],
        &tail4,
    );
    expect_refused(&mut t, "element-count-overflow", &overflow, "overflows");
    let neg = legacy(&tensor_dict("w", 4, -1, &[2], &[1]), &["0"], &tail4);
    expect_refused(&mut t, "negative-offset", &neg, "negative storage offset");
    let negsize = legacy(&tensor_dict("w", 4, 0, &[-2], &[1]), &["0"], &tail4);
    expect_refused(&mut t, "negative-size", &negsize, "negative value");
    // A storage listed twice with different counts.
    let mut two = tensor_dict("a", 4, 0, &[4], &[1]);
    two.pop();
    let mut b = tensor_dict("b", 8, 0, &[4], &[1]);
    b.remove(0);
    two.push(b's');
    two.extend(b);
    expect_refused(
        &mut t,
        "one-storage-two-sizes",
        &legacy(&two, &["0"], &tail4),
        "elsewhere",
    );

    // safetensors: a header length of 2^63, and a header claiming a 4 TB tensor.
    let mut st = (1u64 << 63).to_le_bytes().to_vec();
    st.extend_from_slice(b"{}");
    expect_refused(&mut t, "safetensors-header-2^63", &st, "Safetensors");
    let header =
        br#"{"w":{"dtype":"F32","shape":[1000000000000],"data_offsets":[0,4000000000000]}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(header);
    st.extend_from_slice(&[0; 16]);
    expect_refused(&mut t, "safetensors-4TB-tensor", &st, "Safetensors");

    t.report("hostile");
}

#[test]
fn hostile_zip_archives_are_refused() {
    use std::io::Write;
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Tally::default();
    let zip_of = |entries: &[(&str, &[u8])]| -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (n, b) in entries {
            w.start_file(*n, opts).unwrap();
            w.write_all(b).unwrap();
        }
        w.finish().unwrap().into_inner()
    };
    let pkl = |body: &[u8]| -> Vec<u8> {
        let mut p = b"\x80\x02".to_vec();
        p.extend_from_slice(body);
        p.push(b'.');
        p
    };
    let floats: Vec<u8> = [1f32, 2., 3., 4.]
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .collect();
    let good = pkl(&tensor_dict("w", 4, 0, &[4], &[1]));
    let ck = t
        .read(
            &zip_of(&[("a/data.pkl", &good), ("a/data/0", &floats)]),
            &|| "zip ok".into(),
        )
        .unwrap();
    assert_eq!(ck.tensors[0].1.dims(), [4]);

    expect_refused(
        &mut t,
        "zip-storage-shorter-than-claimed",
        &zip_of(&[("a/data.pkl", &good), ("a/data/0", &floats[..8])]),
        "its storage needs 16",
    );
    let mut laughs = b"]".to_vec();
    for _ in 0..60 {
        laughs.extend_from_slice(b"q\x00h\x00\x86");
    }
    expect_refused(
        &mut t,
        "zip-memo-doubling",
        &zip_of(&[("a/data.pkl", &pkl(&laughs))]),
        "more than",
    );
    expect_refused(
        &mut t,
        "zip-without-data-pkl",
        &zip_of(&[("a/other.pkl", &good)]),
        "no <archive>/data.pkl",
    );
    let evil = tensor_dict_in("w", "../../etc/passwd", 4, 0, &[4], &[1]);
    expect_refused(
        &mut t,
        "zip-storage-key-with-a-path",
        &zip_of(&[("a/data.pkl", &pkl(&evil))]),
        "not a plain name",
    );
    t.report("hostile zip");
}

#[test]
fn the_real_lite0_checkpoint_under_edits() {
    let Some(path) = geoloc_core::fixtures::lite0_checkpoint(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Tally::default();
    let mut b = std::fs::read(&path).unwrap();
    let ck = t.read(&b, &|| "Lite0".into()).unwrap();
    assert!(ck.tensors.len() > 200);
    let mut g = Mix(2015);
    // Prefixes: every one of the first 4 KiB x scale (the headers and the start of the object
    // pickle), then spaced through the file.
    let dense = (4096 * scale()).min(b.len());
    for n in (0..dense).chain((dense..b.len()).step_by(b.len() / (200 * scale()))) {
        assert!(t.read(&b[..n], &|| format!("Lite0[..{n}]")).is_err());
    }
    // Bit flips: most in the pickles (the first 64 KiB), some in the storages.
    let pickles = b.len().min(64 << 10);
    for k in 0..400 * scale() {
        let i = if k % 8 == 7 {
            g.below(b.len())
        } else {
            g.below(pickles)
        };
        let bit = 1u8 << g.below(8);
        b[i] ^= bit;
        let _ = t.read(&b, &|| {
            format!("Lite0 with bit {bit:#04x} of byte {i} flipped")
        });
        b[i] ^= bit;
    }
    t.report("Lite0");
}

/// A random edit of a file: flip, overwrite, insert, delete, or cut.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Set(usize, Vec<u8>),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Cut(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..9))
            .prop_map(|(i, v)| Edit::Set(i, v)),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..33)
        )
            .prop_map(|(i, v)| Edit::Insert(i, v)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Edit::Delete(i, n)),
        any::<usize>().prop_map(Edit::Cut),
    ]
}

fn apply(b: &mut Vec<u8>, e: &Edit) {
    if b.is_empty() {
        return;
    }
    let at = |i: usize, b: &Vec<u8>| i % b.len();
    match e {
        Edit::Flip(i, k) => {
            let i = at(*i, b);
            b[i] ^= 1 << k
        }
        Edit::Set(i, v) => {
            let i = at(*i, b);
            for (j, x) in v.iter().enumerate() {
                if let Some(y) = b.get_mut(i + j) {
                    *y = *x;
                }
            }
        }
        Edit::Insert(i, v) => {
            let i = at(*i, b);
            b.splice(i..i, v.iter().copied());
        }
        Edit::Delete(i, n) => {
            let i = at(*i, b);
            let end = (i + n).min(b.len());
            b.drain(i..end);
        }
        Edit::Cut(i) => {
            let i = at(*i, b);
            b.truncate(i)
        }
    }
}

fn cases() -> u32 {
    256 * scale() as u32
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random edits of the fixtures (of the small ones: their pickles are where edits matter).
    #[test]
    fn random_edits_of_the_fixtures(which in 0usize..4, edits in proptest::collection::vec(edit(), 1..6)) {
        let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
        let names = ["tiny_legacy.pth", "tiny_zip.pth", "tiny_nested_legacy.pth", "adam_steps.pth"];
        let mut b = std::fs::read(fixture(names[which])).unwrap();
        for e in &edits {
            apply(&mut b, e);
        }
        let mut t = Tally::default();
        let _ = t.read(&b, &|| format!("{} with {edits:?}", names[which]));
    }

    /// Random bytes behind each format's first bytes.
    #[test]
    fn random_bytes_behind_each_magic(which in 0usize..4, body in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
        let mut b: Vec<u8> = match which {
            0 => LEGACY_MAGIC.to_vec(),
            1 => b"PK\x03\x04".to_vec(),
            2 => {
                let mut h = (body.len() as u64 / 2).to_le_bytes().to_vec();
                h.push(b'{');
                h
            }
            _ => [LEGACY_MAGIC, b"\x80\x02\x8a\x02\xe9\x03.\x80\x02}.\x80\x02"].concat(),
        };
        b.extend_from_slice(&body);
        let mut t = Tally::default();
        let _ = t.read(&b, &|| format!("magic {which} + {} random bytes", body.len()));
    }
}
