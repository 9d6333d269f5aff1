//! Which slice of the work one process does: `--shard i/N`.
//!
//! A shard writes only its own files (parts named with its index and the count), so `N`
//! processes on a shared filesystem never race. The index and count come from, in order:
//! the `--shard i/N` flag; Slurm's `SLURM_ARRAY_TASK_ID` with `SLURM_ARRAY_TASK_COUNT`;
//! Kubernetes' `JOB_COMPLETION_INDEX` with a count given by `GEOLOC_SHARD_COUNT`.

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// Shard `index` of `count` (0-based index, `count >= 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// The whole job in one process.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// This shard's contiguous share of `n` ordered rows: the shards' ranges cover `0..n`
    /// once, in order, and differ in length by at most one.
    pub fn range(&self, n: u64) -> std::ops::Range<u64> {
        let (i, c) = (self.index as u64, self.count as u64);
        (n * i / c)..(n * (i + 1) / c)
    }

    /// A checked shard.
    pub fn new(index: u32, count: u32) -> Result<Self> {
        if count == 0 {
            return Err(Error::Shard("shard count must be at least 1".into()));
        }
        if index >= count {
            return Err(Error::Shard(format!(
                "shard index {index} is out of range for {count} shards (0..{count})"
            )));
        }
        Ok(Shard { index, count })
    }

    /// The shard from the flag if given, otherwise from the scheduler's environment,
    /// otherwise [`Shard::ALL`].
    pub fn resolve(flag: Option<Shard>) -> Result<Self> {
        if let Some(s) = flag {
            return Ok(s);
        }
        Self::from_env(|k| std::env::var(k).ok())
    }

    /// The shard from environment variables, read through `get` (testable without touching
    /// the process environment).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let parse = |name: &str, v: String| -> Result<u32> {
            v.trim()
                .parse::<u32>()
                .map_err(|_| Error::Shard(format!("{name}={v:?} is not a non-negative integer")))
        };
        if let Some(id) = get("SLURM_ARRAY_TASK_ID") {
            let index = parse("SLURM_ARRAY_TASK_ID", id)?;
            let count = match get("SLURM_ARRAY_TASK_COUNT") {
                Some(c) => parse("SLURM_ARRAY_TASK_COUNT", c)?,
                None => {
                    return Err(Error::Shard(
                        "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not".into(),
                    ))
                }
            };
            // Arrays may start at a non-zero index (--array=1-4): shift by the minimum.
            let min = match get("SLURM_ARRAY_TASK_MIN") {
                Some(m) => parse("SLURM_ARRAY_TASK_MIN", m)?,
                None => 0,
            };
            return Shard::new(index.saturating_sub(min), count);
        }
        if let Some(id) = get("JOB_COMPLETION_INDEX") {
            let index = parse("JOB_COMPLETION_INDEX", id)?;
            let count = match get("GEOLOC_SHARD_COUNT") {
                Some(c) => parse("GEOLOC_SHARD_COUNT", c)?,
                None => {
                    return Err(Error::Shard(
                        "JOB_COMPLETION_INDEX is set: pass the shard count in GEOLOC_SHARD_COUNT or --shard i/N".into(),
                    ))
                }
            };
            return Shard::new(index, count);
        }
        Ok(Shard::ALL)
    }

    /// `true` when this is the only shard.
    pub fn is_all(&self) -> bool {
        self.count == 1
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| Error::Shard(format!("{s:?}: expected i/N, for example 0/4")))?;
        let i = i
            .trim()
            .parse()
            .map_err(|_| Error::Shard(format!("{s:?}: shard index is not an integer")))?;
        let n = n
            .trim()
            .parse()
            .map_err(|_| Error::Shard(format!("{s:?}: shard count is not an integer")))?;
        Shard::new(i, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_row_once_in_order() {
        for n in [0u64, 1, 7, 100, 101] {
            for c in 1..=5u32 {
                let v: Vec<u64> = (0..c)
                    .flat_map(|i| Shard::new(i, c).unwrap().range(n))
                    .collect();
                assert_eq!(v, (0..n).collect::<Vec<_>>(), "n={n} c={c}");
            }
        }
    }
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn parses_flag() {
        assert_eq!(
            "2/4".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 4 }
        );
        assert!("4/4".parse::<Shard>().is_err());
        assert!("0/0".parse::<Shard>().is_err());
        assert!("x/4".parse::<Shard>().is_err());
        assert!("3".parse::<Shard>().is_err());
    }

    #[test]
    fn reads_slurm_and_kubernetes() {
        let s = Shard::from_env(env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]));
        assert_eq!(s.unwrap(), Shard { index: 3, count: 4 });
        let s = Shard::from_env(env(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
        ]));
        assert_eq!(s.unwrap(), Shard { index: 3, count: 4 });
        let s = Shard::from_env(env(&[
            ("JOB_COMPLETION_INDEX", "1"),
            ("GEOLOC_SHARD_COUNT", "2"),
        ]));
        assert_eq!(s.unwrap(), Shard { index: 1, count: 2 });
        assert!(Shard::from_env(env(&[("JOB_COMPLETION_INDEX", "1")])).is_err());
        assert_eq!(Shard::from_env(env(&[])).unwrap(), Shard::ALL);
    }
}
