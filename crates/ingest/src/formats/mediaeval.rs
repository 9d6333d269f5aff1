//! MediaEval 2015 Placing Task locale files: tab-separated, no header.
//!
//! `hash  media_type  year  place_node_id  node_name  longitude  latitude`
//!
//! - `hash`: 16-32 hex characters (an MD5 written without zero padding), kept as an opaque
//!   string;
//! - `media_type`: 0 photo, 1 video;
//! - `node_name`: `Country@Region@...@City`, URL-encoded (`+` for space);
//! - the test file carries no coordinates: its lines have 5 fields, or 7 with the last two
//!   empty.

use super::{coord_pair, LineError, Media};
use crate::text::{split_fields, text, url_decode};

/// One line of a locale file.
#[derive(Debug, Clone, PartialEq)]
pub struct LocaleRow {
    pub hash: String,
    pub media: Media,
    pub year: Option<i16>,
    pub place_node_id: Option<i64>,
    /// URL-decoded `Country@Region@City`.
    pub node_name: String,
    /// `(lat, lon)` in degrees, `None` in test files.
    pub coords: Option<(f64, f64)>,
}

impl LocaleRow {
    /// The country: the first component of the node name.
    pub fn country(&self) -> Option<&str> {
        self.node_name.split('@').next().filter(|s| !s.is_empty())
    }
}

/// Parses one line (without its newline).
pub fn parse_line(line: &[u8]) -> Result<LocaleRow, LineError> {
    let mut f = Vec::with_capacity(8);
    split_fields(line, b'\t', &mut f);
    let hash = text(f[0]).into_owned();
    if f.len() != 7 && f.len() != 5 {
        return Err(LineError::new(
            "wrong-column-count",
            format!(
                "{} tab-separated fields, expected 7 (or 5 in a test file)",
                f.len()
            ),
        )
        .with_id(&hash));
    }
    check_id(&hash)?;
    let media = match text(f[1]).as_ref() {
        "0" => Media::Photo,
        "1" => Media::Video,
        other => {
            return Err(LineError::new(
                "bad-field",
                format!("media type {other:?} is neither 0 nor 1"),
            )
            .with_id(&hash))
        }
    };
    let year = text(f[2]).parse::<i16>().ok();
    let place_node_id = text(f[3]).parse::<i64>().ok();
    let node_name = url_decode(&text(f[4])).into_owned();
    let coords = if f.len() == 7 {
        // longitude, then latitude
        coord_pair(f[6], f[5]).map_err(|e| e.with_id(&hash))?
    } else {
        None
    };
    Ok(LocaleRow {
        hash,
        media,
        year,
        place_node_id,
        node_name,
        coords,
    })
}

/// An id must be non-empty and free of whitespace and control characters.
pub(crate) fn check_id(id: &str) -> Result<(), LineError> {
    if id.is_empty() {
        return Err(LineError::new("bad-id", "empty id"));
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(LineError::new(
            "bad-id",
            format!("id {id:?} contains whitespace or control characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // No real line of the locale files is public: these follow the documented layout.
    #[test]
    fn parses_train_and_test_lines() {
        let r = parse_line(b"4e3a1b2c3d4e5f60718293a4b5c6d7e8\t0\t2011\t12591735\tGermany@Bavaria@Munich\t11.581981\t48.135125").unwrap();
        assert_eq!(r.hash, "4e3a1b2c3d4e5f60718293a4b5c6d7e8");
        assert_eq!(r.media, Media::Photo);
        assert_eq!(r.year, Some(2011));
        assert_eq!(r.place_node_id, Some(12591735));
        assert_eq!(r.country(), Some("Germany"));
        assert_eq!(r.coords, Some((48.135125, 11.581981)));
        let r = parse_line(b"a98a756c7036c8b8\t1\t2009\t7\tUnited+States@New+York@New+York\t\t")
            .unwrap();
        assert_eq!(r.media, Media::Video);
        assert_eq!(r.node_name, "United States@New York@New York");
        assert_eq!(r.coords, None);
        let r = parse_line(b"a98a756c7036c8b8\t0\t2009\t7\tFrance%27s@Paris").unwrap();
        assert_eq!(r.node_name, "France's@Paris");
        assert_eq!(r.coords, None);
    }

    #[test]
    fn rejects_bad_lines() {
        let e = parse_line(b"abc\t0\t2011").unwrap_err();
        assert_eq!(
            (e.reason, e.id.as_deref()),
            ("wrong-column-count", Some("abc"))
        );
        let e = parse_line(b"abc\t0\t2011\t1\tX@Y\tnorth\t48.1").unwrap_err();
        assert_eq!(e.reason, "bad-coordinate");
        let e = parse_line(b"abc\t0\t2011\t1\tX@Y\t\t48.1").unwrap_err();
        assert_eq!(e.reason, "bad-coordinate");
        let e = parse_line(b"abc\t7\t2011\t1\tX@Y\t1\t48.1").unwrap_err();
        assert_eq!(e.reason, "bad-field");
        let e = parse_line(b"\t0\t2011\t1\tX@Y\t1\t48.1").unwrap_err();
        assert_eq!(e.reason, "bad-id");
    }
}
