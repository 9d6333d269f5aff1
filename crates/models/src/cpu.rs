//! What this CPU offers the backbones' kernels, detected at run time (never at build time:
//! one binary runs on an AMD Zen with AVX2 one day and a Xeon with AMX the next).
//!
//! The f32 convolutions and linear layers go through the `gemm` crate, which picks its own
//! kernels by the same detection: AVX-512F where present, else AVX2 with FMA, else scalar
//! code. [`CpuFeatures::f32_path`] names the one it takes here, for logs and the featurize
//! summary.
//!
//! bf16 on the CPU runs geoloc's own kernels on AVX-512 bf16 dot products (AVX512-BF16:
//! Intel Cooper Lake, Sapphire Rapids and later, AMD Zen 4 and later; see `bf16.rs`).
//! [`CpuFeatures::bf16_path`] names them where the CPU has them, and
//! [`CpuFeatures::bf16_refusal`] is the one message, naming what this CPU has, where it has
//! not, rather than running candle's generic bf16 operations (correct, but far slower than
//! f32) without saying so. Intel's AMX tiles (AMX-BF16) are detected but not used yet: every
//! CPU with AMX also has AVX512-BF16 and runs those kernels. AMX is read from CPUID and the
//! OS's enabled state (XCR0) directly, because the standard library's detection of it is not
//! stable yet; a process must still ask Linux for the tile state (`arch_prctl(
//! ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`) before its first tile instruction.

/// The instruction-set extensions the kernels care about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuFeatures {
    pub avx2_fma: bool,
    pub avx512f: bool,
    pub avx512_bf16: bool,
    /// AMX-TILE and AMX-BF16 reported by CPUID, and the tile state enabled by the OS.
    pub amx_bf16: bool,
}

impl CpuFeatures {
    /// This CPU's.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            CpuFeatures {
                avx2_fma: std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma"),
                avx512f: std::arch::is_x86_feature_detected!("avx512f"),
                avx512_bf16: std::arch::is_x86_feature_detected!("avx512bf16"),
                amx_bf16: amx_bf16(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            CpuFeatures::default()
        }
    }

    /// The `gemm` kernels the f32 path runs on: `avx512f`, `avx2+fma` or `scalar`.
    pub fn f32_path(&self) -> &'static str {
        if self.avx512f {
            "avx512f"
        } else if self.avx2_fma {
            "avx2+fma"
        } else {
            "scalar"
        }
    }

    /// The bf16 kernels this CPU runs, if any: `avx512-bf16` (AVX512-F and AVX512-BF16).
    pub fn bf16_path(&self) -> Option<&'static str> {
        (self.avx512f && self.avx512_bf16).then_some("avx512-bf16")
    }

    /// What `dtype` runs on with these features: `f32 avx512f`, `bf16 avx512-bf16`, or why
    /// it cannot ([`CpuFeatures::bf16_refusal`]). On this machine, [`kernels`] also names
    /// the bf16 kernel chosen.
    pub fn path(&self, dtype: &str) -> Result<String, String> {
        match self.bf16_refusal(dtype) {
            Some(why) => Err(why),
            None if dtype == "bf16" => Ok(format!("bf16 {}", self.bf16_path().unwrap_or("?"))),
            None => Ok(format!("f32 {}", self.f32_path())),
        }
    }

    /// The fastest bf16 unit present, if any: `amx-bf16` or `avx512-bf16`.
    pub fn bf16_unit(&self) -> Option<&'static str> {
        if self.amx_bf16 {
            Some("amx-bf16")
        } else if self.avx512_bf16 {
            Some("avx512-bf16")
        } else {
            None
        }
    }

    /// One line: every feature, present or not (`avx2+fma avx512f -avx512-bf16 -amx-bf16`).
    pub fn line(&self) -> String {
        [
            ("avx2+fma", self.avx2_fma),
            ("avx512f", self.avx512f),
            ("avx512-bf16", self.avx512_bf16),
            ("amx-bf16", self.amx_bf16),
        ]
        .iter()
        .map(|(n, on)| {
            if *on {
                (*n).to_owned()
            } else {
                format!("-{n}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
    }

    /// Why `dtype` cannot run on this CPU, or `None` where it can: f32 everywhere, bf16
    /// where [`CpuFeatures::bf16_path`] is some, f16 nowhere.
    pub fn bf16_refusal(&self, dtype: &str) -> Option<String> {
        let have = format!("this CPU: {}", self.line());
        match (dtype, self.bf16_path()) {
            ("f32", _) | ("bf16", Some(_)) => None,
            ("bf16", None) => Some(format!(
                "dtype bf16 on the CPU needs AVX512-BF16 (Intel Cooper Lake or Sapphire Rapids \
                 and later, AMD Zen 4 and later), and {have} has not got it; run f32 on the \
                 CPU, or bf16 on a GPU"
            )),
            (other, _) => Some(format!(
                "dtype {other} on the CPU: the CPU's reduced precision is bf16 (where it has \
                 AVX512-BF16; {have}); run f32 or bf16 on the CPU, or {other} on a GPU"
            )),
        }
    }
}

/// What `dtype` runs on in this process: `f32 avx512f`, `bf16 avx512-bf16` (`VDPBF16PS`), `bf16
/// avx512-bf16 widened` (bf16 operands on f32 FMAs, where `VDPBF16PS` is the slower: see
/// `bf16.rs`, which times both once), or why it cannot run here. What featurize records.
pub fn kernels(dtype: &str) -> Result<String, String> {
    let cpu = CpuFeatures::detect();
    let path = cpu.path(dtype)?;
    match crate::bf16::kernel() {
        Some(k) if dtype == "bf16" => Ok(format!("bf16 {}", k.name())),
        _ => Ok(path),
    }
}

/// AMX-TILE and AMX-BF16 in CPUID leaf 7 (EDX bits 24 and 22), and the OS enabling the tile
/// configuration and data state (XCR0 bits 17 and 18).
#[cfg(target_arch = "x86_64")]
// CPUID's intrinsics are safe functions in newer Rust, unsafe in older (1.89).
#[allow(unused_unsafe)]
fn amx_bf16() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 is read only when leaf 0 says the CPU
    // has it.
    let max_leaf = unsafe { __cpuid(0) }.eax;
    if max_leaf < 7 {
        return false;
    }
    let edx = unsafe { __cpuid_count(7, 0) }.edx;
    let (tile, bf16) = (edx & (1 << 24) != 0, edx & (1 << 22) != 0);
    if !(tile && bf16 && std::arch::is_x86_feature_detected!("xsave")) {
        return false;
    }
    // SAFETY: XGETBV(0) is available where XSAVE is (checked above), and OSXSAVE is implied
    // by the standard library's xsave detection.
    let xcr0 = unsafe { xgetbv0() };
    xcr0 & (0b11 << 17) == 0b11 << 17
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    std::arch::x86_64::_xgetbv(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Says which paths this machine has (the test log shows it), and checks the detection
    /// against the kernel's own view in /proc/cpuinfo where there is one.
    #[test]
    fn detection_agrees_with_the_kernel_and_names_the_paths() {
        let f = CpuFeatures::detect();
        eprintln!(
            "CPU features: {}; f32 path: {}; bf16 path: {}",
            f.line(),
            f.f32_path(),
            f.bf16_path().unwrap_or("none (bf16 CPU paths skipped)")
        );
        // The kernels' own check agrees with the path named.
        assert_eq!(f.bf16_path().is_some(), crate::bf16::available());
        if let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") {
            if let Some(flags) = info.lines().find(|l| l.starts_with("flags")) {
                let has = |f: &str| flags.split_whitespace().any(|x| x == f);
                assert_eq!(f.avx512f, has("avx512f"), "avx512f");
                assert_eq!(f.avx512_bf16, has("avx512_bf16"), "avx512_bf16");
                assert_eq!(f.amx_bf16, has("amx_bf16") && has("amx_tile"), "amx_bf16");
                assert_eq!(f.avx2_fma, has("avx2") && has("fma"), "avx2+fma");
            }
        }
    }

    #[test]
    fn reduced_precision_is_refused_with_what_the_cpu_has() {
        let none = CpuFeatures {
            avx2_fma: true,
            ..Default::default()
        };
        assert_eq!(none.bf16_refusal("f32"), None);
        let e = none.bf16_refusal("bf16").unwrap();
        assert!(
            e.contains("needs AVX512-BF16")
                && e.contains("avx2+fma -avx512f -avx512-bf16 -amx-bf16"),
            "{e}"
        );
        assert_eq!(none.path("f32").unwrap(), "f32 avx2+fma");
        assert!(none.path("bf16").is_err());
        let amx = CpuFeatures {
            avx2_fma: true,
            avx512f: true,
            avx512_bf16: true,
            amx_bf16: true,
        };
        assert_eq!(amx.bf16_unit(), Some("amx-bf16"));
        assert_eq!(amx.f32_path(), "avx512f");
        // AMX is not used yet: its CPUs run the AVX512-BF16 kernels.
        assert_eq!(amx.bf16_refusal("bf16"), None);
        assert_eq!(amx.path("bf16").unwrap(), "bf16 avx512-bf16");
        let e = amx.bf16_refusal("f16").unwrap();
        assert!(
            e.contains("dtype f16 on the CPU: the CPU's reduced precision is bf16"),
            "{e}"
        );
        let zen4 = CpuFeatures {
            amx_bf16: false,
            ..amx
        };
        assert_eq!(zen4.bf16_unit(), Some("avx512-bf16"));
        assert_eq!(zen4.path("bf16").unwrap(), "bf16 avx512-bf16");
        // AVX512-BF16 without AVX512-F does not exist; the kernels need both.
        let odd = CpuFeatures {
            avx512f: false,
            ..zen4
        };
        assert!(odd.path("bf16").is_err());
    }
}
