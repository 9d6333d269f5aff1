//! CSV files with a header (im2gps / MP-16 `IMG_ID,AUTHOR,LAT,LON,...`; GeoCLIP
//! `IMG_FILE,LAT,LON`; OSV-5M `id,latitude,longitude,...`).
//!
//! Columns are found by name, case-insensitively. Some published files have the latitude and
//! longitude headers swapped (GeoEstimation's im2gps CSVs before commit 5e091c0 read
//! `LON,LAT` over values that were `lat,lon`): [`Columns::detect`] checks the values' ranges
//! on a sample and swaps the columns when the one labelled latitude leaves [-90, 90] in at
//! least 5% of the rows while the other never does (a stray bad row is a reject, not a reason
//! to swap a whole file). The `swap_lat_lon` source option overrides the detection.

use super::{coord_pair, LineError};

/// Where the needed fields are in a CSV file.
#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    pub id: usize,
    pub lat: usize,
    pub lon: usize,
    pub user: Option<usize>,
    /// The header count: rows with another count are rejected.
    pub width: usize,
    /// The id column's header (`IMG_ID`, `IMG_FILE`, ...).
    pub id_name: String,
    /// `true` when the value ranges showed the lat/lon headers to be swapped.
    pub swapped: bool,
}

const ID_NAMES: &[&str] = &[
    "img_id", "img_file", "id", "image", "image_id", "file", "filename", "photo_id", "hash",
];
const LAT_NAMES: &[&str] = &["lat", "latitude", "gt_lat"];
const LON_NAMES: &[&str] = &["lon", "long", "lng", "longitude", "gt_long", "gt_lon"];
const USER_NAMES: &[&str] = &[
    "author",
    "user",
    "user_id",
    "user_nsid",
    "owner",
    "creator_id",
];

fn find(headers: &csv::StringRecord, names: &[&str]) -> Option<usize> {
    names.iter().find_map(|n| {
        headers.iter().position(|h| {
            h.trim()
                .trim_start_matches('\u{feff}')
                .eq_ignore_ascii_case(n)
        })
    })
}

impl Columns {
    /// Finds the columns in `headers` and checks lat/lon ranges over `sample` rows.
    ///
    /// `force` overrides the detection: `Some(true)` swaps, `Some(false)` trusts the header.
    pub fn detect<'a>(
        headers: &csv::StringRecord,
        sample: impl Iterator<Item = &'a csv::StringRecord>,
        force: Option<bool>,
    ) -> Result<Columns, String> {
        let list = || headers.iter().collect::<Vec<_>>().join(",");
        let id = find(headers, ID_NAMES).ok_or_else(|| {
            format!(
                "no id column (one of {}) in header {}",
                ID_NAMES.join("/"),
                list()
            )
        })?;
        let lat = find(headers, LAT_NAMES).ok_or_else(|| {
            format!(
                "no latitude column (one of {}) in header {}",
                LAT_NAMES.join("/"),
                list()
            )
        })?;
        let lon = find(headers, LON_NAMES).ok_or_else(|| {
            format!(
                "no longitude column (one of {}) in header {}",
                LON_NAMES.join("/"),
                list()
            )
        })?;
        let mut cols = Columns {
            id,
            lat,
            lon,
            user: find(headers, USER_NAMES),
            width: headers.len(),
            id_name: headers.get(id).unwrap_or_default().to_owned(),
            swapped: false,
        };
        let (mut n, mut lat_out, mut lon_out) = (0usize, 0usize, 0usize);
        for rec in sample {
            let v = |i: usize| rec.get(i).and_then(|s| s.trim().parse::<f64>().ok());
            n += 1;
            lat_out += usize::from(v(lat).is_some_and(|x| x.abs() > 90.0));
            lon_out += usize::from(v(lon).is_some_and(|x| x.abs() > 90.0));
        }
        let detected = lat_out > 0 && lat_out * 20 >= n && lon_out == 0;
        if force.unwrap_or(detected) {
            std::mem::swap(&mut cols.lat, &mut cols.lon);
            cols.swapped = true;
        }
        Ok(cols)
    }
}

/// One CSV row.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvRow {
    pub id: String,
    pub user: Option<String>,
    /// `(lat, lon)`, `None` when both fields are empty.
    pub coords: Option<(f64, f64)>,
}

/// Parses one record with the detected columns.
pub fn parse_record(cols: &Columns, rec: &csv::StringRecord) -> Result<CsvRow, LineError> {
    let id = rec.get(cols.id).unwrap_or_default().trim().to_owned();
    if rec.len() != cols.width {
        return Err(LineError::new(
            "wrong-column-count",
            format!("{} fields, the header has {}", rec.len(), cols.width),
        )
        .with_id(&id));
    }
    if id.is_empty() {
        return Err(LineError::new("bad-id", "empty id"));
    }
    let f = |i: usize| rec.get(i).unwrap_or_default().as_bytes();
    let coords = coord_pair(f(cols.lat), f(cols.lon)).map_err(|e| e.with_id(&id))?;
    let user = cols
        .user
        .and_then(|u| rec.get(u))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    Ok(CsvRow { id, user, coords })
}
