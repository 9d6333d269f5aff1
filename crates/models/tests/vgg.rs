//! VGG16 against torchvision: a 1/32-width network built by torchvision's own code with seeded
//! weights (`tests/fixtures/make_vgg.py`), loaded from both .pth formats through the real
//! readers, on fixed inputs, at every selectable layer; and the full-width network's tensor
//! names and shapes against torchvision's list (`tests/fixtures/make_names.py`).

mod torch_reference;

use candle_core::{DType, Device, Tensor};
use geoloc_models::checkpoint::load;
use geoloc_models::vgg::{Vgg, VggConfig, VggLayer};
use geoloc_models::weights::WeightMap;
use torch_reference::{fixture, relative_error};

fn tiny_config() -> VggConfig {
    VggConfig::vgg16_divided(32, 32, 10)
}

#[test]
fn tiny_vgg_matches_torchvision_at_every_layer_from_both_formats() {
    let outputs = load(&fixture("vgg_tiny_outputs.pth"), None).unwrap();
    for file in ["vgg_tiny_legacy.pth", "vgg_tiny_zip.pth"] {
        let ck = load(&fixture(file), None).unwrap();
        let vgg = Vgg::load(WeightMap::new(ck.tensors, DType::F32), tiny_config())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        for input in ["input0", "input1"] {
            let x = outputs.get(input).unwrap();
            for (layer, name) in [
                (VggLayer::Pool5, "pool5"),
                (VggLayer::Fc7, "fc7"),
                (VggLayer::Logits, "logits"),
            ] {
                let want = outputs.get(&format!("{input}.{name}")).unwrap();
                let got = vgg.forward(x, layer).unwrap();
                assert_eq!(got.dims(), want.dims(), "{file} {input} {name}");
                assert_eq!(got.dim(1).unwrap(), tiny_config().output_dim(layer));
                let err = relative_error(&got, want);
                assert!(
                    err < 1e-4,
                    "{file} {input} {name}: max error / std = {err:e}"
                );
            }
        }
    }
}

/// torchvision's full-width names and shapes, as zero-cost broadcast tensors.
fn full_width_weights() -> Vec<(String, Tensor)> {
    let zero = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
    std::fs::read_to_string(fixture("vgg16_names.tsv"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (name, dims) = l.split_once('\t').unwrap();
            let shape: Vec<usize> = dims.split(',').map(|d| d.parse().unwrap()).collect();
            (name.to_owned(), zero.broadcast_as(shape).unwrap())
        })
        .collect()
}

#[test]
fn full_width_vgg16_takes_exactly_torchvisions_tensors() {
    let w = full_width_weights();
    assert_eq!(w.len(), 32);
    Vgg::load(WeightMap::new(w, DType::F32), VggConfig::vgg16()).unwrap();
}

#[test]
fn mismatched_weights_name_every_problem() {
    let mut w = full_width_weights();
    w.retain(|(n, _)| n != "features.0.bias");
    let zero = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
    for (n, t) in w.iter_mut() {
        if n == "classifier.6.weight" {
            *t = zero.broadcast_as((365, 4096)).unwrap(); // a Places365 head
        }
    }
    w.push(("fc.weight".into(), zero.broadcast_as((10, 10)).unwrap()));
    let e = Vgg::load(WeightMap::new(w, DType::F32), VggConfig::vgg16())
        .err()
        .expect("must refuse");
    assert_eq!(e.missing, ["features.0.bias [64]"]);
    assert_eq!(
        e.mismatched,
        ["classifier.6.weight: expected [1000, 4096], found [365, 4096]"]
    );
    assert_eq!(e.unexpected, ["fc.weight"]);
    let msg = e.to_string();
    assert!(
        msg.contains("1 missing") && msg.contains("1 unexpected"),
        "{msg}"
    );
}
