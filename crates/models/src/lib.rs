//! `geoloc-models`: backbones, heads and weight loading, shared by featurize, train,
//! evaluate and predict.
//!
//! So far: [`checkpoint`], which reads weight files (PyTorch's legacy `.pth` format, which
//! candle lacks and torchvision's VGG16/GoogLeNet files and the EfficientNet-Lite0 checkpoint
//! use; PyTorch's zip format; safetensors) into named tensors without running any code the
//! file names.
//!
//! Architecture invariant: no datasets, no stage: tensors in, tensors out.

pub mod backbone;
pub mod card;
pub mod checkpoint;
pub mod cnn_trainer;
pub mod conv;
pub mod efficientnet;
pub mod googlenet;
pub mod heads;
pub mod optim;
pub mod pickle_guard;
pub mod predict;
pub mod trainer;
pub mod vgg;
pub mod weights;
