//! MediaEval ground-truth files: `hash,lat,lon` (the organisers' files, comma-separated) and
//! `hash<TAB>lon<TAB>lat` (the public leaderboard's files). The separator tells which.

use super::{coord_pair, LineError};
use crate::text::{split_fields, text};

/// One truth line: an id and its location.
#[derive(Debug, Clone, PartialEq)]
pub struct TruthRow {
    pub id: String,
    pub lat: f64,
    pub lon: f64,
}

/// Parses one line of either style.
pub fn parse_line(line: &[u8]) -> Result<TruthRow, LineError> {
    let tab = memchr::memchr(b'\t', line).is_some();
    let mut f = Vec::with_capacity(4);
    split_fields(line, if tab { b'\t' } else { b',' }, &mut f);
    let id = text(f[0]).into_owned();
    if f.len() != 3 {
        return Err(LineError::new(
            "wrong-column-count",
            format!(
                "{} fields, expected 3 (hash,lat,lon or hash<TAB>lon<TAB>lat)",
                f.len()
            ),
        )
        .with_id(&id));
    }
    super::mediaeval::check_id(&id)?;
    let pair = if tab {
        coord_pair(f[2], f[1])
    } else {
        coord_pair(f[1], f[2])
    };
    match pair.map_err(|e| e.with_id(&id))? {
        Some((lat, lon)) => Ok(TruthRow { id, lat, lon }),
        None => Err(LineError::new("bad-coordinate", "no coordinates").with_id(&id)),
    }
}
