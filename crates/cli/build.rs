//! Records which build this is (`geoloc --version`, job logs, gpu-check reports): the CPU
//! build, or the CUDA build and the compute capability its kernels were compiled for.
fn main() {
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let build = if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        match std::env::var("CUDA_COMPUTE_CAP") {
            Ok(cap) => format!("CUDA build, compute capability {cap}"),
            Err(_) => "CUDA build".to_owned(),
        }
    } else {
        "CPU build".to_owned()
    };
    println!("cargo:rustc-env=GEOLOC_BUILD={build}");
}
