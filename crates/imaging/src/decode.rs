//! Bytes to an upright 8-bit RGB image, or a typed reason why not.
//!
//! JPEG goes through zune-jpeg (the `image` crate's own JPEG decoder), or through
//! jpeg-decoder's DCT-domain scaling when the caller's target is at most half the source in
//! both directions (what libjpeg-turbo's `scale_denom` and Pillow's `draft()` do: the inverse
//! DCT is computed at 1/2, 1/4 or 1/8 size, so a 2048-pixel photo bound for 224 never exists
//! at full size). PNG, GIF, WebP, BMP and TIFF go through the `image` crate. HEIF/HEIC goes
//! through libheif, loaded at run time ([`crate::heif`]), and so does AVIF where that
//! libheif has an AV1 decoder.
//!
//! Limits are checked on the header, before any pixel is allocated.

use crate::orient::{orientation, Orientation};
use image::{ImageDecoder, ImageFormat, RgbImage};
use std::io::Cursor;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

/// Decompression-bomb limits, checked on the header before decoding.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest width x height accepted (Pillow's error threshold is 178,956,970).
    pub max_pixels: u64,
    /// Largest side accepted, in pixels.
    pub max_side: u32,
    /// Largest allocation a decoder may make, in bytes.
    pub max_alloc_bytes: u64,
    /// Largest file read, in bytes.
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pixels: 178_956_970,
            max_side: 65_500,
            max_alloc_bytes: 1 << 30,
            max_file_bytes: 256 << 20,
        }
    }
}

/// What to do with a photo that has no colour channels.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Greyscale {
    /// Refuse it (the paper discarded greyscale photos).
    #[default]
    Reject,
    /// Replicate the grey channel into R, G and B.
    Convert,
}

/// How to decode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    pub limits: Limits,
    pub greyscale: Greyscale,
}

/// The container format, as sniffed from the first bytes (never from the file name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    Gif,
    WebP,
    Bmp,
    Tiff,
    /// HEIF/HEIC: decoded by libheif ([`crate::heif`]).
    Heif,
    /// AVIF (AV1 in a HEIF container): decoded by libheif where the loaded build has an AV1
    /// decoder (Debian's libheif1 has; the fetched pillow-heif build has not, and says so).
    Avif,
}

impl Format {
    /// Lower-case name, as recorded in reject details.
    pub fn name(self) -> &'static str {
        match self {
            Format::Jpeg => "jpeg",
            Format::Png => "png",
            Format::Gif => "gif",
            Format::WebP => "webp",
            Format::Bmp => "bmp",
            Format::Tiff => "tiff",
            Format::Heif => "heif",
            Format::Avif => "avif",
        }
    }
}

/// Why a file gave no image. [`DecodeError::reason`] is the stable code written to rejects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the file is empty")]
    Empty,
    #[error("unsupported format: {0}")]
    Unsupported(String),
    #[error("{width}x{height} exceeds the limits ({limit})")]
    TooLarge {
        width: u64,
        height: u64,
        limit: String,
    },
    #[error("the file is truncated: {0}")]
    Truncated(String),
    #[error("{format}: {msg}")]
    Corrupt { format: &'static str, msg: String },
    #[error("greyscale image ({0}) and the policy is to reject greyscale")]
    Greyscale(&'static str),
}

impl DecodeError {
    /// The kebab-case reason code of rejects rows.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty-file",
            DecodeError::Unsupported(_) => "unsupported-format",
            DecodeError::TooLarge { .. } => "too-large",
            DecodeError::Truncated(_) => "truncated-image",
            DecodeError::Corrupt { .. } => "corrupt-image",
            DecodeError::Greyscale(_) => "greyscale",
        }
    }
}

/// What decoding found and did, besides the pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeInfo {
    pub format: Format,
    /// Stored size (before orientation and before DCT scaling).
    pub source_width: u32,
    pub source_height: u32,
    /// The EXIF orientation applied (`Normal` = none).
    pub orientation: Orientation,
    /// The DCT scale denominator used (1 = full size, 2, 4 or 8).
    pub dct_scale: u8,
    /// The source had no colour channels (and the policy converted it).
    pub was_greyscale: bool,
}

/// A decoded photo: upright, 8-bit RGB.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub image: RgbImage,
    pub info: DecodeInfo,
}

/// Sniffs the container format from the first bytes.
pub fn sniff(bytes: &[u8]) -> Result<Format, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        let brand = String::from_utf8_lossy(&bytes[8..12]).into_owned();
        let kind = match brand.as_str() {
            "heic" | "heix" | "heim" | "heis" | "hevc" | "hevx" | "mif1" | "msf1" => {
                return Ok(Format::Heif)
            }
            "avif" | "avis" => return Ok(Format::Avif),
            _ => "iso-bmff",
        };
        return Err(DecodeError::Unsupported(format!(
            "{kind} (brand `{brand}`): not an image format this reader knows"
        )));
    }
    match image::guess_format(bytes) {
        Ok(ImageFormat::Jpeg) => Ok(Format::Jpeg),
        Ok(ImageFormat::Png) => Ok(Format::Png),
        Ok(ImageFormat::Gif) => Ok(Format::Gif),
        Ok(ImageFormat::WebP) => Ok(Format::WebP),
        Ok(ImageFormat::Bmp) => Ok(Format::Bmp),
        Ok(ImageFormat::Tiff) => Ok(Format::Tiff),
        Ok(other) => Err(DecodeError::Unsupported(
            format!("{other:?}").to_lowercase(),
        )),
        Err(_) => Err(DecodeError::Unsupported(format!(
            "unrecognised content (first bytes {})",
            bytes
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ))),
    }
}

pub(crate) fn check_limits(w: u64, h: u64, l: &Limits) -> Result<(), DecodeError> {
    let too = |limit: String| DecodeError::TooLarge {
        width: w,
        height: h,
        limit,
    };
    if w == 0 || h == 0 {
        return Err(DecodeError::Corrupt {
            format: "header",
            msg: format!("zero-sized image {w}x{h}"),
        });
    }
    if w > l.max_side as u64 || h > l.max_side as u64 {
        return Err(too(format!("max side {}", l.max_side)));
    }
    if w * h > l.max_pixels {
        return Err(too(format!("max {} pixels", l.max_pixels)));
    }
    if w * h * 4 > l.max_alloc_bytes {
        return Err(too(format!("max {} bytes allocated", l.max_alloc_bytes)));
    }
    Ok(())
}

/// Decodes `bytes` into an upright RGB image.
///
/// `want` is the smallest size the caller needs, given the upright size: when the source
/// is a JPEG at least twice as large in both directions, it is decoded at a reduced DCT
/// scale, the largest reduction that keeps the result at least `want`. `None` always
/// decodes at full size.
pub fn decode(
    bytes: &[u8],
    opts: &DecodeOptions,
    want: Option<&dyn Fn(u32, u32) -> (u32, u32)>,
) -> Result<Decoded, DecodeError> {
    let format = sniff(bytes)?;
    if bytes.len() as u64 > opts.limits.max_file_bytes {
        return Err(DecodeError::TooLarge {
            width: 0,
            height: 0,
            limit: format!(
                "file of {} bytes, max {}",
                bytes.len(),
                opts.limits.max_file_bytes
            ),
        });
    }
    // libheif applies a HEIF file's own transformations (irot, imir) while decoding; its
    // EXIF orientation, where present, must not be applied a second time.
    let orient = match format {
        Format::Heif | Format::Avif => Orientation::Normal,
        _ => orientation(bytes),
    };
    let mut d = match format {
        Format::Jpeg => decode_jpeg(bytes, opts, orient, want)?,
        Format::Heif | Format::Avif => crate::heif::decode(bytes, format, &opts.limits)?,
        _ => decode_other(bytes, format, opts)?,
    };
    // The decoders refuse greyscale on the header where they can; this catches the files
    // whose colour type only the decoded result tells (a JPEG whose header only
    // jpeg-decoder could read).
    if d.info.was_greyscale && opts.greyscale == Greyscale::Reject {
        return Err(DecodeError::Greyscale("decoded as one channel"));
    }
    d.info.orientation = orient;
    d.image = crate::orient::apply(d.image, orient);
    Ok(d)
}

fn jpeg_error(msg: String) -> DecodeError {
    let m = msg.to_lowercase();
    if m.contains("eof")
        || m.contains("end of")
        || m.contains("truncat")
        || m.contains("no more bytes")
        || m.contains("exhausted")
        || m.contains("not enough bytes")
        || m.contains("failed to fill whole buffer")
    {
        DecodeError::Truncated(msg)
    } else {
        DecodeError::Corrupt {
            format: "jpeg",
            msg,
        }
    }
}

fn zune_options(l: &Limits, strict: bool) -> DecoderOptions {
    DecoderOptions::default()
        .set_max_width(l.max_side as usize)
        .set_max_height(l.max_side as usize)
        .set_strict_mode(strict)
        .jpeg_set_out_colorspace(ColorSpace::RGB)
}

/// JPEG acceptance follows two decoders: a file is accepted when zune-jpeg decodes it in
/// strict mode, or jpeg-decoder decodes it. zune-jpeg's lenient mode alone would fill
/// damaged scans with grey; jpeg-decoder alone refuses some harmless oddities (extra bytes
/// between headers, short APP14). Over the 170 JPEG/MPO files of the robustness set (with
/// greyscale converted) this rule agrees with libjpeg-turbo (Pillow) on all but eight: seven
/// it refuses where libjpeg-turbo decodes through the damage (broken scans, an undefined
/// quantisation table, an invalid Adobe transform), one it accepts that libjpeg-turbo
/// refuses (see the robustness table).
fn decode_jpeg(
    bytes: &[u8],
    opts: &DecodeOptions,
    orient: Orientation,
    want: Option<&dyn Fn(u32, u32) -> (u32, u32)>,
) -> Result<Decoded, DecodeError> {
    let l = &opts.limits;
    // Header facts from the lenient parser (strict refuses harmless header oddities).
    let mut head =
        zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), zune_options(l, false));
    let (w, h, colour) = match head.decode_headers() {
        Ok(()) => {
            let info = head.info().ok_or_else(|| DecodeError::Corrupt {
                format: "jpeg",
                msg: "no frame header".into(),
            })?;
            (
                info.width as u32,
                info.height as u32,
                head.input_colorspace(),
            )
        }
        Err(zerr) => {
            let mut jd = jpeg_decoder::Decoder::new(Cursor::new(bytes));
            match jd.read_info().ok().and(jd.info()) {
                Some(i) => (i.width as u32, i.height as u32, None),
                None => return Err(jpeg_error(format!("{zerr:?}"))),
            }
        }
    };
    check_limits(w as u64, h as u64, l)?;
    let grey = matches!(colour, Some(ColorSpace::Luma | ColorSpace::LumaA));
    if grey && opts.greyscale == Greyscale::Reject {
        return Err(DecodeError::Greyscale("jpeg, 1 component"));
    }
    let decoded = |image: RgbImage, dct_scale: u8, grey: bool| Decoded {
        image,
        info: DecodeInfo {
            format: Format::Jpeg,
            source_width: w,
            source_height: h,
            orientation: Orientation::Normal,
            dct_scale,
            was_greyscale: grey,
        },
    };
    // Reduced-scale decode (jpeg-decoder): only for the common colour spaces, whose output
    // needs no conversion of ours.
    let common = matches!(
        colour,
        Some(ColorSpace::YCbCr | ColorSpace::RGB | ColorSpace::Luma)
    );
    if let (Some(want), true) = (want, common) {
        let (uw, uh) = if orient.swaps_axes() { (h, w) } else { (w, h) };
        let (tw, th) = want(uw, uh);
        let (tw, th) = if orient.swaps_axes() {
            (th, tw)
        } else {
            (tw, th)
        };
        let denom = dct_denominator(w, h, tw, th);
        if denom > 1 {
            if let Ok(Some((img, scale, g))) = decode_jpeg_decoder(bytes, l, Some(denom)) {
                return Ok(decoded(img, scale, g));
            }
        }
    }
    let mut strict =
        zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), zune_options(l, true));
    let zerr = match strict.decode() {
        Ok(pixels) => {
            let (sw, sh) = strict
                .dimensions()
                .map(|(a, b)| (a as u32, b as u32))
                .unwrap_or((w, h));
            return RgbImage::from_raw(sw, sh, pixels)
                .map(|img| decoded(img, 1, grey))
                .ok_or_else(|| DecodeError::Corrupt {
                    format: "jpeg",
                    msg: "decoder returned a short buffer".into(),
                });
        }
        Err(e) => format!("{e:?}"),
    };
    match decode_jpeg_decoder(bytes, l, None) {
        Ok(Some((img, scale, g))) => Ok(decoded(img, scale, g)),
        Ok(None) => Err(jpeg_error(zerr)),
        Err(jerr) => {
            // Name the more telling of the two verdicts: truncation wins.
            let z = jpeg_error(zerr);
            match (&z, jpeg_error(jerr)) {
                (DecodeError::Truncated(_), _) => Err(z),
                (_, t @ DecodeError::Truncated(_)) => Err(t),
                _ => Err(z),
            }
        }
    }
}

/// jpeg-decoder at full size (`denom` None) or at a reduced DCT scale. `Ok(None)` when its
/// output is a pixel format this path does not convert (CMYK, 16-bit).
fn decode_jpeg_decoder(
    bytes: &[u8],
    l: &Limits,
    denom: Option<u8>,
) -> Result<Option<(RgbImage, u8, bool)>, String> {
    let mut dec = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    dec.set_max_decoding_buffer_size(l.max_alloc_bytes.min(usize::MAX as u64) as usize);
    dec.read_info().map_err(|e| e.to_string())?;
    let info = dec.info().ok_or("no frame header")?;
    let (w, h) = (info.width as u32, info.height as u32);
    if let Some(d) = denom {
        let (Ok(rw), Ok(rh)) = (
            u16::try_from(w.div_ceil(d as u32)),
            u16::try_from(h.div_ceil(d as u32)),
        ) else {
            return Ok(None);
        };
        dec.scale(rw, rh).map_err(|e| e.to_string())?;
    }
    let pixels = dec.decode().map_err(|e| e.to_string())?;
    let info = dec.info().ok_or("no frame header")?;
    let (sw, sh) = (info.width as u32, info.height as u32);
    let (image, grey) = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => (RgbImage::from_raw(sw, sh, pixels), false),
        jpeg_decoder::PixelFormat::L8 => {
            let rgb = pixels.iter().flat_map(|&g| [g, g, g]).collect();
            (RgbImage::from_raw(sw, sh, rgb), true)
        }
        _ => return Ok(None),
    };
    let scale = (w / sw.max(1)).clamp(1, 8) as u8;
    Ok(image.map(|i| (i, scale, grey)))
}

/// The canvas a GIF's first frame needs (its offset plus its size), which may be far larger
/// than the logical screen: Pillow's decompression-bomb test file declares a 32x32 screen
/// and a 65535x65535 frame. `None` when the blocks cannot be walked (the decoder will say).
pub fn gif_first_frame_extent(bytes: &[u8]) -> Option<(u64, u64)> {
    let u16le = |i: usize| -> Option<u64> {
        Some(u16::from_le_bytes([*bytes.get(i)?, *bytes.get(i + 1)?]) as u64)
    };
    let flags = *bytes.get(10)?;
    let mut i = 13;
    if flags & 0x80 != 0 {
        i += 3 << ((flags & 7) + 1);
    }
    loop {
        match *bytes.get(i)? {
            0x21 => {
                // Extension: label, then sub-blocks up to a zero length.
                i += 2;
                loop {
                    let n = *bytes.get(i)? as usize;
                    i += 1 + n;
                    if n == 0 {
                        break;
                    }
                }
            }
            0x2C => {
                let (left, top, w, h) =
                    (u16le(i + 1)?, u16le(i + 3)?, u16le(i + 5)?, u16le(i + 7)?);
                return Some((left + w, top + h));
            }
            _ => return None,
        }
    }
}

/// The DCT scale denominator Pillow's `draft()` would pick: the largest of 8, 4, 2 that
/// divides both sides at least that many times over the target.
pub fn dct_denominator(w: u32, h: u32, tw: u32, th: u32) -> u8 {
    let scale = (w / tw.max(1)).min(h / th.max(1));
    [8u8, 4, 2]
        .into_iter()
        .find(|&d| scale >= d as u32)
        .unwrap_or(1)
}

fn decode_other(
    bytes: &[u8],
    format: Format,
    opts: &DecodeOptions,
) -> Result<Decoded, DecodeError> {
    let fmt = match format {
        Format::Png => ImageFormat::Png,
        Format::Gif => ImageFormat::Gif,
        Format::WebP => ImageFormat::WebP,
        Format::Bmp => ImageFormat::Bmp,
        Format::Tiff => ImageFormat::Tiff,
        Format::Jpeg => ImageFormat::Jpeg,
        Format::Heif | Format::Avif => return crate::heif::decode(bytes, format, &opts.limits),
    };
    let l = &opts.limits;
    if format == Format::Gif {
        if let Some((w, h)) = gif_first_frame_extent(bytes) {
            check_limits(w.max(1), h.max(1), l)?;
        }
    }
    let corrupt = |e: image::ImageError| match e {
        image::ImageError::Limits(e) => DecodeError::TooLarge {
            width: 0,
            height: 0,
            limit: e.to_string(),
        },
        image::ImageError::Unsupported(e) => {
            DecodeError::Unsupported(format!("{}: {e}", format.name()))
        }
        image::ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            DecodeError::Truncated(e.to_string())
        }
        other => {
            let msg = other.to_string();
            if msg.to_lowercase().contains("eof") || msg.to_lowercase().contains("unexpected end") {
                DecodeError::Truncated(msg)
            } else {
                DecodeError::Corrupt {
                    format: format.name(),
                    msg,
                }
            }
        }
    };
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(l.max_side);
    limits.max_image_height = Some(l.max_side);
    limits.max_alloc = Some(l.max_alloc_bytes);
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), fmt);
    reader.limits(limits);
    let mut dec = reader.into_decoder().map_err(corrupt)?;
    let (w, h) = dec.dimensions();
    check_limits(w as u64, h as u64, l)?;
    let colour = dec.color_type();
    let grey = !colour.has_color();
    if grey && opts.greyscale == Greyscale::Reject {
        return Err(DecodeError::Greyscale(grey_name(colour)));
    }
    // Orientation is read from the bytes by the caller; keep the decoder from applying it.
    let _ = dec.orientation();
    let img = image::DynamicImage::from_decoder(dec).map_err(corrupt)?;
    Ok(Decoded {
        image: img.into_rgb8(),
        info: DecodeInfo {
            format,
            source_width: w,
            source_height: h,
            orientation: Orientation::Normal,
            dct_scale: 1,
            was_greyscale: grey,
        },
    })
}

fn grey_name(c: image::ColorType) -> &'static str {
    match c {
        image::ColorType::L8 => "8-bit grey",
        image::ColorType::La8 => "8-bit grey with alpha",
        image::ColorType::L16 => "16-bit grey",
        image::ColorType::La16 => "16-bit grey with alpha",
        _ => "grey",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A greyscale JPEG with a short APP14 segment: zune-jpeg refuses its header, so only
    /// jpeg-decoder reads it, and only its decoded result says it is greyscale.
    fn grey_jpeg_with_short_app14() -> Vec<u8> {
        let img = crate::synth::photo(3, 40.0, -3.7, 64, 48);
        let grey = image::DynamicImage::ImageRgb8(img).into_luma8();
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&grey)
            .unwrap();
        let mut bytes = out[..2].to_vec();
        bytes.extend_from_slice(&[0xFF, 0xEE, 0x00, 0x07]);
        bytes.extend_from_slice(b"Adobe");
        bytes.extend_from_slice(&out[2..]);
        bytes
    }

    #[test]
    fn greyscale_found_only_after_decoding_is_still_refused() {
        let bytes = grey_jpeg_with_short_app14();
        let mut head = zune_jpeg::JpegDecoder::new_with_options(
            ZCursor::new(&bytes[..]),
            zune_options(&Limits::default(), false),
        );
        assert!(
            head.decode_headers().is_err(),
            "the case needs zune to refuse the header"
        );
        let e = decode(&bytes, &DecodeOptions::default(), None).unwrap_err();
        assert_eq!(e.reason(), "greyscale");
        let convert = DecodeOptions {
            greyscale: Greyscale::Convert,
            ..Default::default()
        };
        let d = decode(&bytes, &convert, None).unwrap();
        assert!(d.info.was_greyscale);
        assert_eq!(d.image.dimensions(), (64, 48));
    }
}
