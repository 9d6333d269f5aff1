//! `geoloc-models`: backbones, heads and weight loading, shared by featurize, train,
//! evaluate and predict.
//!
//! So far: [`checkpoint`], which reads weight files (PyTorch's legacy `.pth` format, which
//! candle lacks and torchvision's VGG16/GoogLeNet files and the EfficientNet-Lite
//! checkpoints use; PyTorch's zip format; safetensors) into named tensors without running any
//! code the file names.
//!
//! Architecture invariant: no datasets, no stage: tensors in, tensors out.

pub mod backbone;
mod bf16;
pub mod card;
pub mod checkpoint;
pub mod cnn_trainer;
pub mod conv;
pub mod cpu;
pub mod dense;
#[cfg(target_arch = "x86_64")]
mod direct;
pub mod efficientnet;
pub mod geocells;
pub mod googlenet;
pub mod heads;
pub mod optim;
pub mod pickle_guard;
mod pool;
pub mod predict;
pub mod retrieval;
pub mod trainer;
pub mod vgg;
pub mod weights;
mod winograd;

/// A candle error's message without the backtrace candle attaches when `RUST_BACKTRACE` is
/// set (resolving it reads the binary's debug information: tens of MB, for an error line).
pub fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        e => e.to_string(),
    }
}
