//! GoogLeNet against torchvision: its own GoogLeNet class at 1/16 width with seeded weights
//! and non-trivial BatchNorm statistics (`tests/fixtures/make_googlenet.py`), loaded from both
//! .pth formats (BatchNorm folded at load), on inputs of odd sizes (ceil-mode pools), at both
//! selectable layers; and the full-width names and shapes against torchvision's list.

mod torch_reference;

use candle_core::{DType, Device, Tensor};
use geoloc_models::checkpoint::load;
use geoloc_models::googlenet::{max_pool_ceil, GoogLeNet, GoogLeNetConfig, GoogLeNetLayer};
use geoloc_models::weights::WeightMap;
use torch_reference::{fixture, relative_error};

#[test]
fn tiny_googlenet_matches_torchvision_from_both_formats() {
    let outputs = load(&fixture("googlenet_tiny_outputs.pth"), None).unwrap();
    let config = GoogLeNetConfig::divided(16, 10);
    // f32 runs the CPU kernels; f64 runs candle's operations, the path other devices take.
    for (file, dtype) in [
        ("googlenet_tiny_legacy.pth", DType::F32),
        ("googlenet_tiny_zip.pth", DType::F32),
        ("googlenet_tiny_zip.pth", DType::F64),
    ] {
        let ck = load(&fixture(file), None).unwrap();
        let net = GoogLeNet::load(WeightMap::new(ck.tensors, dtype), config.clone())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        for input in ["input0", "input1"] {
            let x = outputs.get(input).unwrap().to_dtype(dtype).unwrap();
            let x = &x;
            for (layer, name) in [
                (GoogLeNetLayer::Pool, "pool"),
                (GoogLeNetLayer::Logits, "logits"),
            ] {
                let want = outputs.get(&format!("{input}.{name}")).unwrap();
                let got = net.forward(x, layer).unwrap().to_dtype(DType::F32).unwrap();
                assert_eq!(got.dims(), want.dims(), "{file} {input} {name}");
                assert_eq!(got.dim(1).unwrap(), config.output_dim(layer));
                let err = relative_error(&got, want);
                assert!(
                    err < 1e-4,
                    "{file} {dtype:?} {input} {name}: max error / std = {err:e}"
                );
            }
        }
    }
}

#[test]
fn ceil_mode_max_pool_matches_pytorch_sizes_and_values() {
    // PyTorch: nn.MaxPool2d(3, 2, ceil_mode=True) on 1x1x5x5 of 0..24 gives 2x2
    // [[12, 14], [22, 24]]; on a 6-wide row 0..5 the windows are [0,3), [2,5), [4,6).
    let x = Tensor::arange(0f32, 25., &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 5, 5))
        .unwrap();
    let y = max_pool_ceil(&x, 3, 2, 0).unwrap();
    assert_eq!(
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        [12., 14., 22., 24.]
    );
    let x = Tensor::arange(0f32, 6., &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 1, 6))
        .unwrap();
    let y = max_pool_ceil(&x, 1, 2, 0).unwrap();
    assert_eq!(y.dims(), [1, 1, 1, 3]);
    let x = Tensor::arange(0f32, 6., &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 2, 3))
        .unwrap();
    let y = max_pool_ceil(&x.neg().unwrap(), 3, 1, 1).unwrap();
    // Padding never wins a maximum, even for negative inputs (PyTorch pads with -inf).
    assert_eq!(
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        [-0., -0., -1., -0., -0., -1.]
    );
}

#[test]
fn full_width_googlenet_takes_torchvisions_tensors_and_ignores_aux_heads() {
    let zero = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
    let w: Vec<(String, Tensor)> = std::fs::read_to_string(fixture("googlenet_names.tsv"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (name, dims) = l.split_once('\t').unwrap();
            let shape: Vec<usize> = if dims.is_empty() {
                vec![]
            } else {
                dims.split(',').map(|d| d.parse().unwrap()).collect()
            };
            (
                name.to_owned(),
                zero.reshape(()).unwrap().broadcast_as(shape).unwrap(),
            )
        })
        .collect();
    assert_eq!(w.len(), 364);
    GoogLeNet::load(
        WeightMap::new(w.clone(), DType::F32),
        GoogLeNetConfig::googlenet(),
    )
    .unwrap();
    // Without the 3x3 of branch3 (the paper's 5x5 slot) it is refused by name.
    let mut short = w;
    short.retain(|(n, _)| !n.starts_with("inception4c.branch3.1.conv"));
    let e = GoogLeNet::load(
        WeightMap::new(short, DType::F32),
        GoogLeNetConfig::googlenet(),
    )
    .err()
    .expect("must refuse");
    assert_eq!(
        e.missing,
        ["inception4c.branch3.1.conv.weight [64, 24, 3, 3]"]
    );
}

/// The parallel CPU max-pool equals the padded candle path (taken for other dtypes, here
/// f64) in both modes, on odd sizes, with and without padding, on rows narrower than a
/// vector (11) and rows that take the AVX2 (19) and AVX-512 (37, 56) builds where the CPU
/// has them, at strides 1, 2 and 3.
#[test]
fn cpu_max_pool_matches_the_candle_path() {
    for (h, w) in [(13, 11), (9, 19), (7, 37), (6, 56)] {
        let n = 2 * 3 * h * w;
        let v: Vec<f32> = (0..n).map(|i| ((i * 7919) % 113) as f32 - 50.0).collect();
        let x = Tensor::from_vec(v, (2, 3, h, w), &Device::Cpu).unwrap();
        pool_cases(&x, &format!("{h}x{w}"));
    }
}

fn pool_cases(x: &Tensor, size: &str) {
    use geoloc_models::googlenet::max_pool;
    for (k, s, p, ceil) in [
        (3, 2, 0, true),
        (3, 1, 1, true),
        (2, 2, 0, true),
        (2, 2, 0, false),
        (3, 2, 1, false),
        (3, 3, 1, true),
        (5, 3, 2, false),
    ] {
        let fast = max_pool(x, k, s, p, ceil).unwrap();
        let slow = max_pool(&x.to_dtype(DType::F64).unwrap(), k, s, p, ceil)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let case = format!("{size} k{k} s{s} p{p} ceil {ceil}");
        assert_eq!(fast.dims(), slow.dims(), "{case}");
        assert_eq!(
            fast.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            slow.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{case}"
        );
    }
}
