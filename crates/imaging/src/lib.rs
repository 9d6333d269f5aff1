//! `geoloc-imaging`: photos to fixed-size RGB tensors. Shared by `preprocess` (whole
//! datasets) and `predict` (new photos), so both see exactly the same pixels.
//!
//! - [`decode`]: bytes to an upright 8-bit RGB image (JPEG with DCT-domain downscaling when
//!   the target is small, PNG, GIF, WebP, BMP, TIFF, HEIF/HEIC; EXIF orientation; CMYK,
//!   palette, 16-bit and greyscale converted or refused; decompression-bomb limits on the
//!   header);
//! - [`heif`]: HEIF/HEIC through libheif, loaded at run time (none: a named refusal);
//! - [`geometry`]: resize-crop and squash, and the extra views (five-crop, ten-crop, seeded
//!   random windows);
//! - [`orient`]: EXIF orientation.
//!
//! [`prepare`] is the whole chain for one file's bytes. Nothing here panics on input data:
//! every failure is a [`DecodeError`] with a stable reason code.
//!
//! Architecture invariant: no I/O beyond the bytes handed in (and loading libheif), no
//! datasets, no stage. The
//! output is raw u8 RGB, row-major HWC, not normalised (the consumer owns normalisation).

pub mod decode;
pub mod geometry;
pub mod heif;
pub mod orient;
pub mod synth;

pub use decode::{DecodeError, DecodeInfo, DecodeOptions, Decoded, Format, Greyscale, Limits};
pub use geometry::{Geometry, GeometryError, View, Views};
pub use orient::Orientation;

/// One photo made ready: its views and what decoding found and did.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub views: Vec<View>,
    pub info: DecodeInfo,
}

/// Options of [`prepare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareOptions {
    pub decode: DecodeOptions,
    pub geometry: Geometry,
    pub views: Views,
    /// Decode large JPEGs at a reduced DCT scale (never below the resize target).
    pub dct_scaling: bool,
}

/// Decodes `bytes`, orients, and renders every view. `image_seed` seeds random views.
pub fn prepare(
    bytes: &[u8],
    opts: &PrepareOptions,
    image_seed: u64,
) -> Result<Prepared, DecodeError> {
    let g = opts.geometry;
    let want = move |w: u32, h: u32| g.resized_size(w, h);
    let want: Option<&dyn Fn(u32, u32) -> (u32, u32)> =
        if opts.dct_scaling { Some(&want) } else { None };
    let d = decode::decode(bytes, &opts.decode, want)?;
    let views =
        geometry::render(&d.image, &opts.geometry, &opts.views, image_seed).map_err(|e| {
            DecodeError::Corrupt {
                format: d.info.format.name(),
                msg: e.to_string(),
            }
        })?;
    Ok(Prepared {
        views,
        info: d.info,
    })
}
