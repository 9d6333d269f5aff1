//! YFCC100M metadata: tab-separated, no header, URL-encoded text.
//!
//! Two layouts, told apart by the field count:
//! - 23 columns (the 2014 Webscope release, `yfcc100m_dataset-0..9`): `photo_id user_nsid
//!   user_nickname date_taken date_uploaded capture_device title description user_tags
//!   machine_tags longitude latitude accuracy page_url download_url license_name license_url
//!   server_id farm_id secret secret_original extension marker`;
//! - 25 columns (the 2016 single file): `line_no photo_id photo_hash` and then the same from
//!   `user_nsid` on. `photo_hash` is the key MediaEval's locale files use.
//!
//! `marker` is 0 for photos and 1 for videos; photos without a geotag have empty
//! longitude/latitude/accuracy.

use super::{coord_pair, LineError, Media};
use crate::text::{split_fields, text, url_decode};

/// One YFCC100M row, text fields URL-decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct YfccRow {
    pub line_no: Option<i64>,
    pub photo_id: String,
    pub photo_hash: Option<String>,
    pub user_nsid: String,
    pub user_nickname: String,
    pub date_taken: String,
    pub capture_device: String,
    pub title: String,
    pub description: String,
    pub user_tags: String,
    /// `(lat, lon)`, `None` when not geotagged.
    pub coords: Option<(f64, f64)>,
    pub accuracy: Option<i16>,
    pub download_url: String,
    pub extension: String,
    pub media: Media,
}

/// Parses one line of either layout.
pub fn parse_line(line: &[u8]) -> Result<YfccRow, LineError> {
    let mut f = Vec::with_capacity(26);
    split_fields(line, b'\t', &mut f);
    let (line_no, photo_hash, o) = match f.len() {
        23 => (None, None, 0usize),
        25 => (
            text(f[0]).parse::<i64>().ok(),
            Some(text(f[2]).into_owned()),
            2usize,
        ),
        n => {
            let id = if n > 1 {
                text(f[0]).into_owned()
            } else {
                String::new()
            };
            return Err(LineError::new(
                "wrong-column-count",
                format!("{n} tab-separated fields, expected 23 (2014 release) or 25 (2016 file)"),
            )
            .with_id(&id));
        }
    };
    let photo_id = text(f[if o == 0 { 0 } else { 1 }]).into_owned();
    super::mediaeval::check_id(&photo_id)?;
    let d = |i: usize| url_decode(&text(f[o + i])).into_owned();
    let coords = coord_pair(f[o + 11], f[o + 10]).map_err(|e| e.with_id(&photo_id))?;
    let media = match text(f[o + 22]).as_ref() {
        "0" => Media::Photo,
        "1" => Media::Video,
        other => {
            return Err(
                LineError::new("bad-field", format!("marker {other:?} is neither 0 nor 1"))
                    .with_id(&photo_id),
            )
        }
    };
    Ok(YfccRow {
        line_no,
        photo_hash,
        user_nsid: d(1),
        user_nickname: d(2),
        date_taken: d(3),
        capture_device: d(5),
        title: d(6),
        description: d(7),
        user_tags: d(8),
        coords,
        accuracy: text(f[o + 12]).parse().ok(),
        download_url: d(14),
        extension: d(21),
        media,
        photo_id,
    })
}
