//! The map under the prediction plots: Natural Earth's 1:50m land, coastlines and country
//! borders (public domain; `assets/world-50m.bin`, made by `assets/make_world.py` from the
//! world-atlas package), compiled into the binary. No tiles, no network: the same picture
//! on every machine.
//!
//! A map covers an [`Extent`]: the whole world, or, when the photos it shows cover less than
//! a hemisphere, their bounding box with a margin, so photos of one region are not dots on a
//! world map. The projection is equirectangular with its standard parallel at the extent's
//! middle latitude (longitudes scaled by its cosine), so a zoomed map keeps its shapes.

use image::{Rgb, RgbImage};
use std::sync::OnceLock;

pub const SEA: Rgb<u8> = Rgb([214, 231, 245]);
pub const LAND: Rgb<u8> = Rgb([238, 236, 228]);
pub const COAST: Rgb<u8> = Rgb([120, 140, 160]);
pub const BORDER: Rgb<u8> = Rgb([165, 160, 150]);

/// The width of every map, in pixels; its height follows the extent's shape.
pub const WIDTH: u32 = 1200;

const DATA: &[u8] = include_bytes!("../assets/world-50m.bin");

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Coast,
    Border,
    Other,
}

/// The decoded map: each arc's kind and points (lon, lat), and the land polygons as rings
/// of points.
struct World {
    arcs: Vec<(Kind, Vec<[f64; 2]>)>,
    land: Vec<Vec<Vec<[f64; 2]>>>,
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn varint(&mut self) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let b = self.take(1)[0];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }
    fn zigzag(&mut self) -> i64 {
        let v = self.varint();
        (v >> 1) as i64 ^ -((v & 1) as i64)
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().expect("4 bytes"))
    }
    fn f64(&mut self) -> f64 {
        f64::from_le_bytes(self.take(8).try_into().expect("8 bytes"))
    }
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        // The file is part of the source tree (not input): a malformed one is a build defect.
        let mut r = Reader(DATA);
        assert_eq!(r.take(5), b"GEOW1", "assets/world-50m.bin: not a map file");
        let (sx, sy, tx, ty) = (r.f64(), r.f64(), r.f64(), r.f64());
        let arcs: Vec<(Kind, Vec<[f64; 2]>)> = (0..r.u32())
            .map(|_| {
                let kind = match r.take(1)[0] {
                    0 => Kind::Coast,
                    1 => Kind::Border,
                    _ => Kind::Other,
                };
                let (mut x, mut y) = (0i64, 0i64);
                let pts = (0..r.varint())
                    .map(|_| {
                        x += r.zigzag();
                        y += r.zigzag();
                        [x as f64 * sx + tx, y as f64 * sy + ty]
                    })
                    .collect();
                (kind, pts)
            })
            .collect();
        let land = (0..r.u32())
            .map(|_| {
                (0..r.varint())
                    .map(|_| {
                        let mut ring: Vec<[f64; 2]> = Vec::new();
                        for _ in 0..r.varint() {
                            let a = r.zigzag();
                            let (i, rev) = if a < 0 {
                                (!a as usize, true)
                            } else {
                                (a as usize, false)
                            };
                            let pts = &arcs[i].1;
                            // Consecutive arcs share their joining point: keep it once.
                            let skip = usize::from(!ring.is_empty());
                            if rev {
                                ring.extend(pts.iter().rev().skip(skip));
                            } else {
                                ring.extend(pts.iter().skip(skip));
                            }
                        }
                        ring
                    })
                    .collect()
            })
            .collect();
        World { arcs, land }
    })
}

/// The part of the world a map shows, in degrees, with its pixel size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Extent {
    pub lat: [f64; 2],
    pub lon: [f64; 2],
    pub width: u32,
    pub height: u32,
}

impl Extent {
    /// The whole world, 1200 x 600.
    pub fn world() -> Extent {
        Extent {
            lat: [-90.0, 90.0],
            lon: [-180.0, 180.0],
            width: WIDTH,
            height: WIDTH / 2,
        }
    }

    /// The extent that shows `points` (`[lat, lon]`): their bounding box with a margin (a
    /// tenth of its size, at least 2 degrees), widened to a pleasant shape (height between
    /// 0.45 and 0.8 of the width); the world when they span a hemisphere or more, or when
    /// there are none.
    pub fn around(points: impl IntoIterator<Item = [f64; 2]>) -> Extent {
        let (mut lat, mut lon) = ([f64::MAX, f64::MIN], [f64::MAX, f64::MIN]);
        let mut any = false;
        for p in points {
            if !(p[0].is_finite() && p[1].is_finite()) {
                continue;
            }
            any = true;
            lat = [lat[0].min(p[0]), lat[1].max(p[0])];
            lon = [lon[0].min(p[1]), lon[1].max(p[1])];
        }
        if !any || lon[1] - lon[0] >= 180.0 || lat[1] - lat[0] >= 90.0 {
            return Extent::world();
        }
        let pad = |r: [f64; 2]| ((r[1] - r[0]) * 0.1).max(2.0);
        let (plat, plon) = (pad(lat), pad(lon));
        let mut lat = [(lat[0] - plat).max(-90.0), (lat[1] + plat).min(90.0)];
        let mut lon = [(lon[0] - plon).max(-180.0), (lon[1] + plon).min(180.0)];
        // Widen the shorter side so height / width lies in [0.45, 0.8].
        let k = ((lat[0] + lat[1]) / 2.0).to_radians().cos().max(0.2);
        let (w, h) = ((lon[1] - lon[0]) * k, lat[1] - lat[0]);
        if h / w < 0.45 {
            let grow = (0.45 * w - h) / 2.0;
            lat = [(lat[0] - grow).max(-90.0), (lat[1] + grow).min(90.0)];
        } else if h / w > 0.8 {
            let grow = (h / 0.8 - w) / k / 2.0;
            lon = [(lon[0] - grow).max(-180.0), (lon[1] + grow).min(180.0)];
        }
        let ratio = (lat[1] - lat[0]) / ((lon[1] - lon[0]) * k);
        Extent {
            lat,
            lon,
            width: WIDTH,
            height: (WIDTH as f64 * ratio).round().clamp(300.0, 1000.0) as u32,
        }
    }

    /// Whether this is the whole world.
    pub fn is_world(&self) -> bool {
        self.lon == [-180.0, 180.0] && self.lat == [-90.0, 90.0]
    }

    /// The pixel of a location.
    pub fn pixel(&self, lat: f64, lon: f64) -> (f64, f64) {
        (
            (lon - self.lon[0]) / (self.lon[1] - self.lon[0]) * self.width as f64,
            (self.lat[1] - lat) / (self.lat[1] - self.lat[0]) * self.height as f64,
        )
    }
}

/// Where the segment from `a` to `b` (`[lon, lat]`) crosses the antimeridian, when it
/// does: Natural Earth's lines and rings that cross it go from near 180 to near -180, and
/// drawn as they are would run across the whole map. Returns the map edge `a` leaves by
/// (180 or -180) and the latitude of the crossing (along the short way round). Segments
/// along the map's edge itself (Antarctica's ring closes along the South Pole from 180 to
/// -180) do not cross.
fn crossing(a: [f64; 2], b: [f64; 2]) -> Option<(f64, f64)> {
    let d = b[0] - a[0];
    if d.abs() <= 180.0 || along_pole(a, b) {
        return None;
    }
    // The short way: `b` shifted by 360 degrees toward `a`.
    let (edge, b_lon) = if d < 0.0 {
        (180.0, b[0] + 360.0)
    } else {
        (-180.0, b[0] - 360.0)
    };
    // `a` on the edge itself (-180 to 180 is a step along it): it crosses where it is.
    let t = if b_lon == a[0] {
        0.0
    } else {
        ((edge - a[0]) / (b_lon - a[0])).clamp(0.0, 1.0)
    };
    Some((edge, a[1] + t * (b[1] - a[1])))
}

/// Whether the segment runs along a pole (the closing edge of a ring that encloses it).
fn along_pole(a: [f64; 2], b: [f64; 2]) -> bool {
    a[1] == b[1] && a[1].abs() > 89.9
}

/// The segment as one or two that stay on the map (for lines); none along a pole.
fn line_parts(a: [f64; 2], b: [f64; 2]) -> Vec<([f64; 2], [f64; 2])> {
    if along_pole(a, b) {
        return Vec::new();
    }
    match crossing(a, b) {
        None => vec![(a, b)],
        Some((e, lat)) => vec![(a, [e, lat]), ([-e, lat], b)],
    }
}

/// The segment as edges of a ring to fill: cut at the antimeridian, and joined around the
/// map's edge through the nearer pole (along one side, across, back along the other). The
/// two crossings of a ring that straddles the antimeridian (Chukotka's, Fiji's) lie in one
/// hemisphere, so their detours cancel but for the stretch of edge between them, which is
/// what closes each side's part of the ring; a ring that crosses once encloses its pole
/// (Antarctica's), and the detour through that pole closes it.
fn ring_parts(a: [f64; 2], b: [f64; 2]) -> Vec<([f64; 2], [f64; 2])> {
    match crossing(a, b) {
        None => vec![(a, b)],
        Some((e, lat)) => {
            let pole = if lat < 0.0 { -90.0 } else { 90.0 };
            vec![
                (a, [e, lat]),
                ([e, lat], [e, pole]),
                ([e, pole], [-e, pole]),
                ([-e, pole], [-e, lat]),
                ([-e, lat], b),
            ]
        }
    }
}

/// The map of `extent`: sea, land, coastlines and borders.
pub fn render(extent: &Extent) -> RgbImage {
    let w = world();
    let (wd, ht) = (extent.width, extent.height);
    let mut img = RgbImage::from_pixel(wd, ht, SEA);
    // Land: each polygon's rings filled by the even-odd rule, row by row.
    for poly in &w.land {
        // Edges in pixels, cut at the antimeridian (see `ring_parts`).
        let px = |p: [f64; 2]| extent.pixel(p[1], p[0]);
        let edges: Vec<((f64, f64), (f64, f64))> = poly
            .iter()
            .flat_map(|r| r.iter().zip(r.iter().cycle().skip(1)))
            .flat_map(|(a, b)| ring_parts(*a, *b))
            .map(|(a, b)| (px(a), px(b)))
            .collect();
        let (y0, y1) = edges
            .iter()
            .flat_map(|(a, b)| [a.1, b.1])
            .fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
        let (y0, y1) = (
            y0.max(0.0).floor() as i64,
            y1.min(ht as f64 - 1.0).ceil() as i64,
        );
        let mut xs: Vec<f64> = Vec::new();
        for y in y0..=y1 {
            let yc = y as f64 + 0.5;
            xs.clear();
            for (a, b) in &edges {
                if (a.1 <= yc) != (b.1 <= yc) {
                    xs.push(a.0 + (yc - a.1) / (b.1 - a.1) * (b.0 - a.0));
                }
            }
            xs.sort_by(f64::total_cmp);
            for pair in xs.chunks_exact(2) {
                let x0 = (pair[0] - 0.5).ceil().max(0.0) as u32;
                let x1 = ((pair[1] - 0.5).floor().min(wd as f64 - 1.0)).max(-1.0) as i64;
                for x in x0 as i64..=x1 {
                    img.put_pixel(x as u32, y as u32, LAND);
                }
            }
        }
    }
    // Borders, then coastlines over them; thicker lines on a zoomed map.
    let width = if extent.is_world() { 1.0 } else { 1.6 };
    for kind in [Kind::Border, Kind::Coast] {
        let colour = if kind == Kind::Coast { COAST } else { BORDER };
        for (k, pts) in &w.arcs {
            if *k != kind {
                continue;
            }
            for seg in pts.windows(2) {
                for (a, b) in line_parts(seg[0], seg[1]) {
                    let (a, b) = (extent.pixel(a[1], a[0]), extent.pixel(b[1], b[0]));
                    line(&mut img, a, b, colour, width);
                }
            }
        }
    }
    img
}

/// An anti-aliased line of `width` pixels, blended over the image (clipped to it).
fn line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), c: Rgb<u8>, width: f64) {
    let (w, h) = (img.width() as f64, img.height() as f64);
    // A segment wholly beyond one edge of the map (most of them, on a zoomed map) draws
    // nothing.
    let m = 2.0;
    if (a.0 < -m && b.0 < -m)
        || (a.1 < -m && b.1 < -m)
        || (a.0 > w + m && b.0 > w + m)
        || (a.1 > h + m && b.1 > h + m)
    {
        return;
    }
    let len = ((b.0 - a.0).hypot(b.1 - a.1)).max(1e-9);
    let steps = (len * 2.0).ceil() as usize;
    let r = width / 2.0;
    for s in 0..=steps {
        let t = s as f64 / steps as f64;
        let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
        let (xi, yi) = (x.floor() as i64, y.floor() as i64);
        for py in yi - 1..=yi + 1 {
            for px in xi - 1..=xi + 1 {
                if px < 0 || py < 0 || px >= w as i64 || py >= h as i64 {
                    continue;
                }
                let d = (px as f64 + 0.5 - x).hypot(py as f64 + 0.5 - y);
                let cover = (r + 0.5 - d).clamp(0.0, 1.0);
                if cover <= 0.0 {
                    continue;
                }
                let p = img.get_pixel_mut(px as u32, py as u32);
                for i in 0..3 {
                    let blended = p[i] as f64 * (1.0 - cover) + c[i] as f64 * cover;
                    // Lines are darker than land and sea: overlapping samples keep the darkest.
                    p[i] = p[i].min(blended.round() as u8);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(m: &RgbImage, e: &Extent, lat: f64, lon: f64) -> Rgb<u8> {
        let (x, y) = e.pixel(lat, lon);
        *m.get_pixel(x as u32, y as u32)
    }

    #[test]
    fn land_sea_coasts_and_borders_where_they_are() {
        let e = Extent::world();
        let m = render(&e);
        if let Some(d) = std::env::var_os("GEOLOC_MAP_OUT") {
            m.save(std::path::Path::new(&d).join("world.png")).unwrap();
            let z = Extent::around([
                [48.8, 2.3],
                [52.5, 13.4],
                [41.9, 12.5],
                [49.3, -123.1],
                [45.5, -73.6],
            ]);
            render(&z)
                .save(std::path::Path::new(&d).join("zoom.png"))
                .unwrap();
            let z = Extent::around([[48.8, 2.3], [52.5, 13.4], [41.9, 12.5], [40.4, -3.7]]);
            render(&z)
                .save(std::path::Path::new(&d).join("europe.png"))
                .unwrap();
        }
        assert_eq!(at(&m, &e, 48.0, 2.5), LAND); // France, inland
        assert_eq!(at(&m, &e, 0.0, 20.0), LAND); // the Congo basin
        assert_eq!(at(&m, &e, -10.0, -55.0), LAND); // Brazil
        assert_eq!(at(&m, &e, -80.0, 0.0), LAND); // Antarctica
        assert_eq!(at(&m, &e, 30.0, -40.0), SEA); // mid-Atlantic
        assert_eq!(at(&m, &e, -60.0, -140.0), SEA); // Southern Ocean
        assert_eq!(at(&m, &e, 35.0, 18.0), SEA); // the Ionian Sea
        let count = |c: Rgb<u8>| m.pixels().filter(|p| **p == c).count();
        let (land, sea) = (count(LAND), count(SEA));
        // Land is about 29% of the Earth's surface, more of an equirectangular map
        // (Antarctica stretched): between 24% and 40% of the land and sea pixels (coastlines take
        // their share).
        let share = land as f64 / (land + sea) as f64;
        assert!((0.24..0.40).contains(&share), "land share {share}");
        // Lines of both kinds are drawn.
        let lines = m.pixels().filter(|p| **p != LAND && **p != SEA).count();
        assert!(lines > 20_000, "{lines} line pixels");
    }

    #[test]
    fn extents_zoom_to_regions_and_keep_the_world_for_spread_photos() {
        // Europe and Canada (the demo's photos): less than a hemisphere, zoomed.
        let e = Extent::around([
            [48.8, 2.3],
            [52.5, 13.4],
            [41.9, 12.5],
            [49.3, -123.1],
            [45.5, -73.6],
        ]);
        assert!(!e.is_world());
        assert!(e.lon[0] < -123.1 && e.lon[1] > 13.4 && e.lat[0] < 41.9 && e.lat[1] > 52.5);
        assert!(e.lon[1] - e.lon[0] < 180.0, "{e:?}");
        let (x, y) = e.pixel(48.8, 2.3);
        assert!((0.0..e.width as f64).contains(&x) && (0.0..e.height as f64).contains(&y));
        // One city: a region of at least 4 degrees around it.
        let e = Extent::around([[48.85, 2.35]]);
        assert!(
            e.lat[1] - e.lat[0] >= 4.0 && e.lon[1] - e.lon[0] >= 4.0,
            "{e:?}"
        );
        let m = render(&e);
        assert_eq!(at(&m, &e, 48.0, 2.5), LAND);
        assert_eq!(at(&m, &e, 50.2, -1.0), SEA); // the Channel
                                                 // Photos on several continents: the world.
        assert!(Extent::around([[48.8, 2.3], [-33.9, 151.2], [40.7, -74.0]]).is_world());
        assert!(Extent::around([]).is_world());
    }
}
