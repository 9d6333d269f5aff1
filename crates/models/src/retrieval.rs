//! Retrieval: a photo placed by its nearest training photos in feature space (im2gps, Hays
//! & Efros 2008; "Revisiting IM2GPS", Vo et al. 2017).
//!
//! An [`Index`] holds one row per train photo: the mean of its views' L2-normalised feature
//! vectors, normalised again, with the photo's id and coordinates. A query (a photo's views,
//! normalised and averaged the same way) finds its `k` most similar rows by cosine
//! similarity, exactly: [`exact_top_k`] multiplies blocks of queries by blocks of the index
//! with one `gemm` call each and keeps each query's best `k` in a bounded heap, so memory is
//! one block of similarities, not queries x index. The location is chosen by a kernel-density
//! vote over the neighbours' coordinates ([`density_vote`]): the neighbour with the most
//! neighbours near it, not their mean, which between two cities lands between them.
//!
//! Exact search costs `2 x dim` FLOPs per query and index row: at 1280 values, 1,000,000
//! train photos are 2.6 GFLOP per query (tens of queries per second per core) and 5.1 GB of
//! f32 in memory. Past a few million rows the next step is an approximate index (an IVF or
//! HNSW from a maintained crate) with its recall measured against [`exact_top_k`].
//!
//! An index directory holds [`INDEX_FILE`] (tensors `vectors` f32 `[n, dim]`, `coords` f64
//! `[n, 2]`, `ids.bytes` u8 and `ids.offsets` i64 `[n + 1]`: the ids' UTF-8 concatenated)
//! and [`INDEX_CARD_FILE`] ([`IndexCard`]: the features it was built from and the vote's
//! settings), so evaluate and predict find and check it as they do a head.

use candle_core::{DType, Device, Tensor};
use geoloc_core::geo::{haversine_km, LatLon};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};

/// `index.json`'s format version.
pub const INDEX_CARD_VERSION: u32 = 1;
/// File names inside an index directory.
pub const INDEX_CARD_FILE: &str = "index.json";
pub const INDEX_FILE: &str = "index.safetensors";

/// Index rows per block of a search: a block of similarities is `queries x 4096` f32.
const BLOCK_ROWS: usize = 4096;
/// Queries per block of a search.
const BLOCK_QUERIES: usize = 256;

/// How the neighbours of a photo vote for its location.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Vote {
    /// Neighbours that vote (default 20). 1 places a photo at its nearest neighbour.
    #[serde(default = "default_k")]
    pub k: usize,
    /// Bandwidth of the Gaussian kernel over great-circle distance, km (default 25: a
    /// city; neighbours farther apart than a few bandwidths do not support each other).
    #[serde(default = "default_bandwidth")]
    pub bandwidth_km: f64,
    /// Each neighbour's vote is weighted by `exp((sim - best sim) / temperature)` (default
    /// 0.02), so a near-duplicate (cosine near 1) outvotes a crowd of loose matches; `0`
    /// weighs every neighbour alike.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
}

fn default_k() -> usize {
    20
}
fn default_bandwidth() -> f64 {
    25.0
}
fn default_temperature() -> f64 {
    0.02
}

impl Default for Vote {
    fn default() -> Self {
        Vote {
            k: default_k(),
            bandwidth_km: default_bandwidth(),
            temperature: default_temperature(),
        }
    }
}

impl Vote {
    /// Refuses `k` = 0 and a bandwidth that is not a positive distance.
    pub fn validate(&self) -> Result<(), String> {
        if self.k == 0 {
            return Err("vote.k must be at least 1".into());
        }
        if !(self.bandwidth_km > 0.0 && self.bandwidth_km.is_finite()) {
            return Err(format!(
                "vote.bandwidth_km must be a positive distance, found {}",
                self.bandwidth_km
            ));
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "vote.temperature must be 0 or positive, found {}",
                self.temperature
            ));
        }
        Ok(())
    }

    /// The weight of each of `hits` (best first) in the vote.
    pub fn weights(&self, hits: &[Hit]) -> Vec<f64> {
        let best = hits.first().map_or(0.0, |h| h.sim as f64);
        hits.iter()
            .map(|h| {
                if self.temperature > 0.0 {
                    ((h.sim as f64 - best) / self.temperature).exp()
                } else {
                    1.0
                }
            })
            .collect()
    }
}

/// `index.json`: what an index was built from and how it votes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexCard {
    pub card_version: u32,
    /// The kind of dataset it was built from (`features`).
    pub input_kind: String,
    /// The input dataset's metadata as its manifest recorded it (backbone, layer, dim,
    /// weights and their blake3, geometry).
    pub input: serde_json::Value,
    /// The input dataset's fingerprint: evaluate finds the features to query with by it.
    pub input_fingerprint: Option<String>,
    /// The input dataset's column checksums: its content (see the model card's).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub input_columns: std::collections::BTreeMap<String, String>,
    /// Values per row.
    pub dim: usize,
    /// Rows (train photos).
    pub photos: usize,
    /// Feature rows (views) they were averaged from.
    pub views: usize,
    pub vote: Vote,
    /// Validation photos placed by the index while it was built, and their median error
    /// (haversine km).
    pub val_photos: usize,
    pub val_median_km: Option<f64>,
}

/// Errors of building, writing and reading an index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("index: {0}")]
    Shape(String),
}

/// One neighbour: an index row and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub row: u32,
    pub sim: f32,
}

/// Better hits first: higher similarity, then the lower row (so ties are deterministic).
fn better(a: &Hit, b: &Hit) -> Ordering {
    b.sim.total_cmp(&a.sim).then(a.row.cmp(&b.row))
}

/// A hit ordered so that a max-heap's top is the worst kept hit.
#[derive(Clone, Copy, PartialEq)]
struct Worst(Hit);

impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Worst {
    fn cmp(&self, o: &Self) -> Ordering {
        better(&self.0, &o.0)
    }
}

/// Scales `v` to unit length; returns false (and leaves it) when its norm is 0 or not finite.
pub fn normalise(v: &mut [f32]) -> bool {
    let n = v
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt();
    if !(n > 0.0 && n.is_finite()) {
        return false;
    }
    v.iter_mut().for_each(|x| *x = (*x as f64 / n) as f32);
    true
}

/// The `k` rows of `base` (row-major, `dim` wide) with the largest inner product with each
/// query (row-major, `dim` wide), best first; ties go to the lower row. Exact: every
/// product is computed, `BLOCK_QUERIES x BLOCK_ROWS` at a time with one `gemm` call, and each
/// query keeps a heap of `k`. With fewer than `k` rows every row is returned.
pub fn exact_top_k(queries: &[f32], base: &[f32], dim: usize, k: usize) -> Vec<Vec<Hit>> {
    exact_top_k_where(queries, base, dim, k, |_, _| true)
}

/// [`exact_top_k`] among the rows `keep(query, row)` accepts (query: its index among
/// `queries`): each query's `k` best kept rows (fewer when fewer are kept).
pub fn exact_top_k_where(
    queries: &[f32],
    base: &[f32],
    dim: usize,
    k: usize,
    keep: impl Fn(usize, u32) -> bool + Sync,
) -> Vec<Vec<Hit>> {
    assert!(dim > 0 && queries.len().is_multiple_of(dim) && base.len().is_multiple_of(dim));
    let nq = queries.len() / dim;
    let nb = base.len() / dim;
    let k = k.min(nb);
    let mut out = Vec::with_capacity(nq);
    let mut sims = vec![0f32; BLOCK_QUERIES * BLOCK_ROWS];
    for (qi, qb) in queries.chunks(BLOCK_QUERIES * dim).enumerate() {
        let m = qb.len() / dim;
        let q0 = qi * BLOCK_QUERIES;
        let mut heaps: Vec<BinaryHeap<Worst>> =
            (0..m).map(|_| BinaryHeap::with_capacity(k + 1)).collect();
        if k > 0 {
            for (bi, bb) in base.chunks(BLOCK_ROWS * dim).enumerate() {
                let n = bb.len() / dim;
                let first = bi * BLOCK_ROWS;
                // sims[q, r] = sum_d qb[q, d] * bb[r, d]
                crate::heads::gemm_strided(
                    m,
                    n,
                    dim,
                    &mut sims[..m * n],
                    false,
                    qb,
                    (dim, 1),
                    bb,
                    (1, dim),
                );
                heaps.par_iter_mut().enumerate().for_each(|(q, heap)| {
                    for (r, &sim) in sims[q * n..(q + 1) * n].iter().enumerate() {
                        let row = (first + r) as u32;
                        if !keep(q0 + q, row) {
                            continue;
                        }
                        let hit = Worst(Hit { row, sim });
                        if heap.len() < k {
                            heap.push(hit);
                        } else if let Some(top) = heap.peek() {
                            if hit < *top {
                                heap.pop();
                                heap.push(hit);
                            }
                        }
                    }
                });
            }
        }
        out.extend(heaps.into_iter().map(|h| {
            let mut v: Vec<Hit> = h.into_iter().map(|w| w.0).collect();
            v.sort_by(better);
            v
        }));
    }
    out
}

/// The kernel-density vote: the index (into `points`) of the point with the most support,
/// support being the sum over all points of `weight * exp(-d^2 / (2 h^2))` with `d` the
/// great-circle distance and `h` the bandwidth; ties go to the earlier point (the nearer
/// neighbour). `None` without points.
pub fn density_vote(points: &[[f64; 2]], weights: &[f64], bandwidth_km: f64) -> Option<usize> {
    let p = |x: [f64; 2]| LatLon {
        lat: x[0],
        lon: x[1],
    };
    let h2 = 2.0 * bandwidth_km * bandwidth_km;
    let mut best: Option<(usize, f64)> = None;
    for (i, &a) in points.iter().enumerate() {
        let support: f64 = points
            .iter()
            .zip(weights)
            .map(|(&b, w)| {
                let d = haversine_km(p(a), p(b));
                w * (-d * d / h2).exp()
            })
            .sum();
        if best.is_none_or(|(_, s)| support > s) {
            best = Some((i, support));
        }
    }
    best.map(|b| b.0)
}

/// A retrieval index: see the module docs.
#[derive(Debug, Clone)]
pub struct Index {
    pub card: IndexCard,
    vectors: Vec<f32>,
    coords: Vec<[f64; 2]>,
    ids: Vec<String>,
}

impl Index {
    /// An index over `vectors` (row-major, `card.dim` wide, each row of unit length),
    /// with one id and location per row.
    pub fn new(
        card: IndexCard,
        vectors: Vec<f32>,
        coords: Vec<[f64; 2]>,
        ids: Vec<String>,
    ) -> Result<Index, IndexError> {
        let n = ids.len();
        if card.dim == 0 || vectors.len() != n * card.dim || coords.len() != n || card.photos != n {
            return Err(IndexError::Shape(format!(
                "{} values, {} locations and {} ids for {} rows of {}",
                vectors.len(),
                coords.len(),
                n,
                card.photos,
                card.dim
            )));
        }
        card.vote.validate().map_err(IndexError::Shape)?;
        Ok(Index {
            card,
            vectors,
            coords,
            ids,
        })
    }

    /// Rows (train photos).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.card.dim
    }

    /// Row `r`'s photo id and location.
    pub fn id(&self, r: u32) -> &str {
        &self.ids[r as usize]
    }
    pub fn location(&self, r: u32) -> [f64; 2] {
        self.coords[r as usize]
    }

    /// The `k` nearest rows of each query (row-major, `dim` wide, of unit length).
    pub fn search(&self, queries: &[f32], k: usize) -> Vec<Vec<Hit>> {
        exact_top_k(queries, &self.vectors, self.card.dim, k)
    }

    /// [`Index::search`] among the rows `keep(query, row)` accepts.
    pub fn search_where(
        &self,
        queries: &[f32],
        k: usize,
        keep: impl Fn(usize, u32) -> bool + Sync,
    ) -> Vec<Vec<Hit>> {
        exact_top_k_where(queries, &self.vectors, self.card.dim, k, keep)
    }

    /// Each row's class under a partition (`locate(lat, lon)`, e.g. a geocell head's cells).
    pub fn classes_of_rows(&self, locate: impl Fn(f64, f64) -> Option<usize>) -> Vec<Option<u32>> {
        self.coords
            .iter()
            .map(|c| locate(c[0], c[1]).map(|i| i as u32))
            .collect()
    }

    /// Where the neighbours `hits` (best first) place a photo: the density vote over the
    /// first `vote.k` of them, weighted by similarity ([`Vote::weights`]).
    pub fn place(&self, hits: &[Hit]) -> Option<[f64; 2]> {
        let hits = &hits[..hits.len().min(self.card.vote.k)];
        let pts: Vec<[f64; 2]> = hits.iter().map(|h| self.location(h.row)).collect();
        density_vote(
            &pts,
            &self.card.vote.weights(hits),
            self.card.vote.bandwidth_km,
        )
        .map(|i| pts[i])
    }

    /// Writes [`INDEX_FILE`] and [`INDEX_CARD_FILE`] into `dir` (each through a temporary
    /// file and a rename).
    pub fn save(&self, dir: &Path) -> Result<(), IndexError> {
        let n = self.len();
        let shape = |e: candle_core::Error| IndexError::Shape(crate::candle_message(&e));
        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0i64);
        for id in &self.ids {
            bytes.extend_from_slice(id.as_bytes());
            offsets.push(bytes.len() as i64);
        }
        let coords: Vec<f64> = self.coords.iter().flatten().copied().collect();
        let cpu = Device::Cpu;
        let tensors: HashMap<String, Tensor> = [
            (
                "vectors",
                Tensor::from_slice(&self.vectors, (n, self.card.dim), &cpu).map_err(shape)?,
            ),
            (
                "coords",
                Tensor::from_slice(&coords, (n, 2), &cpu).map_err(shape)?,
            ),
            (
                "ids.bytes",
                Tensor::from_slice(&bytes, bytes.len(), &cpu).map_err(shape)?,
            ),
            (
                "ids.offsets",
                Tensor::from_slice(&offsets, n + 1, &cpu).map_err(shape)?,
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let io = |path: &Path| {
            let path = path.to_owned();
            move |e: geoloc_core::Error| IndexError::Format {
                path: path.clone(),
                reason: e.to_string(),
            }
        };
        let path = dir.join(INDEX_FILE);
        geoloc_core::dataset::commit_file(
            &dir.join(format!(".{INDEX_FILE}.tmp")),
            &path,
            "the retrieval index",
            |tmp| {
                candle_core::safetensors::save(&tensors, tmp)
                    .map_err(|e| std::io::Error::other(crate::candle_message(&e)).into())
            },
        )
        .map_err(io(&path))?;
        let card = serde_json::to_vec_pretty(&self.card).map_err(|e| IndexError::Format {
            path: dir.join(INDEX_CARD_FILE),
            reason: e.to_string(),
        })?;
        geoloc_core::dataset::write_atomic(dir, INDEX_CARD_FILE, &card)
            .map_err(io(&dir.join(INDEX_CARD_FILE)))
    }

    /// Reads the card of an index directory (checking its version).
    pub fn load_card(dir: &Path) -> Result<IndexCard, IndexError> {
        let path = dir.join(INDEX_CARD_FILE);
        let bytes = std::fs::read(&path).map_err(|e| IndexError::Io {
            path: path.clone(),
            source: e,
        })?;
        let card: IndexCard = serde_json::from_slice(&bytes).map_err(|e| IndexError::Format {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if card.card_version != INDEX_CARD_VERSION {
            return Err(IndexError::Format {
                path,
                reason: format!(
                    "index.json version {}, this build reads {INDEX_CARD_VERSION}",
                    card.card_version
                ),
            });
        }
        Ok(card)
    }

    /// Loads an index directory; every tensor's shape and the ids' offsets are checked
    /// against the card.
    pub fn load(dir: &Path) -> Result<Index, IndexError> {
        let card = Self::load_card(dir)?;
        let path = dir.join(INDEX_FILE);
        let bad = |reason: String| IndexError::Format {
            path: path.clone(),
            reason,
        };
        let t = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| bad(crate::candle_message(&e)))?;
        let get =
            |name: &str, dtype: DType, dims: Option<&[usize]>| -> Result<&Tensor, IndexError> {
                let v = t
                    .get(name)
                    .ok_or_else(|| bad(format!("no tensor `{name}`")))?;
                if v.dtype() != dtype || dims.is_some_and(|d| v.dims() != d) {
                    return Err(bad(format!(
                        "`{name}` is {:?} {:?}, expected {dtype:?} {:?}",
                        v.dtype(),
                        v.dims(),
                        dims
                    )));
                }
                Ok(v)
            };
        let n = card.photos;
        let read = |e: candle_core::Error| bad(crate::candle_message(&e));
        let vectors = get("vectors", DType::F32, Some(&[n, card.dim]))?
            .flatten_all()
            .and_then(|v| v.to_vec1::<f32>())
            .map_err(read)?;
        let coords: Vec<f64> = get("coords", DType::F64, Some(&[n, 2]))?
            .flatten_all()
            .and_then(|v| v.to_vec1::<f64>())
            .map_err(read)?;
        let bytes = get("ids.bytes", DType::U8, None)?
            .to_vec1::<u8>()
            .map_err(read)?;
        let offsets = get("ids.offsets", DType::I64, Some(&[n + 1]))?
            .to_vec1::<i64>()
            .map_err(read)?;
        let mut ids = Vec::with_capacity(n);
        for w in offsets.windows(2) {
            let (a, b) = (w[0], w[1]);
            let id = usize::try_from(a)
                .ok()
                .zip(usize::try_from(b).ok())
                .filter(|(a, b)| a <= b && *b <= bytes.len())
                .and_then(|(a, b)| std::str::from_utf8(&bytes[a..b]).ok())
                .ok_or_else(|| bad(format!("id offsets {a}..{b} are not a UTF-8 id")))?;
            ids.push(id.to_owned());
        }
        let coords = coords.chunks(2).map(|c| [c[0], c[1]]).collect();
        Index::new(card, vectors, coords, ids).map_err(|e| bad(e.to_string()))
    }
}

/// Per-photo running sums of normalised view vectors: a photo's query is the mean of its
/// views' unit vectors, normalised again (views whose vector is zero are skipped).
#[derive(Debug, Clone)]
pub struct QueryMean {
    sum: Vec<f64>,
    views: u32,
    buf: Vec<f32>,
}

impl QueryMean {
    pub fn new(dim: usize) -> Self {
        QueryMean {
            sum: vec![0.0; dim],
            views: 0,
            buf: Vec::with_capacity(dim),
        }
    }

    /// Adds one view's feature vector.
    pub fn add(&mut self, row: &[f32]) {
        self.buf.clear();
        self.buf.extend_from_slice(row);
        if normalise(&mut self.buf) {
            self.sum
                .iter_mut()
                .zip(&self.buf)
                .for_each(|(s, v)| *s += *v as f64);
            self.views += 1;
        }
    }

    /// Views added (with a nonzero vector).
    pub fn views(&self) -> u32 {
        self.views
    }

    /// The unit query vector, or `None` when no view had a nonzero vector.
    pub fn finish(&self) -> Option<Vec<f32>> {
        let mut v: Vec<f32> = self.sum.iter().map(|s| *s as f32).collect();
        (self.views > 0 && normalise(&mut v)).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use geoloc_core::rng::SplitMix64;

    /// The reference: every product as a plain dot product, sorted.
    fn brute(queries: &[f32], base: &[f32], dim: usize, k: usize) -> Vec<Vec<Hit>> {
        queries
            .chunks(dim)
            .map(|q| {
                let mut all: Vec<Hit> = base
                    .chunks(dim)
                    .enumerate()
                    .map(|(r, b)| Hit {
                        row: r as u32,
                        sim: q.iter().zip(b).map(|(x, y)| x * y).sum(),
                    })
                    .collect();
                all.sort_by(better);
                all.truncate(k);
                all
            })
            .collect()
    }

    #[test]
    fn exact_top_k_equals_brute_force_with_ties_and_k_past_the_index() {
        // Small integers: every product is exact in f32 whatever the summation order, and
        // ties are frequent (values in -2..=2 over 8 dimensions).
        let mut rng = SplitMix64::new(5);
        let dim = 8;
        let mut small = |n: usize| -> Vec<f32> {
            (0..n * dim)
                .map(|_| (rng.next_u64() % 5) as f32 - 2.0)
                .collect()
        };
        // 300 queries (two query blocks), 9,000 rows (three index blocks).
        let queries = small(300);
        let base = small(9000);
        for k in [1, 7, 50] {
            let got = exact_top_k(&queries, &base, dim, k);
            let want = brute(&queries, &base, dim, k);
            assert_eq!(got, want, "k = {k}");
        }
        let ties = exact_top_k(&queries, &base, dim, 50)
            .iter()
            .map(|h| h.windows(2).filter(|w| w[0].sim == w[1].sim).count())
            .sum::<usize>();
        assert!(ties > 1000, "the data has ties to break ({ties})");
        // k larger than the index: every row, ordered.
        let tiny = small(5);
        let got = exact_top_k(&queries[..dim * 3], &tiny, dim, 12);
        assert_eq!(got, brute(&queries[..dim * 3], &tiny, dim, 12));
        assert!(got.iter().all(|h| h.len() == 5));
        // A filter: odd rows only, and per query a different residue.
        let odd = exact_top_k_where(&queries, &base, dim, 9, |_, r| r % 2 == 1);
        let want: Vec<Vec<Hit>> = brute(&queries, &base, dim, base.len() / dim)
            .into_iter()
            .map(|h| h.into_iter().filter(|x| x.row % 2 == 1).take(9).collect())
            .collect();
        assert_eq!(odd, want);
        let per = exact_top_k_where(&queries, &base, dim, 4, |q, r| r as usize % 3 == q % 3);
        for (q, h) in per.iter().enumerate() {
            assert!(h.len() == 4 && h.iter().all(|x| x.row as usize % 3 == q % 3));
        }
        // k = 0 and an empty query set.
        assert!(exact_top_k(&queries[..dim], &tiny, dim, 0)[0].is_empty());
        assert!(exact_top_k(&[], &tiny, dim, 3).is_empty());
    }

    #[test]
    fn exact_top_k_on_random_floats_finds_the_same_rows() {
        let mut rng = SplitMix64::new(9);
        let dim = 64;
        let mut unit = |n: usize| -> Vec<f32> {
            let mut v: Vec<f32> = (0..n * dim)
                .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
                .collect();
            v.chunks_mut(dim).for_each(|r| {
                normalise(r);
            });
            v
        };
        let queries = unit(40);
        let base = unit(5000);
        let got = exact_top_k(&queries, &base, dim, 10);
        let want = brute(&queries, &base, dim, 10);
        for (g, w) in got.iter().zip(&want) {
            for (a, b) in g.iter().zip(w) {
                // Summation order differs from the plain loop by rounding only.
                assert!((a.sim - b.sim).abs() < 1e-5, "{a:?} {b:?}");
            }
            let rows = |h: &[Hit]| h.iter().map(|x| x.row).collect::<Vec<_>>();
            assert_eq!(rows(g), rows(w));
        }
    }

    #[test]
    fn the_density_vote_picks_the_cluster_not_the_mean() {
        let paris = [48.8566, 2.3522];
        let near = |d: f64| [paris[0] + d, paris[1] - d];
        let new_york = [40.7128, -74.0060];
        // The nearest neighbour is in New York, three of five in Paris.
        let pts = [
            new_york,
            near(0.01),
            [40.72, -74.01],
            near(-0.02),
            near(0.03),
        ];
        let i = density_vote(&pts, &[1.0; 5], 25.0).unwrap();
        assert!(i == 1 || i == 3 || i == 4, "{i}");
        assert_eq!(i, 1, "ties within the cluster: the densest point wins");
        // Their spherical mean is in the Atlantic, thousands of km from both.
        let mean =
            geoloc_core::geo::spherical_mean(pts.iter().map(|p| ((p[0], p[1]), 1.0))).unwrap();
        let km = |a: [f64; 2], b: [f64; 2]| {
            haversine_km(
                LatLon {
                    lat: a[0],
                    lon: a[1],
                },
                LatLon {
                    lat: b[0],
                    lon: b[1],
                },
            )
        };
        assert!(km(mean, paris) > 1500.0 && km(mean, new_york) > 1500.0);
        // One point, equal support: the first (the nearest neighbour).
        assert_eq!(density_vote(&[new_york], &[1.0], 25.0), Some(0));
        assert_eq!(density_vote(&[paris, new_york], &[1.0, 1.0], 25.0), Some(0));
        assert_eq!(density_vote(&[], &[], 25.0), None);
        // Weighted by similarity: a near-duplicate in New York (0.97) outvotes four loose
        // matches in Paris (0.6) at temperature 0.02; weighed alike, Paris wins.
        let sims = [0.97, 0.6, 0.6, 0.6, 0.6];
        let hits: Vec<Hit> = sims
            .iter()
            .enumerate()
            .map(|(r, &sim)| Hit { row: r as u32, sim })
            .collect();
        let pts = [new_york, near(0.01), near(0.0), near(-0.02), near(0.03)];
        let sharp = Vote::default().weights(&hits);
        assert_eq!(density_vote(&pts, &sharp, 25.0), Some(0));
        let flat = Vote {
            temperature: 0.0,
            ..Vote::default()
        }
        .weights(&hits);
        assert_eq!(flat, vec![1.0; 5]);
        assert_ne!(density_vote(&pts, &flat, 25.0), Some(0));
    }

    #[test]
    fn an_index_survives_its_files_and_refuses_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = vec![1.0, 0.0, 0.6, 0.8, 0.0, 1.0];
        v.chunks_mut(2).for_each(|r| {
            normalise(r);
        });
        let card = IndexCard {
            card_version: INDEX_CARD_VERSION,
            input_kind: "features".into(),
            input: serde_json::json!({"dim": 2}),
            input_fingerprint: Some("f".into()),
            input_columns: Default::default(),
            dim: 2,
            photos: 3,
            views: 3,
            vote: Vote::default(),
            val_photos: 0,
            val_median_km: None,
        };
        let ids = vec!["a".to_string(), "bé".into(), "".into()];
        let coords = vec![[1.0, 2.0], [3.0, 4.0], [-5.0, 6.5]];
        let idx = Index::new(card.clone(), v.clone(), coords.clone(), ids.clone()).unwrap();
        idx.save(dir.path()).unwrap();
        let back = Index::load(dir.path()).unwrap();
        assert_eq!(back.card, card);
        assert_eq!(
            (back.vectors, back.coords, back.ids),
            (v.clone(), coords, ids)
        );
        let hits = idx.search(&[0.0, 1.0], 2);
        assert_eq!(hits[0][0].row, 2);
        assert_eq!(hits[0][1].row, 1);
        assert_eq!(idx.place(&hits[0][..1]), Some([-5.0, 6.5]));
        // Shapes that disagree with the card.
        assert!(Index::new(card.clone(), v[..4].to_vec(), vec![[0.0; 2]; 3], vec![]).is_err());
        let mut c2 = card;
        c2.photos = 4;
        std::fs::write(
            dir.path().join(INDEX_CARD_FILE),
            serde_json::to_vec(&c2).unwrap(),
        )
        .unwrap();
        let e = Index::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("vectors"), "{e}");
    }

    #[test]
    fn a_query_is_the_mean_of_unit_views() {
        let mut q = QueryMean::new(2);
        q.add(&[10.0, 0.0]);
        q.add(&[0.0, 0.5]);
        q.add(&[0.0, 0.0]);
        assert_eq!(q.views(), 2);
        let v = q.finish().unwrap();
        assert!((v[0] - v[1]).abs() < 1e-7 && (v[0] - 0.5f32.sqrt()).abs() < 1e-6);
        assert!(QueryMean::new(3).finish().is_none());
    }
}
