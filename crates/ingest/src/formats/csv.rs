//! CSV files with a header (im2gps / MP-16 `IMG_ID,AUTHOR,LAT,LON,...`; GeoCLIP
//! `IMG_FILE,LAT,LON`; OSV-5M `id,latitude,longitude,...,country,...`).
//!
//! A file may also carry a country column (`country`, `country_code`: an ISO 3166-1 alpha-2
//! code, as OSV-5M's) and no coordinates at all, as classification-only collections do: its
//! rows serve the country task (see [`CsvRow::country`]).
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
    /// The latitude and longitude columns; `None` when the file has neither (then it has a
    /// country column).
    pub lat: Option<usize>,
    pub lon: Option<usize>,
    pub user: Option<usize>,
    /// The country column, when there is one.
    pub country: Option<usize>,
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
const COUNTRY_NAMES: &[&str] = &["country_code", "country", "countrycode", "country_iso2"];
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
        let country = find(headers, COUNTRY_NAMES);
        let (lat, lon) = match (find(headers, LAT_NAMES), find(headers, LON_NAMES)) {
            (Some(a), Some(o)) => (Some(a), Some(o)),
            (None, None) if country.is_some() => (None, None),
            (None, _) => {
                return Err(format!(
                    "no latitude column (one of {}) in header {}{}",
                    LAT_NAMES.join("/"),
                    list(),
                    if country.is_some() {
                        ""
                    } else {
                        ", and no country column to ingest for the country task instead"
                    }
                ))
            }
            (_, None) => {
                return Err(format!(
                    "no longitude column (one of {}) in header {}",
                    LON_NAMES.join("/"),
                    list()
                ))
            }
        };
        let mut cols = Columns {
            id,
            lat,
            lon,
            country,
            user: find(headers, USER_NAMES),
            width: headers.len(),
            id_name: headers.get(id).unwrap_or_default().to_owned(),
            swapped: false,
        };
        let (Some(lat), Some(lon)) = (lat, lon) else {
            return Ok(cols);
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
    /// `(lat, lon)`, `None` when both fields are empty (or the file has no such columns).
    pub coords: Option<(f64, f64)>,
    /// The country column's value, trimmed; `None` when empty or absent.
    pub country: Option<String>,
}

/// The ISO 3166-1 alpha-2 code a country field states (`fr`, ` FR ` -> `FR`), or `None` when
/// it is not two ASCII letters.
pub fn alpha2(field: &str) -> Option<String> {
    let f = field.trim();
    (f.len() == 2 && f.bytes().all(|b| b.is_ascii_alphabetic())).then(|| f.to_ascii_uppercase())
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
    let coords = match (cols.lat, cols.lon) {
        (Some(a), Some(o)) => coord_pair(f(a), f(o)).map_err(|e| e.with_id(&id))?,
        _ => None,
    };
    let country = cols
        .country
        .and_then(|c| rec.get(c))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let user = cols
        .user
        .and_then(|u| rec.get(u))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    Ok(CsvRow {
        id,
        user,
        coords,
        country,
    })
}
