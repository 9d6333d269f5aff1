//! EfficientNet-Lite0, -Lite1 and -Lite2 with their real ImageNet checkpoints (`cargo xtask
//! fetch-lite0`, `fetch-lite1`, `fetch-lite2`) on real photos at each one's own input size
//! (224, 240, 260), against the package they were published for, run by PyTorch
//! (`tests/fixtures/make_lite.py`): same top-5 classes, pool and logits within 1e-4 of the
//! reference's spread.

mod torch_reference;

use candle_core::{DType, Device, Tensor};
use geoloc_models::checkpoint::load;
use geoloc_models::efficientnet::{EfficientNetLite, LiteConfig, LiteLayer, LiteVariant};
use geoloc_models::weights::WeightMap;
use torch_reference::{fixture, relative_error, values};

fn crop(v: LiteVariant, i: usize) -> Tensor {
    let n = v.index();
    let img = image::open(fixture(&format!("lite{n}_crop{i}.png")))
        .unwrap()
        .to_rgb8();
    let s = v.native_size();
    assert_eq!(img.dimensions(), (s, s));
    let s = s as usize;
    let hwc = Tensor::from_vec(img.into_raw(), (s, s, 3), &Device::Cpu).unwrap();
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

/// One variant's network against its PyTorch outputs; false when its checkpoint is absent
/// (and not required).
fn real_checkpoint_matches_pytorch(v: LiteVariant) -> bool {
    let n = v.index();
    let Some(path) = geoloc_core::fixtures::lite_checkpoint(env!("CARGO_MANIFEST_DIR"), n) else {
        return false;
    };
    let ck = load(&path, None).unwrap();
    let net = EfficientNetLite::load(
        WeightMap::new(ck.tensors, DType::F32),
        LiteConfig::variant(v),
    )
    .unwrap();
    let reference = load(&fixture(&format!("lite{n}_outputs.pth")), None).unwrap();
    let x = Tensor::cat(&(0..4).map(|i| crop(v, i)).collect::<Vec<_>>(), 0).unwrap();
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
            "lite{n} photo {i} pool: max error / std = {e_pool:e}"
        );
        assert!(
            e_logits < 1e-4,
            "lite{n} photo {i} logits: max error / std = {e_logits:e}"
        );
        assert_eq!(
            top5(&values(&got_logits)),
            top5(&values(want_logits)),
            "lite{n} photo {i}: top-5 classes"
        );
    }
    eprintln!("lite{n}: pool and logits match PyTorch on 4 real photos");
    true
}

#[test]
fn lite0_real_checkpoint_matches_pytorch_on_real_photos() {
    real_checkpoint_matches_pytorch(LiteVariant::Lite0);
}

#[test]
fn lite1_real_checkpoint_matches_pytorch_on_real_photos() {
    real_checkpoint_matches_pytorch(LiteVariant::Lite1);
}

#[test]
fn lite2_real_checkpoint_matches_pytorch_on_real_photos() {
    real_checkpoint_matches_pytorch(LiteVariant::Lite2);
}

/// Each checkpoint belongs to its own plan: Lite1's weights under Lite2's plan (or Lite0's)
/// are refused with the mismatched shapes named, not loaded half-way.
#[test]
fn a_lite_checkpoint_loads_only_as_its_own_variant() {
    let Some(path) = geoloc_core::fixtures::lite_checkpoint(env!("CARGO_MANIFEST_DIR"), 1) else {
        return;
    };
    let ck = load(&path, None).unwrap();
    for other in [LiteVariant::Lite0, LiteVariant::Lite2] {
        let err = match EfficientNetLite::load(
            WeightMap::new(ck.tensors.clone(), DType::F32),
            LiteConfig::variant(other),
        ) {
            Ok(_) => panic!("Lite1's checkpoint loaded as {other:?}"),
            Err(e) => e,
        };
        assert!(err.to_string().contains("EfficientNet-Lite"), "{err}");
        if other == LiteVariant::Lite0 {
            // Lite1 has more blocks than Lite0 (21 against 16): the extra ones are unexpected.
            assert!(
                err.unexpected.iter().any(|u| u.starts_with("_blocks.20.")),
                "{:?}",
                err.unexpected
            );
        } else {
            // Lite2 is wider: its stage 3 projects to 48 channels, Lite1's to 40.
            assert!(
                err.mismatched
                    .iter()
                    .any(|m| m.starts_with("_blocks.4._project_conv.weight: expected [48")),
                "{:?}",
                err.mismatched
            );
        }
    }
}

/// The same through the featurize/predict face: 8-bit crops in, the backbone's own
/// normalisation (TF-Lite's (x - 127) / 128), pool features out; for each variant.
#[test]
fn lite_backbones_from_pixels_match_pytorch() {
    use geoloc_models::backbone::BackboneKind;
    for (kind, v) in [
        (BackboneKind::Lite0, LiteVariant::Lite0),
        (BackboneKind::Lite1, LiteVariant::Lite1),
        (BackboneKind::Lite2, LiteVariant::Lite2),
    ] {
        assert_eq!(kind.lite(), Some(v));
        backbone_from_pixels_matches_pytorch(kind, v);
    }
}

fn backbone_from_pixels_matches_pytorch(
    kind: geoloc_models::backbone::BackboneKind,
    v: LiteVariant,
) {
    use geoloc_models::backbone::{Backbone, BackboneSpec, Layer, WeightsSource};
    let n = v.index();
    let Some(path) = geoloc_core::fixtures::lite_checkpoint(env!("CARGO_MANIFEST_DIR"), n) else {
        return;
    };
    let spec = BackboneSpec {
        kind,
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
    let size = v.native_size();
    assert_eq!(bb.spec.output_dim(size, size).unwrap(), 1280);
    let crops: Vec<Vec<u8>> = (0..4)
        .map(|i| {
            image::open(fixture(&format!("lite{n}_crop{i}.png")))
                .unwrap()
                .to_rgb8()
                .into_raw()
        })
        .collect();
    let refs: Vec<&[u8]> = crops.iter().map(Vec::as_slice).collect();
    let feats = bb.features(&refs, size, size).unwrap();
    assert_eq!(feats.len(), 4 * 1280);
    let reference = load(&fixture(&format!("lite{n}_outputs.pth")), None).unwrap();
    for i in 0..4 {
        let got = Tensor::from_slice(&feats[i * 1280..(i + 1) * 1280], 1280, &Device::Cpu).unwrap();
        let err = relative_error(&got, reference.get(&format!("pool{i}")).unwrap());
        assert!(err < 1e-4, "lite{n} photo {i}: max error / std = {err:e}");
    }
}
