//! Small text helpers of the line formats: URL decoding, line chunks, field splitting.

use std::borrow::Cow;
use std::io::{self, Read};

/// Decodes `application/x-www-form-urlencoded` text as YFCC100M and MediaEval write it:
/// `+` is a space, `%XX` a byte; invalid UTF-8 becomes U+FFFD. Borrows when nothing to do.
pub fn url_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'+' || b == b'%') {
        return Cow::Borrowed(s);
    }
    let plus = s.replace('+', " ");
    let decoded = percent_encoding::percent_decode_str(&plus).decode_utf8_lossy();
    Cow::Owned(decoded.into_owned())
}

/// A block of whole lines and the 1-based number of its first line.
#[derive(Debug)]
pub struct Chunk {
    pub data: Vec<u8>,
    pub first_line: u64,
}

impl Chunk {
    /// Iterates `(line_number, line)` over the chunk's lines, without their `\n` or `\r\n`.
    pub fn lines(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let mut n = self.first_line;
        self.data
            .split(|&b| b == b'\n')
            .map(move |l| {
                let line = l.strip_suffix(b"\r").unwrap_or(l);
                let num = n;
                n += 1;
                (num, line)
            })
            // Empty lines are skipped (they keep their number); this also drops the empty
            // tail that split() yields after a final newline.
            .filter(|(_, l)| !l.is_empty())
    }
}

/// Reads a stream as chunks of about `size` bytes, each ending at a line boundary.
pub struct LineChunks<R> {
    r: R,
    size: usize,
    carry: Vec<u8>,
    next_line: u64,
    eof: bool,
}

impl<R: Read> LineChunks<R> {
    pub fn new(r: R, size: usize) -> Self {
        LineChunks {
            r,
            size,
            carry: Vec::new(),
            next_line: 1,
            eof: false,
        }
    }

    /// The next chunk, or `None` at the end.
    pub fn next_chunk(&mut self) -> io::Result<Option<Chunk>> {
        if self.eof && self.carry.is_empty() {
            return Ok(None);
        }
        let mut buf = std::mem::take(&mut self.carry);
        let start = buf.len();
        buf.resize(start.max(self.size), 0);
        let mut filled = start;
        while !self.eof && filled < buf.len() {
            let n = self.r.read(&mut buf[filled..])?;
            if n == 0 {
                self.eof = true;
            }
            filled += n;
        }
        buf.truncate(filled);
        if buf.is_empty() {
            return Ok(None);
        }
        let cut = if self.eof {
            buf.len()
        } else {
            match memchr::memrchr(b'\n', &buf) {
                Some(i) => i + 1,
                // A line longer than the chunk: grow until it ends.
                None => {
                    self.carry = buf;
                    self.size *= 2;
                    return self.next_chunk();
                }
            }
        };
        self.carry = buf[cut..].to_vec();
        buf.truncate(cut);
        let lines =
            memchr::memchr_iter(b'\n', &buf).count() as u64 + u64::from(!buf.ends_with(b"\n"));
        let chunk = Chunk {
            data: buf,
            first_line: self.next_line,
        };
        self.next_line += lines;
        Ok(Some(chunk))
    }
}

/// Splits a line on a byte separator into at most `max + 1` fields (so a count above `max`
/// is detectable without splitting the whole line).
pub fn split_fields<'a>(line: &'a [u8], sep: u8, out: &mut Vec<&'a [u8]>) {
    out.clear();
    let mut start = 0;
    for i in memchr::memchr_iter(sep, line) {
        out.push(&line[start..i]);
        start = i + 1;
    }
    out.push(&line[start..]);
}

/// Parses an optional float field: empty is `None`, anything unparsable is an error with the
/// text.
pub fn opt_f64(field: &[u8]) -> Result<Option<f64>, String> {
    let s = std::str::from_utf8(field)
        .map_err(|_| "not UTF-8".to_string())?
        .trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<f64>()
        .map(Some)
        .map_err(|_| format!("{s:?} is not a number"))
}

/// A field as UTF-8 text (lossy), trimmed of surrounding spaces.
pub fn text(field: &[u8]) -> Cow<'_, str> {
    let s = String::from_utf8_lossy(field);
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(b.trim()),
        Cow::Owned(o) => Cow::Owned(o.trim().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes() {
        assert_eq!(
            url_decode("Sunlight+through+the+morning+fog"),
            "Sunlight through the morning fog"
        );
        assert_eq!(url_decode("b%26w"), "b&w");
        assert_eq!(url_decode("O%27Shannessy%2C+3"), "O'Shannessy, 3");
        assert_eq!(url_decode("plain"), "plain");
    }

    #[test]
    fn chunks_keep_line_numbers() {
        let text = b"a\nbb\n\nccc\r\ndddd\neeeee";
        for size in [1, 3, 7, 100] {
            let mut r = LineChunks::new(&text[..], size);
            let mut got = Vec::new();
            while let Some(c) = r.next_chunk().unwrap() {
                for (n, l) in c.lines() {
                    got.push((n, String::from_utf8(l.to_vec()).unwrap()));
                }
            }
            let want: Vec<(u64, String)> =
                vec![(1, "a"), (2, "bb"), (4, "ccc"), (5, "dddd"), (6, "eeeee")]
                    .into_iter()
                    .map(|(n, s)| (n, s.to_string()))
                    .collect();
            assert_eq!(got, want, "chunk size {size}");
        }
    }
}
