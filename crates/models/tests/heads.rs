//! The paper's MLP head and SGD against PyTorch (`tests/fixtures/make_sgd.py`): six steps of
//! Nesterov SGD with weight decay on cross-entropy, and of damped momentum SGD on squared
//! error, from the same start: every loss and every parameter after every step agrees.
//! Dropout: rate, scaling, seeding.

mod torch_reference;

use candle_core::{DType, Device, Tensor};
use geoloc_core::rng::SplitMix64;
use geoloc_models::checkpoint::load;
use geoloc_models::heads::{dropout, Mlp, MlpConfig};
use geoloc_models::optim::{Sgd, SgdConfig};
use torch_reference::{fixture, relative_error, values};

fn run(name: &str, opt: SgdConfig) {
    let f = load(&fixture("sgd_steps.pth"), None).unwrap();
    let torch_name = |k: usize, what: &str| format!("{}.{what}", [0, 2, 4][k]);
    let config = MlpConfig {
        input: 10,
        hidden: 8,
        outputs: 3,
        dropout: [0.0; 3],
    };
    let mlp = Mlp::from_tensors(config, |n| {
        let (layer, what) = n.split_once('.').unwrap();
        let k: usize = layer.trim_start_matches("fc").parse().unwrap();
        f.get(&format!("{name}.start.{}", torch_name(k, what)))
            .cloned()
    })
    .unwrap();
    let mut sgd = Sgd::new(mlp.vars(), opt).unwrap();
    let x = f.get("x").unwrap();
    let labels = f.get("labels").unwrap().to_dtype(DType::U32).unwrap();
    let targets = f.get("targets").unwrap();
    for step in 0..6 {
        let y = mlp.forward(x, None).unwrap();
        let loss = if name == "ce" {
            candle_nn::loss::cross_entropy(&y, &labels).unwrap()
        } else {
            candle_nn::loss::mse(&y, targets).unwrap()
        };
        let want = values(f.get(&format!("{name}.loss{step}")).unwrap())[0];
        let got = loss.to_scalar::<f32>().unwrap() as f64;
        assert!(
            (got - want).abs() < 1e-5 * want.abs().max(1.0),
            "{name} step {step}: loss {got} vs {want}"
        );
        let grads = loss.backward().unwrap();
        sgd.step(&grads).unwrap();
        for (n, t) in mlp.named() {
            let (layer, what) = n.split_once('.').unwrap();
            let k: usize = layer.trim_start_matches("fc").parse().unwrap();
            let want = f
                .get(&format!("{name}.step{step}.{}", torch_name(k, what)))
                .unwrap();
            let err = relative_error(&t, want);
            assert!(
                err < 1e-5,
                "{name} step {step} {n}: max error / std = {err:e}"
            );
        }
    }
}

#[test]
fn nesterov_sgd_with_weight_decay_matches_pytorch() {
    run(
        "ce",
        SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 0.01,
            nesterov: true,
        },
    );
}

#[test]
fn damped_momentum_sgd_matches_pytorch() {
    run(
        "mse",
        SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            dampening: 0.1,
            weight_decay: 0.001,
            nesterov: false,
        },
    );
}

#[test]
fn nesterov_needs_momentum_without_dampening() {
    let bad = SgdConfig {
        lr: 0.1,
        momentum: 0.0,
        dampening: 0.0,
        weight_decay: 0.0,
        nesterov: true,
    };
    assert!(Sgd::new(Vec::new(), bad).is_err());
}

#[test]
fn dropout_drops_at_its_rate_scales_the_rest_and_is_seeded() {
    let x = Tensor::ones((200, 100), DType::F32, &Device::Cpu).unwrap();
    let a = values(&dropout(&x, 0.5, &mut SplitMix64::new(9)).unwrap());
    let zeros = a.iter().filter(|v| **v == 0.0).count() as f64 / a.len() as f64;
    assert!((zeros - 0.5).abs() < 0.02, "dropped {zeros}");
    assert!(a.iter().all(|v| *v == 0.0 || *v == 2.0));
    assert_eq!(
        a,
        values(&dropout(&x, 0.5, &mut SplitMix64::new(9)).unwrap())
    );
    assert_ne!(
        a,
        values(&dropout(&x, 0.5, &mut SplitMix64::new(10)).unwrap())
    );
    let b = values(&dropout(&x, 0.2, &mut SplitMix64::new(9)).unwrap());
    let zeros = b.iter().filter(|v| **v == 0.0).count() as f64 / b.len() as f64;
    assert!((zeros - 0.2).abs() < 0.02, "dropped {zeros}");
    // Evaluation: no dropout at all.
    let mlp = Mlp::new(MlpConfig::paper(100, 5), 1, &Device::Cpu).unwrap();
    let y1 = mlp.forward(&x, None).unwrap();
    let y2 = mlp.forward(&x, None).unwrap();
    assert_eq!(values(&y1), values(&y2));
    let t = mlp.forward(&x, Some(&mut SplitMix64::new(3))).unwrap();
    assert_ne!(values(&y1), values(&t));
    // Same seed, same initial weights.
    let m2 = Mlp::new(MlpConfig::paper(100, 5), 1, &Device::Cpu).unwrap();
    assert_eq!(values(&m2.forward(&x, None).unwrap()), values(&y1));
}

/// The fused CPU f32 update and the tensor-op update (other devices and dtypes; here f64)
/// agree over several steps, in both momentum modes.
#[test]
fn fused_and_tensor_updates_agree() {
    use candle_core::Var;
    for nesterov in [true, false] {
        let cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            dampening: if nesterov { 0.0 } else { 0.2 },
            weight_decay: 0.05,
            nesterov,
        };
        let init: Vec<f32> = (0..12).map(|i| i as f32 * 0.3 - 1.5).collect();
        let k = Tensor::from_vec(
            (0..12).map(|i| 1.0 + i as f32 * 0.1).collect::<Vec<_>>(),
            12,
            &Device::Cpu,
        )
        .unwrap();
        let p32 =
            Var::from_tensor(&Tensor::from_vec(init.clone(), 12, &Device::Cpu).unwrap()).unwrap();
        let p64 = Var::from_tensor(&p32.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
        let k64 = k.to_dtype(DType::F64).unwrap();
        let mut s32 = Sgd::new(vec![p32.clone()], cfg).unwrap();
        let mut s64 = Sgd::new(vec![p64.clone()], cfg).unwrap();
        for _ in 0..4 {
            let l32 = (p32.as_tensor().sqr().unwrap() * &k)
                .unwrap()
                .sum_all()
                .unwrap();
            s32.step(&l32.backward().unwrap()).unwrap();
            let l64 = (p64.as_tensor().sqr().unwrap() * &k64)
                .unwrap()
                .sum_all()
                .unwrap();
            s64.step(&l64.backward().unwrap()).unwrap();
        }
        let a = values(p32.as_tensor());
        let b = values(p64.as_tensor());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "nesterov {nesterov}: {x} vs {y}");
        }
        assert!(
            a.iter()
                .zip(&init)
                .any(|(x, y)| (x - *y as f64).abs() > 0.1),
            "it moved"
        );
    }
}

/// The written-out CPU training step equals candle's autograd + `Sgd` on the same MLP, with
/// dropout on and the same masks (same generator, same order), for both losses.
#[test]
fn cpu_trainer_equals_autograd_with_dropout() {
    use geoloc_models::heads::{CpuMlpTrainer, Loss, Target};
    use geoloc_models::optim::OptimizerConfig;
    let config = MlpConfig {
        input: 12,
        hidden: 9,
        outputs: 4,
        dropout: [0.2, 0.5, 0.5],
    };
    let sgd = SgdConfig {
        lr: 0.05,
        momentum: 0.9,
        dampening: 0.0,
        weight_decay: 0.01,
        nesterov: true,
    };
    let mut data = SplitMix64::new(77);
    let n = 20;
    let x = data.uniform_f32(n * 12, 2.0);
    let labels: Vec<u32> = (0..n).map(|_| (data.next_u64() % 4) as u32).collect();
    let values_t = data.uniform_f32(n * 4, 1.0);
    for classes in [true, false] {
        let reference = Mlp::new(config.clone(), 4, &Device::Cpu).unwrap();
        let loss_kind = if classes {
            Loss::CrossEntropy
        } else {
            Loss::SquaredError
        };
        let mut fast =
            CpuMlpTrainer::new(&reference, OptimizerConfig::Sgd(sgd), loss_kind).unwrap();
        let mut opt = Sgd::new(reference.vars(), sgd).unwrap();
        let (mut r1, mut r2) = (SplitMix64::new(8), SplitMix64::new(8));
        let xt = Tensor::from_vec(x.clone(), (n, 12), &Device::Cpu).unwrap();
        for step in 0..5 {
            let out = reference.forward(&xt, Some(&mut r1)).unwrap();
            let loss = if classes {
                let y = Tensor::from_vec(labels.clone(), n, &Device::Cpu).unwrap();
                candle_nn::loss::cross_entropy(&out, &y).unwrap()
            } else {
                let t = Tensor::from_vec(values_t.clone(), (n, 4), &Device::Cpu).unwrap();
                candle_nn::loss::mse(&out, &t).unwrap()
            };
            opt.step(&loss.backward().unwrap()).unwrap();
            let target = if classes {
                Target::Classes(&labels)
            } else {
                Target::Values(&values_t)
            };
            let got = fast.step(&x, target, &mut r2).unwrap().0;
            let want = loss.to_scalar::<f32>().unwrap();
            assert!(
                (got - want).abs() < 1e-5 * want.abs().max(1.0),
                "step {step}: loss {got} vs {want}"
            );
        }
        let trained = fast.to_mlp(&Device::Cpu).unwrap();
        for ((n1, a), (_, b)) in trained.named().iter().zip(reference.named().iter()) {
            let err = relative_error(a, b);
            assert!(
                err < 1e-4,
                "classes {classes} {n1}: max error / std = {err:e}"
            );
        }
    }
}

/// Adam as PyTorch defines it (`make_sgd.py`'s `adam_steps.pth`), through both trainers the
/// train stage uses: the written-out CPU MLP trainer and candle's autograd with the same
/// update, six steps, every loss and parameter.
#[test]
fn adam_matches_pytorch_through_both_trainers() {
    use geoloc_models::heads::{CpuMlpTrainer, HeadSpec, Loss, Target};
    use geoloc_models::optim::{AdamConfig, OptimizerConfig};
    use geoloc_models::trainer::{CandleTrainer, Trainer};
    let f = load(&fixture("adam_steps.pth"), None).unwrap();
    let torch_name = |n: &str| {
        let (layer, what) = n.split_once('.').unwrap();
        let k: usize = layer.trim_start_matches("fc").parse().unwrap();
        format!("{}.{what}", [0, 2, 4][k])
    };
    let config = MlpConfig {
        input: 10,
        hidden: 8,
        outputs: 3,
        dropout: [0.0; 3],
    };
    let opt = OptimizerConfig::Adam(AdamConfig {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.01,
    });
    let start = |n: &str| f.get(&format!("adam.start.{}", torch_name(n))).cloned();
    let x = values(f.get("x").unwrap())
        .into_iter()
        .map(|v| v as f32)
        .collect::<Vec<_>>();
    let labels: Vec<u32> = values(f.get("labels").unwrap())
        .into_iter()
        .map(|v| v as u32)
        .collect();
    let mlp = Mlp::from_tensors(config.clone(), start).unwrap();
    let cpu = CpuMlpTrainer::new(&mlp, opt, Loss::CrossEntropy).unwrap();
    let spec = HeadSpec::Mlp(config);
    let head = spec.load(&|n: &str| start(n)).unwrap();
    let autograd = CandleTrainer::new(head, 10, 3, opt, Loss::CrossEntropy, &Device::Cpu).unwrap();
    let mut trainers: Vec<(&str, Box<dyn Trainer>)> =
        vec![("cpu", Box::new(cpu)), ("autograd", Box::new(autograd))];
    for (what, t) in trainers.iter_mut() {
        let mut rng = SplitMix64::new(0);
        for step in 0..6 {
            let (got, _) = t.step(&x, Target::Classes(&labels), &mut rng).unwrap();
            let want = values(f.get(&format!("adam.loss{step}")).unwrap())[0];
            assert!(
                (got as f64 - want).abs() < 1e-5 * want.abs().max(1.0),
                "{what} step {step}: loss {got} vs {want}"
            );
            for (n, v, shape) in t.parameters().unwrap() {
                let got = Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
                let want = f
                    .get(&format!("adam.step{step}.{}", torch_name(&n)))
                    .unwrap();
                let err = relative_error(&got, want);
                assert!(
                    err < 1e-4,
                    "{what} step {step} {n}: max error / std = {err:e}"
                );
            }
        }
    }
}

/// The small CNN's written-out CPU trainer equals candle's autograd on the same network:
/// five steps of Nesterov SGD with weight decay, odd sizes (pools dropping a column),
/// every loss and every parameter.
#[test]
fn cpu_cnn_trainer_equals_autograd() {
    use geoloc_models::cnn_trainer::CpuCnnTrainer;
    use geoloc_models::heads::{HeadSpec, Loss, SmallCnnConfig, Target};
    use geoloc_models::optim::OptimizerConfig;
    use geoloc_models::trainer::{CandleTrainer, Trainer};
    let config = SmallCnnConfig {
        width: 18,
        height: 9,
        filters: 4,
        hidden: 7,
        outputs: 3,
    };
    let spec = HeadSpec::SmallCnn(config.clone());
    let opt = OptimizerConfig::Sgd(SgdConfig {
        lr: 0.05,
        momentum: 0.9,
        dampening: 0.0,
        weight_decay: 0.01,
        nesterov: true,
    });
    let head = spec.init(9, &Device::Cpu).unwrap();
    let named = geoloc_models::trainer::named_params(head.as_ref()).unwrap();
    let mut fast = CpuCnnTrainer::new(config.clone(), &named, opt, Loss::CrossEntropy).unwrap();
    let mut slow = CandleTrainer::new(
        head,
        config.input(),
        3,
        opt,
        Loss::CrossEntropy,
        &Device::Cpu,
    )
    .unwrap();
    let mut data = SplitMix64::new(4);
    let n = 6;
    let x = data.uniform_f32(n * config.input(), 1.5);
    let labels: Vec<u32> = (0..n).map(|i| (i % 3) as u32).collect();
    let (mut r1, mut r2) = (SplitMix64::new(1), SplitMix64::new(1));
    for step in 0..5 {
        let (a, _) = fast.step(&x, Target::Classes(&labels), &mut r1).unwrap();
        let (b, _) = slow.step(&x, Target::Classes(&labels), &mut r2).unwrap();
        assert!(
            (a - b).abs() < 1e-5 * b.abs().max(1.0),
            "step {step}: loss {a} vs {b}"
        );
    }
    assert!(
        values(&Tensor::from_vec(fast.predict(&x).unwrap(), (n, 3), &Device::Cpu).unwrap())
            .iter()
            .zip(values(
                &Tensor::from_vec(slow.predict(&x).unwrap(), (n, 3), &Device::Cpu).unwrap()
            ))
            .all(|(a, b)| (a - b).abs() < 1e-4)
    );
    let slow_params = slow.parameters().unwrap();
    for ((n1, a, s), (n2, b, _)) in fast.parameters().unwrap().into_iter().zip(slow_params) {
        assert_eq!(n1, n2);
        let ta = Tensor::from_vec(a, s.clone(), &Device::Cpu).unwrap();
        let tb = Tensor::from_vec(b, s, &Device::Cpu).unwrap();
        let err = relative_error(&ta, &tb);
        assert!(err < 1e-4, "{n1}: max error / std = {err:e}");
    }
    // Parameters and state round-trip through the PyTorch layouts.
    let p: std::collections::HashMap<String, Vec<f32>> = fast
        .parameters()
        .unwrap()
        .into_iter()
        .map(|(n, v, _)| (n, v))
        .collect();
    let st: std::collections::HashMap<String, Vec<f32>> =
        fast.state().unwrap().into_iter().collect();
    let mut again = CpuCnnTrainer::new(config, &named, opt, Loss::CrossEntropy).unwrap();
    again
        .restore(
            &|k: &str| p.get(k).cloned(),
            &|k: &str| st.get(k).cloned(),
            fast.steps(),
        )
        .unwrap();
    let (a, _) = fast.step(&x, Target::Classes(&labels), &mut r1).unwrap();
    let (b, _) = again
        .step(&x, Target::Classes(&labels), &mut SplitMix64::new(0))
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(fast.parameters().unwrap(), again.parameters().unwrap());
}

/// Cross-entropy against soft targets: the gradient `loss_and_grad` returns equals the
/// loss's finite differences (f64 central differences of the f32 loss, on a small batch).
#[test]
fn soft_cross_entropy_gradient_matches_finite_differences() {
    use geoloc_models::heads::{loss_and_grad, Loss, Target};
    let mut rng = SplitMix64::new(3);
    let (n, k) = (4, 6);
    let out: Vec<f32> = (0..n * k)
        .map(|_| (rng.next_u64() % 2000) as f32 / 500.0 - 2.0)
        .collect();
    let mut probs: Vec<f32> = (0..n * k)
        .map(|_| (rng.next_u64() % 100) as f32 + 1.0)
        .collect();
    for row in probs.chunks_mut(k) {
        let s: f32 = row.iter().sum();
        row.iter_mut().for_each(|v| *v /= s);
    }
    let labels = [0u32, 3, 5, 2];
    let target = Target::Soft {
        labels: &labels,
        probs: &probs,
    };
    let (loss, grad, _) = loss_and_grad(Loss::CrossEntropy, &out, k, target).unwrap();
    // The loss by hand: mean over rows of -sum q log softmax.
    let by_hand: f64 = out
        .chunks(k)
        .zip(probs.chunks(k))
        .map(|(o, q)| {
            let m = o.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let lse = m + o.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            o.iter()
                .zip(q)
                .map(|(&v, &t)| -(t as f64) * (v as f64 - lse))
                .sum::<f64>()
        })
        .sum::<f64>()
        / n as f64;
    assert!((loss as f64 - by_hand).abs() < 1e-5, "{loss} vs {by_hand}");
    let h = 1e-2f32;
    for i in 0..out.len() {
        let at = |d: f32| {
            let mut o = out.clone();
            o[i] += d;
            let t = Target::Soft {
                labels: &labels,
                probs: &probs,
            };
            loss_and_grad(Loss::CrossEntropy, &o, k, t).unwrap().0 as f64
        };
        let fd = (at(h) - at(-h)) / (2.0 * h as f64);
        assert!(
            (fd - grad[i] as f64).abs() < 2e-4,
            "d loss / d out[{i}]: finite differences {fd}, analytic {}",
            grad[i]
        );
    }
}

/// PIGEON's smoothing: normalised `exp(-(d_i - d_true) / tau)`; as tau shrinks it becomes the
/// one-hot target, and the loss and gradient become the hard-label cross-entropy's.
#[test]
fn haversine_smoothing_is_distance_aware_and_tends_to_one_hot() {
    use geoloc_models::heads::{haversine_smoothing, loss_and_grad, Loss, Target};
    // The photo is 10 km from cell 1 (its cell), 60 km from cell 0, 500 km from cell 3;
    // cell 2 has no location.
    let d = [Some(60.0), Some(10.0), None, Some(500.0)];
    let mut q = [0f32; 4];
    haversine_smoothing(&d, 1, 75.0, &mut q);
    let e = |x: f64| (-(x - 10.0) / 75.0).exp();
    let z = e(60.0) + e(10.0) + e(500.0);
    let want = [e(60.0) / z, e(10.0) / z, 0.0, e(500.0) / z];
    for (a, b) in q.iter().zip(want) {
        assert!((*a as f64 - b).abs() < 1e-6, "{q:?} vs {want:?}");
    }
    assert!(q[1] > q[0] && q[0] > q[3] && q[3] > 0.0, "{q:?}");
    // tau -> 0: one-hot on the true (nearest) cell; tau = 0 exactly too.
    for tau in [1e-3, 0.0] {
        haversine_smoothing(&d, 1, tau, &mut q);
        assert_eq!(q, [0.0, 1.0, 0.0, 0.0], "tau {tau}");
    }
    let out = [0.3f32, -1.2, 0.8, 2.0, 0.1, 0.0, -0.5, 1.5];
    let labels = [1u32, 3];
    let mut probs = [0f32; 8];
    haversine_smoothing(&d, 1, 1e-3, &mut probs[..4]);
    let d2 = [Some(900.0), Some(400.0), Some(300.0), Some(5.0)];
    haversine_smoothing(&d2, 3, 1e-3, &mut probs[4..]);
    let soft = loss_and_grad(
        Loss::CrossEntropy,
        &out,
        4,
        Target::Soft {
            labels: &labels,
            probs: &probs,
        },
    )
    .unwrap();
    let hard = loss_and_grad(Loss::CrossEntropy, &out, 4, Target::Classes(&labels)).unwrap();
    assert!((soft.0 - hard.0).abs() < 1e-6, "{} vs {}", soft.0, hard.0);
    for (a, b) in soft.1.iter().zip(&hard.1) {
        assert!((a - b).abs() < 1e-7);
    }
    assert_eq!(soft.2, hard.2);
}
