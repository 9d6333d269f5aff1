//! EfficientNet-Lite0 with the real ImageNet checkpoint (`cargo xtask fetch-lite0`) on real
//! photos, against the package it was published for, run by PyTorch
//! (`tests/fixtures/make_lite0.py`): same top-5 classes, pool and logits within 1e-4 of the
//! reference's spread.

mod torch_reference;

use candle_core::{DType, Device, Tensor};
use geoloc_models::checkpoint::load;
use geoloc_models::efficientnet::{EfficientNetLite, LiteConfig, LiteLayer};
use geoloc_models::weights::WeightMap;
use torch_reference::{fixture, relative_error, values};

fn crop(i: usize) -> Tensor {
    let img = image::open(fixture(&format!("lite0_crop{i}.png")))
        .unwrap()
        .to_rgb8();
    assert_eq!(img.dimensions(), (224, 224));
    let hwc = Tensor::from_vec(img.into_raw(), (224, 224, 3), &Device::Cpu).unwrap();
    let chw = hwc
        .permute((2, 0, 1))
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    ((chw - 127.0).unwrap() / 128.0)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

fn top5(v: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
    idx.truncate(5);
    idx
}

#[test]
fn lite0_real_checkpoint_matches_pytorch_on_real_photos() {
    let Some(path) = geoloc_core::fixtures::lite0_checkpoint(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let ck = load(&path, None).unwrap();
    let net = EfficientNetLite::load(WeightMap::new(ck.tensors, DType::F32), LiteConfig::lite0())
        .unwrap();
    let reference = load(&fixture("lite0_outputs.pth"), None).unwrap();
    let x = Tensor::cat(&(0..4).map(crop).collect::<Vec<_>>(), 0).unwrap();
    let pool = net.forward(&x, LiteLayer::Pool).unwrap();
    let logits = net.forward(&x, LiteLayer::Logits).unwrap();
    assert_eq!(pool.dims(), [4, 1280]);
    assert_eq!(logits.dims(), [4, 1000]);
    for i in 0..4 {
        let want_pool = reference.get(&format!("pool{i}")).unwrap();
        let want_logits = reference.get(&format!("logits{i}")).unwrap();
        let got_pool = pool.get(i).unwrap();
        let got_logits = logits.get(i).unwrap();
        let e_pool = relative_error(&got_pool, want_pool);
        let e_logits = relative_error(&got_logits, want_logits);
        assert!(
            e_pool < 1e-4,
            "photo {i} pool: max error / std = {e_pool:e}"
        );
        assert!(
            e_logits < 1e-4,
            "photo {i} logits: max error / std = {e_logits:e}"
        );
        assert_eq!(
            top5(&values(&got_logits)),
            top5(&values(want_logits)),
            "photo {i}: top-5 classes"
        );
    }
}

#[test]
fn wrong_checkpoint_for_lite0_names_the_problems() {
    // GoogLeNet's fixture is not an EfficientNet: every Lite0 tensor is missing and every
    // GoogLeNet tensor unexpected, all in one error.
    let ck = load(&fixture("googlenet_tiny_zip.pth"), None).unwrap();
    let err =
        match EfficientNetLite::load(WeightMap::new(ck.tensors, DType::F32), LiteConfig::lite0()) {
            Ok(_) => panic!("a GoogLeNet checkpoint loaded as Lite0"),
            Err(e) => e,
        };
    assert!(err
        .missing
        .iter()
        .any(|m| m.starts_with("_conv_stem.weight [32, 3, 3, 3]")));
    assert!(err
        .unexpected
        .iter()
        .any(|u| u.starts_with("conv1.conv.weight")));
    assert!(err.to_string().contains("EfficientNet-Lite"));
}

/// The same through the featurize/predict face: 8-bit crops in, the backbone's own
/// normalisation (TF-Lite's (x - 127) / 128), pool features out.
#[test]
fn lite0_backbone_from_pixels_matches_pytorch() {
    use geoloc_models::backbone::{Backbone, BackboneKind, BackboneSpec, Layer, WeightsSource};
    let Some(path) = geoloc_core::fixtures::lite0_checkpoint(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let spec = BackboneSpec {
        kind: BackboneKind::Lite0,
        layer: Some(Layer::Pool),
        normalisation: None,
        hog: Default::default(),
    };
    let bb = Backbone::load(
        spec,
        Some(&WeightsSource::File { path, key: None }),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let crops: Vec<Vec<u8>> = (0..4)
        .map(|i| {
            image::open(fixture(&format!("lite0_crop{i}.png")))
                .unwrap()
                .to_rgb8()
                .into_raw()
        })
        .collect();
    let refs: Vec<&[u8]> = crops.iter().map(Vec::as_slice).collect();
    let feats = bb.features(&refs, 224, 224).unwrap();
    assert_eq!(feats.len(), 4 * 1280);
    let reference = load(&fixture("lite0_outputs.pth"), None).unwrap();
    for i in 0..4 {
        let got = Tensor::from_slice(&feats[i * 1280..(i + 1) * 1280], 1280, &Device::Cpu).unwrap();
        let err = relative_error(&got, reference.get(&format!("pool{i}")).unwrap());
        assert!(err < 1e-4, "photo {i}: max error / std = {err:e}");
    }
}
