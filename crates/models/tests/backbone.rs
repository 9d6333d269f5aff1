//! The backbone face featurize and predict use: HOG's layout, seeded random weights, spec
//! validation, and refusing to run a CNN without weights.

use candle_core::{DType, Device};
use geoloc_models::backbone::{
    Backbone, BackboneKind, BackboneSpec, HogParams, Layer, ModelError, WeightsSource,
};

fn spec(kind: BackboneKind, layer: Option<Layer>) -> BackboneSpec {
    BackboneSpec {
        kind,
        layer,
        normalisation: None,
        hog: HogParams::default(),
    }
}

fn pattern(w: usize, h: usize, phase: usize) -> Vec<u8> {
    (0..w * h * 3)
        .map(|i| {
            let (x, y) = ((i / 3) % w, (i / 3) / w);
            (((x + phase) / 5 + y / 7) % 2 * 200 + (i % 3) * 20) as u8
        })
        .collect()
}

#[test]
fn hog_on_the_papers_150x90_has_dalal_triggs_layout() {
    let s = spec(BackboneKind::Hog, None);
    // 6-pixel cells: 25 x 15; 2x2-cell blocks every cell: 24 x 14 blocks of 4 x 9 bins.
    assert_eq!(s.output_dim(150, 90).unwrap(), 24 * 14 * 36);
    let bb = Backbone::load(s, None, &Device::Cpu, DType::F32).unwrap();
    let (a, b) = (pattern(150, 90, 0), pattern(150, 90, 3));
    let f = bb.features(&[&a, &b, &a], 150, 90).unwrap();
    let d = 24 * 14 * 36;
    assert_eq!(f.len(), 3 * d);
    assert_eq!(f[..d], f[2 * d..], "same image, same features");
    assert_ne!(f[..d], f[d..2 * d], "shifted edges, other features");
    // Every block is scaled to unit L2 norm (or is all zero).
    for block in f[..d].chunks(36) {
        let n: f32 = block.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(n < 1e-6 || (n - 1.0).abs() < 1e-3, "block norm {n}");
    }
    // 52x48 is not a whole number of 6-pixel cells: a clear error, not a crash.
    let err = spec(BackboneKind::Hog, None)
        .output_dim(52, 48)
        .unwrap_err();
    assert!(err.to_string().contains("hog on 52x48"), "{err}");
}

#[test]
fn random_weights_are_seeded_and_cnns_need_weights() {
    let s = spec(BackboneKind::Googlenet, Some(Layer::Pool));
    let img = pattern(64, 64, 1);
    let run = |seed| {
        Backbone::load(
            s.clone(),
            Some(&WeightsSource::Random { seed }),
            &Device::Cpu,
            DType::F32,
        )
        .unwrap()
        .features(&[&img], 64, 64)
        .unwrap()
    };
    let (a, b, c) = (run(1), run(1), run(2));
    assert_eq!(a.len(), 1024);
    assert_eq!(a, b, "same seed, same features");
    assert_ne!(a, c, "another seed, other features");
    match Backbone::load(s, None, &Device::Cpu, DType::F32) {
        Err(ModelError::Spec(m)) => assert!(m.contains("needs a weights file"), "{m}"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("a CNN ran without weights"),
    }
}

#[test]
fn specs_name_what_is_wrong() {
    let e = spec(BackboneKind::Googlenet, Some(Layer::Fc7))
        .output_dim(224, 224)
        .unwrap_err()
        .to_string();
    assert!(e.contains("googlenet has no layer Fc7"), "{e}");
    assert_eq!(
        spec(BackboneKind::Vgg16, Some(Layer::Fc7))
            .output_dim(224, 224)
            .unwrap(),
        4096
    );
    assert_eq!(
        spec(BackboneKind::Lite0, None)
            .output_dim(224, 224)
            .unwrap(),
        1000
    );
    let e = spec(BackboneKind::Lite0, None)
        .output_dim(16, 16)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 32x32"), "{e}");
    let missing = WeightsSource::File {
        path: "/nonexistent/lite0.pth".into(),
        key: None,
    };
    let e = Backbone::load(
        spec(BackboneKind::Lite0, None),
        Some(&missing),
        &Device::Cpu,
        DType::F32,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("/nonexistent/lite0.pth"), "{e}");
}
