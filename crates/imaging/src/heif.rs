//! HEIF/HEIC (what phones write) through libheif, loaded at run time; AVIF too where the
//! loaded libheif has an AV1 decoder (the fetched build has none: AVIF is then refused as
//! `unsupported-format` with libheif's own message).
//!
//! HEVC decoding has no mature pure-Rust implementation, and linking libheif at build time
//! would make every build need its development files. geoloc instead opens the shared
//! library when it first meets a HEIF file, from, in order:
//!
//! 1. `$GEOLOC_LIBHEIF` (the library file, or a folder holding `libheif*.so*`);
//! 2. `data/libheif/` under the working directory or above the executable (where
//!    `cargo xtask fetch-heif` puts libheif 1.23.6 and libde265 from the pillow-heif 1.8.1
//!    wheel, sha256-checked: no root, no compiler);
//! 3. the system's `libheif.so.1` (Debian: `apt-get install libheif1`).
//!
//! Without any, HEIF files are refused as `unsupported-format` with a message saying how to
//! get one. libheif applies the HEIF transformations (rotation `irot`, mirror `imir`) while
//! decoding, so the result is upright; the EXIF orientation a HEIF file may also carry is
//! not applied a second time (the HEIF specification makes the transformations
//! authoritative; pillow-heif does the same). Only the C functions below are used, all
//! present since libheif 1.4 (`heif_init` where the library has it).

use crate::decode::{check_limits, DecodeError, DecodeInfo, Decoded, Format, Limits};
use crate::orient::Orientation;
use image::RgbImage;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[repr(C)]
#[derive(Clone, Copy)]
struct HeifError {
    code: c_int,
    subcode: c_int,
    message: *const c_char,
}

type Ctx = c_void;
type Handle = c_void;
type Img = c_void;

const COLORSPACE_RGB: c_int = 1;
const CHROMA_INTERLEAVED_RGB: c_int = 10;
const CHANNEL_INTERLEAVED: c_int = 10;
/// `heif_error_Invalid_input`: the file is damaged (truncated, when the message says so).
const ERROR_INVALID_INPUT: c_int = 2;
/// `heif_error_Unsupported_filetype` and `heif_error_Unsupported_feature` (a codec the
/// library was built without).
const ERROR_UNSUPPORTED_FILETYPE: c_int = 3;
const ERROR_UNSUPPORTED_FEATURE: c_int = 4;
/// `heif_error_Plugin_loading_error`: no decoder plugin for the file's codec.
const ERROR_PLUGIN_LOADING: c_int = 11;

/// The start of libheif's `heif_decoding_options` (fields are only ever appended, each group
/// behind a `version`): version 1 has the transformation switch and progress callbacks,
/// version 2 `convert_hdr_to_8bit`, version 3 `strict_decoding`.
#[repr(C)]
struct DecodingOptions {
    version: u8,
    ignore_transformations: u8,
    start_progress: *const c_void,
    on_progress: *const c_void,
    end_progress: *const c_void,
    progress_user_data: *mut c_void,
    convert_hdr_to_8bit: u8,
    strict_decoding: u8,
}

/// The functions geoloc calls, resolved once.
struct Lib {
    _lib: libloading::Library,
    path: PathBuf,
    version: String,
    context_alloc: unsafe extern "C" fn() -> *mut Ctx,
    context_free: unsafe extern "C" fn(*mut Ctx),
    read_from_memory:
        unsafe extern "C" fn(*mut Ctx, *const c_void, usize, *const c_void) -> HeifError,
    primary_handle: unsafe extern "C" fn(*mut Ctx, *mut *mut Handle) -> HeifError,
    handle_width: unsafe extern "C" fn(*const Handle) -> c_int,
    handle_height: unsafe extern "C" fn(*const Handle) -> c_int,
    handle_release: unsafe extern "C" fn(*const Handle),
    decode_image: unsafe extern "C" fn(
        *const Handle,
        *mut *mut Img,
        c_int,
        c_int,
        *const c_void,
    ) -> HeifError,
    image_width: unsafe extern "C" fn(*const Img, c_int) -> c_int,
    image_height: unsafe extern "C" fn(*const Img, c_int) -> c_int,
    plane: unsafe extern "C" fn(*const Img, c_int, *mut c_int) -> *const u8,
    image_release: unsafe extern "C" fn(*const Img),
    options_alloc: Option<unsafe extern "C" fn() -> *mut DecodingOptions>,
    options_free: Option<unsafe extern "C" fn(*mut DecodingOptions)>,
}

// The library's functions are thread-safe on distinct contexts (libheif's documentation);
// geoloc never shares a context between threads.
unsafe impl Send for Lib {}
unsafe impl Sync for Lib {}

fn candidates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("GEOLOC_LIBHEIF") {
        let p = PathBuf::from(v);
        if p.is_file() {
            return vec![p];
        }
        dirs.push(p);
    }
    if let Ok(cwd) = std::env::current_dir() {
        dirs.push(cwd.join("data/libheif"));
    }
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/geoloc and target/debug/deps/test-binary: the workspace is
        // two or three levels up.
        for up in exe.ancestors().skip(1).take(4) {
            dirs.push(up.join("data/libheif"));
        }
    }
    let mut out = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut libs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libheif") && n.contains(".so"))
            })
            .collect();
        libs.sort();
        out.extend(libs);
    }
    out.push(PathBuf::from("libheif.so.1"));
    out
}

fn open(path: &Path) -> Result<Lib, String> {
    // Safety: loading runs the library's initialisers; libheif's are plain C++ statics.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
    macro_rules! sym {
        ($name:literal) => {
            *unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                .map_err(|e| format!("{}: {e}", $name))?
        };
    }
    let version: unsafe extern "C" fn() -> *const c_char = sym!("heif_get_version");
    let version = unsafe { CStr::from_ptr(version()) }
        .to_string_lossy()
        .into_owned();
    // libheif >= 1.13 wants heif_init before use (it loads the decoder plugins).
    if let Ok(init) =
        unsafe { lib.get::<unsafe extern "C" fn(*const c_void) -> HeifError>(b"heif_init\0") }
    {
        let e = unsafe { init(std::ptr::null()) };
        if e.code != 0 {
            return Err(format!("heif_init: {}", message(&e)));
        }
    }
    Ok(Lib {
        context_alloc: sym!("heif_context_alloc"),
        context_free: sym!("heif_context_free"),
        read_from_memory: sym!("heif_context_read_from_memory_without_copy"),
        primary_handle: sym!("heif_context_get_primary_image_handle"),
        handle_width: sym!("heif_image_handle_get_width"),
        handle_height: sym!("heif_image_handle_get_height"),
        handle_release: sym!("heif_image_handle_release"),
        decode_image: sym!("heif_decode_image"),
        image_width: sym!("heif_image_get_width"),
        image_height: sym!("heif_image_get_height"),
        plane: sym!("heif_image_get_plane_readonly"),
        image_release: sym!("heif_image_release"),
        options_alloc: unsafe { lib.get(b"heif_decoding_options_alloc\0") }
            .ok()
            .map(|f| *f),
        options_free: unsafe { lib.get(b"heif_decoding_options_free\0") }
            .ok()
            .map(|f| *f),
        path: path.to_owned(),
        version,
        _lib: lib,
    })
}

fn library() -> Result<&'static Lib, &'static str> {
    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(|| {
        let mut tried = Vec::new();
        for c in candidates() {
            match open(&c) {
                Ok(l) => {
                    tracing::debug!(library = %l.path.display(), version = %l.version, "libheif loaded");
                    return Ok(l);
                }
                Err(e) => tried.push(format!("{}: {e}", c.display())),
            }
        }
        Err(format!(
            "no libheif found (run `cargo xtask fetch-heif`, set GEOLOC_LIBHEIF, or install \
             Debian's libheif1); tried {}",
            tried.join("; ")
        ))
    })
    .as_ref()
    .map_err(String::as_str)
}

/// The libheif in use (path and version), or why there is none.
pub fn available() -> Result<String, String> {
    library()
        .map(|l| format!("libheif {} ({})", l.version, l.path.display()))
        .map_err(str::to_owned)
}

fn message(e: &HeifError) -> String {
    if e.message.is_null() {
        return format!("libheif error {}.{}", e.code, e.subcode);
    }
    unsafe { CStr::from_ptr(e.message) }
        .to_string_lossy()
        .into_owned()
}

/// Frees what it holds when dropped, whatever path the decode takes.
struct Guard<'a> {
    lib: &'a Lib,
    ctx: *mut Ctx,
    handle: *mut Handle,
    img: *mut Img,
    options: *mut DecodingOptions,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        unsafe {
            if !self.img.is_null() {
                (self.lib.image_release)(self.img);
            }
            if !self.handle.is_null() {
                (self.lib.handle_release)(self.handle);
            }
            if !self.ctx.is_null() {
                (self.lib.context_free)(self.ctx);
            }
            if let (false, Some(free)) = (self.options.is_null(), self.lib.options_free) {
                free(self.options);
            }
        }
    }
}

/// Decodes the primary image of a HEIF (or AVIF) file to upright 8-bit RGB, within
/// `limits`.
pub fn decode(bytes: &[u8], format: Format, limits: &Limits) -> Result<Decoded, DecodeError> {
    let lib =
        library().map_err(|why| DecodeError::Unsupported(format!("{}: {why}", format.name())))?;
    let corrupt = |e: &HeifError| {
        let msg = message(e);
        if [
            ERROR_UNSUPPORTED_FILETYPE,
            ERROR_UNSUPPORTED_FEATURE,
            ERROR_PLUGIN_LOADING,
        ]
        .contains(&e.code)
            || msg.contains("has not been built in")
        {
            // An AVIF file and a libheif without an AV1 decoder, say.
            DecodeError::Unsupported(format!("{}: libheif {}: {msg}", format.name(), lib.version))
        } else if e.code == ERROR_INVALID_INPUT && msg.to_lowercase().contains("end of") {
            DecodeError::Truncated(msg)
        } else {
            DecodeError::Corrupt {
                format: format.name(),
                msg,
            }
        }
    };
    let mut g = Guard {
        lib,
        ctx: unsafe { (lib.context_alloc)() },
        handle: std::ptr::null_mut(),
        img: std::ptr::null_mut(),
        options: std::ptr::null_mut(),
    };
    // Strict decoding: a missing or broken tile is an error, not a grey patch (libheif
    // otherwise decodes a truncated file); HDR (10-bit) photos become 8-bit.
    if let Some(alloc) = lib.options_alloc {
        g.options = unsafe { alloc() };
        if !g.options.is_null() {
            let o = unsafe { &mut *g.options };
            if o.version >= 2 {
                o.convert_hdr_to_8bit = 1;
            }
            if o.version >= 3 {
                o.strict_decoding = 1;
            }
        }
    }
    if g.ctx.is_null() {
        return Err(DecodeError::Corrupt {
            format: format.name(),
            msg: "libheif could not allocate a context".into(),
        });
    }
    // `bytes` outlives the context (the guard frees it before returning).
    let e = unsafe {
        (lib.read_from_memory)(g.ctx, bytes.as_ptr().cast(), bytes.len(), std::ptr::null())
    };
    if e.code != 0 {
        return Err(corrupt(&e));
    }
    let e = unsafe { (lib.primary_handle)(g.ctx, &mut g.handle) };
    if e.code != 0 {
        return Err(corrupt(&e));
    }
    let (w, h) = unsafe { ((lib.handle_width)(g.handle), (lib.handle_height)(g.handle)) };
    check_limits(w.max(0) as u64, h.max(0) as u64, limits)?;
    let e = unsafe {
        (lib.decode_image)(
            g.handle,
            &mut g.img,
            COLORSPACE_RGB,
            CHROMA_INTERLEAVED_RGB,
            g.options.cast_const().cast(),
        )
    };
    if e.code != 0 {
        return Err(corrupt(&e));
    }
    let (w, h) = unsafe {
        (
            (lib.image_width)(g.img, CHANNEL_INTERLEAVED),
            (lib.image_height)(g.img, CHANNEL_INTERLEAVED),
        )
    };
    check_limits(w.max(0) as u64, h.max(0) as u64, limits)?;
    let mut stride: c_int = 0;
    let plane = unsafe { (lib.plane)(g.img, CHANNEL_INTERLEAVED, &mut stride) };
    let (w, h, stride) = (w as usize, h as usize, stride.max(0) as usize);
    if plane.is_null() || stride < w * 3 {
        return Err(DecodeError::Corrupt {
            format: format.name(),
            msg: "libheif returned no interleaved RGB plane".into(),
        });
    }
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        // Safety: libheif's plane holds `h` rows of `stride` bytes.
        let row = unsafe { std::slice::from_raw_parts(plane.add(y * stride), w * 3) };
        rgb.extend_from_slice(row);
    }
    let image = RgbImage::from_raw(w as u32, h as u32, rgb).expect("w x h x 3 bytes");
    Ok(Decoded {
        info: DecodeInfo {
            format,
            source_width: w as u32,
            source_height: h as u32,
            orientation: Orientation::Normal,
            dct_scale: 1,
            was_greyscale: false,
        },
        image,
    })
}
