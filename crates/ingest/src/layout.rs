//! Where a row's image file is: a template over the id, and the check that it stays inside
//! the images root.

/// An image path template: literal text with `{id}` and `{id[a:b]}` (a byte slice of the id,
/// clamped to its length) placeholders.
#[derive(Debug, Clone)]
pub struct Layout {
    parts: Vec<Piece>,
}

#[derive(Debug, Clone)]
enum Piece {
    Lit(String),
    Id(Option<(usize, usize)>),
}

impl Layout {
    /// Parses a template or a preset name (`hash-path`, `flat`, `id`).
    pub fn parse(s: &str) -> Result<Layout, String> {
        let t = match s {
            "hash-path" => "{id[0:3]}/{id[3:6]}/{id}.jpg",
            "flat" => "{id}.jpg",
            "id" => "{id}",
            other => other,
        };
        let mut parts = Vec::new();
        let mut rest = t;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Piece::Lit(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("layout {s:?}: unclosed '{{'"))?
                + open;
            let inner = &rest[open + 1..close];
            if inner == "id" {
                parts.push(Piece::Id(None));
            } else if let Some(range) = inner.strip_prefix("id[").and_then(|r| r.strip_suffix(']'))
            {
                let (a, b) = range
                    .split_once(':')
                    .ok_or_else(|| format!("layout {s:?}: expected {{id[a:b]}}"))?;
                let a: usize = a
                    .trim()
                    .parse()
                    .map_err(|_| format!("layout {s:?}: bad slice start"))?;
                let b: usize = b
                    .trim()
                    .parse()
                    .map_err(|_| format!("layout {s:?}: bad slice end"))?;
                if b < a {
                    return Err(format!("layout {s:?}: slice end before start"));
                }
                parts.push(Piece::Id(Some((a, b))));
            } else {
                return Err(format!(
                    "layout {s:?}: unknown placeholder {{{inner}}} (use {{id}} or {{id[a:b]}})"
                ));
            }
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Piece::Lit(rest.to_owned()));
        }
        if !parts.iter().any(|p| matches!(p, Piece::Id(None))) {
            return Err(format!(
                "layout {s:?} must contain {{id}}, or two rows would share a file"
            ));
        }
        Ok(Layout { parts })
    }

    /// The image path of `id`.
    pub fn render(&self, id: &str) -> String {
        let mut out = String::with_capacity(id.len() * 2 + 8);
        for p in &self.parts {
            match p {
                Piece::Lit(l) => out.push_str(l),
                Piece::Id(None) => out.push_str(id),
                Piece::Id(Some((a, b))) => {
                    let a = (*a).min(id.len());
                    let b = (*b).min(id.len());
                    out.push_str(id.get(a..b).unwrap_or(""));
                }
            }
        }
        out
    }
}

/// Checks that a relative image path stays inside the images root: not absolute, no NUL, and
/// no `..` that climbs above the root. Returns the path with `/` separators.
pub fn check_inside_root(path: &str) -> Result<String, String> {
    if path.is_empty() {
        return Err("empty image path".into());
    }
    if path.contains('\0') {
        return Err(format!("image path {path:?} contains NUL"));
    }
    let p = path.replace('\\', "/");
    if p.starts_with('/') || p.as_bytes().get(1) == Some(&b':') {
        return Err(format!("image path {path:?} is absolute"));
    }
    let mut depth: i64 = 0;
    for comp in p.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("image path {path:?} leaves the images root"));
                }
            }
            _ => depth += 1,
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_presets() {
        let l = Layout::parse("hash-path").unwrap();
        assert_eq!(l.render("4e3a1b2c3d"), "4e3/a1b/4e3a1b2c3d.jpg");
        assert_eq!(l.render("ab"), "ab//ab.jpg");
        assert_eq!(Layout::parse("flat").unwrap().render("x"), "x.jpg");
        assert_eq!(
            Layout::parse("shard{id[0:2]}/{id}").unwrap().render("abc"),
            "shardab/abc"
        );
        assert!(Layout::parse("{id[0:2]}.jpg").is_err());
        assert!(Layout::parse("{name}").is_err());
    }

    #[test]
    fn refuses_escapes() {
        assert!(check_inside_root("a/b.jpg").is_ok());
        assert!(check_inside_root("a/../b.jpg").is_ok());
        assert!(check_inside_root("../b.jpg").is_err());
        assert!(check_inside_root("a/../../b.jpg").is_err());
        assert!(check_inside_root("/etc/passwd").is_err());
        assert!(check_inside_root("C:\\x.jpg").is_err());
        assert!(check_inside_root("..\\..\\x.jpg").is_err());
    }
}
