//! The photos a samples dataset lists: its `id` and `image` columns (an image path relative
//! to the images root), in dataset order, optionally only some splits. Preprocess and
//! featurize-from-photos read photos through here, so both see the same photos in the same
//! order and fingerprint them the same way.
//!
//! Memory: nothing here holds the whole list. [`for_each`] streams it, [`range`] keeps one
//! shard's photos (about 100 bytes each), and [`fingerprint`] stats the files a block at a
//! time on rayon's pool (on a network filesystem a stat is a round trip: 4.7 million of them
//! one after another take many minutes, in parallel a fraction of that).

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::fingerprint::{FileSet, Fingerprint};
use crate::schema;
use crate::stage::{Context, Input};
use arrow::array::{Array, AsArray};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One photo to read: its sample id and its path relative to the images root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Photo {
    pub id: String,
    pub image: String,
}

/// Which photos of a samples dataset a stage reads.
#[derive(Debug, Clone, Copy)]
pub struct Selection<'a> {
    pub samples: &'a Input,
    /// Only rows of these splits (`None`: all).
    pub splits: Option<&'a [String]>,
}

impl Selection<'_> {
    /// Calls `f(id, image)` for each selected row, in dataset order.
    pub fn for_each(&self, mut f: impl FnMut(&str, &str) -> Result<()>) -> Result<()> {
        let ds = Dataset::open(&self.samples.dir, &schema::samples())?;
        ds.for_each_batch(|b| {
            let col = |n: &str| {
                b.column_by_name(n)
                    .and_then(|c| c.as_string_opt::<i32>())
                    .cloned()
                    .ok_or_else(|| Error::Config(format!("samples without utf8 `{n}`")))
            };
            let (id, image, split) = (col("id")?, col("image")?, col("split")?);
            for i in 0..b.num_rows() {
                if let Some(s) = self.splits {
                    if split.is_null(i) || !s.iter().any(|x| x == split.value(i)) {
                        continue;
                    }
                }
                f(id.value(i), image.value(i))?;
            }
            Ok(())
        })
    }

    /// How many photos are selected (every row when no split is chosen: no read).
    pub fn count(&self) -> Result<u64> {
        if self.splits.is_none() {
            return Ok(self.samples.manifest.rows);
        }
        let mut n = 0;
        self.for_each(|_, _| {
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }

    /// The selected photos at positions `range` (a shard's), in order.
    pub fn range(&self, range: Range<u64>) -> Result<Vec<Photo>> {
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        let mut pos = 0u64;
        self.for_each(|id, image| {
            if range.contains(&pos) {
                out.push(Photo {
                    id: id.to_owned(),
                    image: image.to_owned(),
                });
            }
            pos += 1;
            Ok(())
        })?;
        Ok(out)
    }

    /// Adds the photo set to a fingerprint: the samples' `id` and `image` columns (and
    /// `split` when splits are chosen), its recorded images root, and every selected file's
    /// size and modification time under `root`. Labels and coordinates do not enter.
    pub fn fingerprint(&self, fp: Fingerprint, root: &Path) -> Result<Fingerprint> {
        let columns: &[&str] = if self.splits.is_some() {
            &["id", "image", "split"]
        } else {
            &["id", "image"]
        };
        let fp = fp.dataset(
            &self.samples.name,
            &self.samples.manifest,
            columns,
            &["images_root"],
        )?;
        let mut set = FileSet::default();
        self.for_each(|_, image| {
            set.add(image, root.join(image));
            Ok(())
        })?;
        Ok(fp.files_of("images", set))
    }
}

/// The images root: `configured` (a stage's `images_root`), else the one the samples
/// manifest records (ingest's), resolved against the project root.
pub fn images_root(configured: Option<&Path>, ctx: &Context, samples: &Input) -> Result<PathBuf> {
    let from_samples = samples
        .manifest
        .info
        .metadata
        .get("images_root")
        .and_then(|v| v.as_str())
        .map(PathBuf::from);
    configured
        .map(Path::to_path_buf)
        .or(from_samples)
        .map(|p| ctx.resolve(&p))
        .ok_or_else(|| {
            Error::Config(format!(
                "no images root: set `images_root` in this config or in the ingest config of `{}`",
                samples.name
            ))
        })
}
