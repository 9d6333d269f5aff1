"""PyTorch eager on the GPU, beside `geoloc gpu-check`: images/s of VGG16, GoogLeNet
(torchvision) and EfficientNet-Lite0 (efficientnet_lite_pytorch, shipped in the bundle) at
each batch, in f32 and bf16, timed as geoloc times itself: 8-bit HWC pixels on the host,
uploaded, converted and normalised on the device, the forward pass, the logits back on
the host. Weights are random (they do not change the cost).

Modes:
  f32-strict   f32 with TF32 off in matmul and cuDNN (what geoloc's f32 runs: cuBLAS f32)
  f32-default  PyTorch's defaults (cuDNN convolutions may use TF32)
  bf16         the model in bf16 (what geoloc's bf16 runs: weights and activations)
  bf16-autocast  f32 weights under torch.autocast(bfloat16), channels-last

Prints one line per measurement: PEER model=... mode=... batch=... images_per_s=...
usage: python3 featurize_peer.py [--batches 64,256] [--seconds 3]
"""
import argparse
import time

import torch
import torchvision

ap = argparse.ArgumentParser()
ap.add_argument("--batches", default="64,256")
ap.add_argument("--seconds", type=float, default=3.0)
ap.add_argument("--models", default="vgg16,googlenet,lite0")
args = ap.parse_args()
dev = torch.device("cuda")
print(f"torch {torch.__version__} cuda {torch.version.cuda} on {torch.cuda.get_device_name(0)}", flush=True)


def build(name):
    if name == "vgg16":
        return torchvision.models.vgg16(weights=None)
    if name == "googlenet":
        return torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
    if name == "lite0":
        from efficientnet_lite_pytorch import EfficientNet
        m = EfficientNet.from_name("efficientnet-lite0")
        m.set_swish(memory_efficient=False)
        return m
    raise ValueError(name)


mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1) * 255
std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1) * 255


def run(model, pixels, dtype, channels_last, autocast):
    x = pixels.to(dev, non_blocking=False).permute(0, 3, 1, 2).float()
    x = (x - mean) / std
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if dtype is not None:
        x = x.to(dtype)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        y = model(x)
    return y.float().cpu()


for name in args.models.split(","):
    base = build(name).eval().to(dev)
    for mode in ["f32-strict", "f32-default", "bf16", "bf16-autocast"]:
        strict = mode == "f32-strict"
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = not strict
        model = base
        dtype = None
        channels_last = mode == "bf16-autocast"
        if mode == "bf16":
            model = build(name).eval().to(dev).to(torch.bfloat16)
            dtype = torch.bfloat16
        if channels_last:
            model = base.to(memory_format=torch.channels_last)
        for batch in [int(b) for b in args.batches.split(",")]:
            pixels = torch.randint(0, 256, (batch, 224, 224, 3), dtype=torch.uint8)
            run(model, pixels, dtype, channels_last, mode == "bf16-autocast")
            torch.cuda.synchronize()
            n = 0
            t0 = time.perf_counter()
            while n < 3 or time.perf_counter() - t0 < args.seconds:
                run(model, pixels, dtype, channels_last, mode == "bf16-autocast")
                n += 1
            torch.cuda.synchronize()
            s = time.perf_counter() - t0
            print(f"PEER model={name} mode={mode} batch={batch} images_per_s={n * batch / s:.1f}", flush=True)
        if channels_last:
            base = base.to(memory_format=torch.contiguous_format)
    del base
    torch.cuda.empty_cache()
