//! Parsers of the metadata formats, one module per format. Each turns one line (or file)
//! into a typed row or a [`LineError`] with a stable reason code; none panics on input.
//!
//! The parsers are public so that tools and tests can use them on single lines; the stage
//! itself goes through [`crate::run`].

pub mod csv;
pub mod exif;
pub mod mediaeval;
pub mod truth;
pub mod yfcc;

/// Why a line could not be turned into a row.
#[derive(Debug, Clone, PartialEq)]
pub struct LineError {
    /// Stable kebab-case code (see `geoloc_core::schema::rejects`).
    pub reason: &'static str,
    /// Human-readable detail.
    pub detail: String,
    /// The id, where it could be read.
    pub id: Option<String>,
}

impl LineError {
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        LineError {
            reason,
            detail: detail.into(),
            id: None,
        }
    }

    pub fn with_id(mut self, id: &str) -> Self {
        if !id.is_empty() {
            self.id = Some(id.to_owned());
        }
        self
    }
}

/// Photo or video, as the sources mark them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    Photo,
    Video,
}

/// Parses a coordinate pair where both fields may be empty (no location). One empty and one
/// not, or an unparsable value, is an error.
pub(crate) fn coord_pair(lat: &[u8], lon: &[u8]) -> Result<Option<(f64, f64)>, LineError> {
    let la = crate::text::opt_f64(lat)
        .map_err(|e| LineError::new("bad-coordinate", format!("latitude {e}")))?;
    let lo = crate::text::opt_f64(lon)
        .map_err(|e| LineError::new("bad-coordinate", format!("longitude {e}")))?;
    match (la, lo) {
        (Some(a), Some(o)) => Ok(Some((a, o))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(LineError::new(
            "bad-coordinate",
            "latitude given without longitude",
        )),
        (None, Some(_)) => Err(LineError::new(
            "bad-coordinate",
            "longitude given without latitude",
        )),
    }
}
