//! The backbones' linear (fully connected) layers: candle's `Linear`, whose product can run
//! in bf16 on the CPU ([`Dense::to_bf16`]), as the convolutions' can.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::Linear;

use crate::bf16::{self, PackedA};

/// `y = x Wᵀ + b` over the last dimension of a `[batch, in]` input.
#[derive(Debug, Clone)]
pub struct Dense {
    linear: Linear,
    /// The weight `[out, in]` rounded to bf16 and packed, and the bias, when the product runs
    /// in bf16 on the CPU.
    bf16: Option<(PackedA, Vec<f32>)>,
}

impl Dense {
    /// A weight `[out, in]` and an optional bias `[out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Dense {
            linear: Linear::new(weight, bias),
            bf16: None,
        }
    }

    /// Runs the product in bf16 on the CPU: bf16 operands, f32 accumulation and result
    /// ([`crate::bf16`]); the weight is rounded and packed here, once. An error where this CPU
    /// lacks AVX512-BF16 or the weights are not f32 on the CPU.
    pub fn to_bf16(&mut self) -> Result<()> {
        if !bf16::available() {
            candle_core::bail!("bf16 on the CPU needs AVX512-BF16 (and AVX512-F, -BW)");
        }
        let w = self.linear.weight();
        if !w.device().is_cpu() || w.dtype() != DType::F32 {
            candle_core::bail!("bf16 CPU products need the layer's f32 weights on the CPU");
        }
        let (out, inp) = w.dims2()?;
        let packed = PackedA::new(&w.flatten_all()?.to_vec1::<f32>()?, out, inp);
        let bias = match self.linear.bias() {
            Some(b) => b.to_vec1::<f32>()?,
            None => vec![0.0; out],
        };
        self.bf16 = Some((packed, bias));
        Ok(())
    }

    /// Whether the product runs in bf16 ([`Dense::to_bf16`]).
    pub fn is_bf16(&self) -> bool {
        self.bf16.is_some()
    }
}

impl Module for Dense {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let Some((a, bias)) = &self.bf16 else {
            return self.linear.forward(x);
        };
        if !x.device().is_cpu() || x.dtype() != DType::F32 || x.rank() != 2 {
            return self.linear.forward(x);
        }
        let (n, k) = x.dims2()?;
        if k != a.k() {
            candle_core::bail!("linear layer of {} inputs, given {k}", a.k());
        }
        let m = a.m();
        let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let pairs = bf16::pair_rows(&xs, n, k);
        // yᵀ [out, n], started from the bias.
        let mut yt: Vec<f32> = bias
            .iter()
            .flat_map(|&b| std::iter::repeat_n(b, n))
            .collect();
        // SAFETY: `to_bf16` checked the CPU; yt is [m, n], pairs the [n, k] input.
        unsafe { bf16::gemm_par(a, bf16::B::Pairs(&pairs), n, yt.as_mut_ptr(), n, true) };
        let mut y = vec![0f32; n * m];
        for (o, row) in yt.chunks_exact(n.max(1)).enumerate() {
            for (i, v) in row.iter().enumerate() {
                y[i * m + o] = *v;
            }
        }
        Tensor::from_vec(y, (n, m), x.device())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The bf16 product against candle's f32 `Linear` on the bf16-rounded weight and input
    /// (what the kernel multiplies): the same to f32 accumulation error; and against the
    /// unrounded f32 layer to bf16's precision.
    #[test]
    fn bf16_linear_matches_f32_on_rounded_operands() -> Result<()> {
        if !bf16::available() {
            eprintln!("SKIPPED: bf16 linear test: this CPU has no AVX512-BF16");
            return Ok(());
        }
        let dev = Device::Cpu;
        for &(n, k, m) in &[(1, 7, 5), (16, 300, 97), (3, 1024, 1000)] {
            let w = Tensor::randn(0f32, 0.05, (m, k), &dev)?;
            let b = Tensor::randn(0f32, 1.0, m, &dev)?;
            let x = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
            let f32_layer = Dense::new(w.clone(), Some(b.clone()));
            let mut bf = f32_layer.clone();
            bf.to_bf16()?;
            assert!(bf.is_bf16() && !f32_layer.is_bf16());
            let round =
                |t: &Tensor| -> Result<Tensor> { t.to_dtype(DType::BF16)?.to_dtype(DType::F32) };
            let want = Dense::new(round(&w)?, Some(b)).forward(&round(&x)?)?;
            let got = bf.forward(&x)?;
            assert_eq!(got.dims(), &[n, m]);
            let err = (&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                err < 1e-4,
                "n={n} k={k} m={m}: {err} from f32 on rounded operands"
            );
            let full = f32_layer.forward(&x)?;
            let err = (&got - &full)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let range = full.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                err < 2e-2 * range,
                "n={n} k={k} m={m}: {err} of {range} from f32"
            );
        }
        Ok(())
    }
}
