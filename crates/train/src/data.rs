//! The training rows: the input dataset (features, or pixels for the small CNN) joined with
//! the samples dataset by `id`, split into train and validation rows held in a
//! [`RowStore`]: in memory when they fit `memory_mb`, else in a flat f32 file beside the
//! output that is memory-mapped, so minibatches gather rows from the page cache and the
//! features never need to fit in RAM (MediaEval's 4.7M x 4096 are 77 GB). Both backings
//! hold the same values in the same order: results do not depend on which one ran.

use crate::Error;
use arrow::array::AsArray;
use arrow::datatypes::Float32Type;
use geoloc_core::dataset::Dataset;
use geoloc_core::schema;
use geoloc_core::stage::Input;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What the samples say of one photo.
#[derive(Debug, Clone, Copy)]
pub struct SampleInfo {
    /// 0 train, 1 val, 2 test.
    pub split: u8,
    pub label: Option<i32>,
    pub coords: Option<(f64, f64)>,
}

/// The samples dataset as id -> info, and its class list.
pub struct Samples {
    pub by_id: HashMap<String, SampleInfo>,
    pub classes: Vec<String>,
}

pub fn read_samples(input: &Input) -> Result<Samples, Error> {
    let ds = Dataset::open(&input.dir, &schema::samples())?;
    let classes = input.manifest.classes();
    let mut by_id = HashMap::with_capacity(ds.manifest.rows as usize);
    ds.for_each_sample(|r| {
        let split = match r.split {
            "train" => 0,
            "val" => 1,
            _ => 2,
        };
        by_id.insert(
            r.id.to_owned(),
            SampleInfo {
                split,
                label: r.label,
                coords: r.coords,
            },
        );
    })?;
    Ok(Samples { by_id, classes })
}

/// Row-major f32 rows of a fixed width, in memory or in a memory-mapped file.
pub struct RowStore {
    pub dim: usize,
    rows: usize,
    backing: Backing,
}

enum Backing {
    Memory(Vec<f32>),
    /// The file being written, its path, and one row's bytes (reused).
    Writing(std::io::BufWriter<std::fs::File>, PathBuf, Vec<u8>),
    Mapped(memmap2::Mmap, PathBuf),
}

impl RowStore {
    /// A store for `dim`-wide rows; `file` is where it spills when `expected_rows` rows
    /// would exceed `memory_bytes`.
    pub fn new(
        dim: usize,
        expected_rows: usize,
        memory_bytes: u64,
        file: &Path,
    ) -> Result<Self, Error> {
        let bytes = (expected_rows as u64) * (dim as u64) * 4;
        let backing = if bytes <= memory_bytes {
            Backing::Memory(Vec::with_capacity(expected_rows * dim))
        } else {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(file)
                .map_err(|e| Error::io(file, e))?;
            Backing::Writing(
                std::io::BufWriter::with_capacity(1 << 22, f),
                file.to_owned(),
                Vec::with_capacity(dim * 4),
            )
        };
        Ok(RowStore {
            dim,
            rows: 0,
            backing,
        })
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Whether the rows live in a mapped file.
    pub fn is_mapped(&self) -> bool {
        !matches!(self.backing, Backing::Memory(_))
    }

    pub fn push(&mut self, row: impl Iterator<Item = f32>) -> Result<(), Error> {
        match &mut self.backing {
            Backing::Memory(v) => {
                let before = v.len();
                v.extend(row);
                debug_assert_eq!(v.len() - before, self.dim);
            }
            Backing::Writing(w, p, buf) => {
                buf.clear();
                row.for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
                w.write_all(buf).map_err(|e| Error::io(&*p, e))?;
            }
            Backing::Mapped(..) => return Err(Error::Config("row store already sealed".into())),
        }
        self.rows += 1;
        Ok(())
    }

    /// Ends writing: a spilled store is flushed and mapped.
    pub fn seal(&mut self) -> Result<(), Error> {
        if let Backing::Writing(..) = self.backing {
            let Backing::Writing(w, p, _) =
                std::mem::replace(&mut self.backing, Backing::Memory(Vec::new()))
            else {
                unreachable!()
            };
            let f = w.into_inner().map_err(|e| Error::io(&p, e.into_error()))?;
            // SAFETY: the file is private to this run (its output directory) and not
            // modified while mapped.
            let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(&p, e))?;
            #[cfg(unix)]
            let _ = map.advise(memmap2::Advice::Random);
            self.backing = Backing::Mapped(map, p);
        }
        Ok(())
    }

    /// Row `i` (after [`RowStore::seal`]).
    pub fn row(&self, i: usize) -> &[f32] {
        let d = self.dim;
        match &self.backing {
            Backing::Memory(v) => &v[i * d..(i + 1) * d],
            Backing::Mapped(m, _) => {
                let bytes = &m[i * d * 4..(i + 1) * d * 4];
                // SAFETY: mmap is page-aligned and rows are whole f32s, so the slice is
                // 4-byte aligned; every bit pattern is a valid f32 (little-endian host).
                unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f32, d) }
            }
            Backing::Writing(..) => panic!("row store read before it was sealed"),
        }
    }
}

impl Drop for RowStore {
    fn drop(&mut self) {
        if let Backing::Mapped(_, p) | Backing::Writing(_, p, _) = &self.backing {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// One split's rows and what each row is.
pub struct SplitRows {
    pub x: RowStore,
    /// Per row: the photo's index in `ids` (views of a photo share it).
    pub photo: Vec<u32>,
    /// Per photo: id, class label and coordinates.
    pub ids: Vec<String>,
    pub labels: Vec<Option<i32>>,
    pub coords: Vec<Option<(f64, f64)>>,
}

/// Train and validation rows of the join.
pub struct Joined {
    pub train: SplitRows,
    pub val: SplitRows,
    /// Input rows whose id the samples lack.
    pub unknown_ids: u64,
    /// Input rows of test photos (not used here).
    pub test_rows: u64,
}

/// Reads the input dataset (features or images) and keeps train and val rows whose photo
/// `keep` accepts.
pub fn join(
    input: &Input,
    samples: &Samples,
    keep: impl Fn(&SampleInfo) -> bool,
    memory_bytes: u64,
    spill_dir: &Path,
) -> Result<(Joined, usize), Error> {
    let (ds, dim, pixels) = match input.manifest.schema.as_str() {
        "features" => {
            let dim = schema::features_dim(&input.manifest)?;
            (
                Dataset::open(&input.dir, &schema::features(dim))?,
                dim,
                false,
            )
        }
        "images" => {
            let (w, h) = schema::images_size(&input.manifest)?;
            (
                Dataset::open(&input.dir, &schema::images(w, h))?,
                (w * h * 3) as usize,
                true,
            )
        }
        other => {
            return Err(Error::Config(format!(
                "input `{}` is a {other} dataset; train reads features or images",
                input.name
            )))
        }
    };
    // Expected rows per split, for the memory decision (an upper bound on neither is needed:
    // the share of each split among the samples is close).
    let total = ds.manifest.rows as usize;
    let mut counts = [0usize; 3];
    for s in samples.by_id.values() {
        counts[s.split as usize] += 1;
    }
    let all: usize = counts.iter().sum::<usize>().max(1);
    let expect = |k: usize| total * counts[k] / all + 1;
    let store = |k: usize, name: &str| {
        RowStore::new(
            dim,
            expect(k),
            memory_bytes / 2,
            &spill_dir.join(format!(".train-{name}-rows.f32")),
        )
    };
    let mut train = SplitRows::new(store(0, "train")?);
    let mut val = SplitRows::new(store(1, "val")?);
    let mut index: [HashMap<String, u32>; 2] = [HashMap::new(), HashMap::new()];
    let mut unknown = 0u64;
    let mut test = 0u64;
    ds.for_each_batch(|b| {
        let ids = b.column(0).as_string::<i32>();
        // The value column: pixels (u8, made f32 here) or features.
        let (px, feats) = if pixels {
            (Some(b.column(2).as_fixed_size_binary()), None)
        } else {
            let list = b.column(2).as_fixed_size_list();
            (
                None,
                Some((list, list.values().as_primitive::<Float32Type>())),
            )
        };
        for i in 0..b.num_rows() {
            let id = ids.value(i);
            let Some(info) = samples.by_id.get(id) else {
                unknown += 1;
                continue;
            };
            if info.split == 2 {
                test += 1;
                continue;
            }
            if !keep(info) {
                continue;
            }
            let k = info.split as usize;
            let rows = if k == 0 { &mut train } else { &mut val };
            let photo = match index[k].get(id) {
                Some(&p) => p,
                None => {
                    let p = rows.ids.len() as u32;
                    index[k].insert(id.to_owned(), p);
                    rows.ids.push(id.to_owned());
                    rows.labels.push(info.label);
                    rows.coords.push(info.coords);
                    p
                }
            };
            rows.photo.push(photo);
            let pushed = match (px, feats) {
                (Some(px), _) => rows.x.push(px.value(i).iter().map(|&v| v as f32)),
                (_, Some((list, vals))) => {
                    let off = list.value_offset_at(i);
                    rows.x.push(vals.values()[off..off + dim].iter().copied())
                }
                _ => unreachable!("one of the two value columns is set"),
            };
            pushed.map_err(|e| geoloc_core::Error::Config(e.to_string()))?;
        }
        Ok(())
    })?;
    train.x.seal()?;
    val.x.seal()?;
    Ok((
        Joined {
            train,
            val,
            unknown_ids: unknown,
            test_rows: test,
        },
        dim,
    ))
}

impl SplitRows {
    fn new(x: RowStore) -> Self {
        SplitRows {
            x,
            photo: Vec::new(),
            ids: Vec::new(),
            labels: Vec::new(),
            coords: Vec::new(),
        }
    }
}

/// Per-value mean and standard deviation over rows (population std; a constant value gets
/// std 1, so it maps to 0).
pub fn standardisation(x: &RowStore) -> (Vec<f32>, Vec<f32>) {
    let d = x.dim;
    let mut sum = vec![0f64; d];
    let mut sq = vec![0f64; d];
    for i in 0..x.len() {
        for ((s, q), &v) in sum.iter_mut().zip(sq.iter_mut()).zip(x.row(i)) {
            let v = v as f64;
            *s += v;
            *q += v * v;
        }
    }
    let n = x.len().max(1) as f64;
    let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
    let std = sum
        .iter()
        .zip(&sq)
        .map(|(s, q)| {
            let m = s / n;
            let var = (q / n - m * m).max(0.0);
            if var.sqrt() < 1e-6 {
                1.0
            } else {
                var.sqrt() as f32
            }
        })
        .collect();
    (mean, std)
}
