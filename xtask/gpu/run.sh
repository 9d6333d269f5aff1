#!/usr/bin/env bash
# The geoloc device check, written by `cargo xtask gpu-bundle` (README, "The CUDA build").
# Run it on a machine with an NVIDIA GPU and its driver, from anywhere:
#   bash run.sh                 # results in ./out (or $OUT)
# It runs, each under a time limit (under 8 minutes in all on an H200):
#   1. geoloc gpu-check: parity of the CUDA features with the CPU reference computed where
#      the bundle was made (f32, f16, bf16), images/s per backbone, batch and dtype, and the
#      MLP's steps on the GPU against the CPU trainer;
#   2. PyTorch eager on the same GPU, same networks, batches and dtypes (featurize_peer.py);
#   3. the tiny demo pipeline with featurize and train on CUDA (synthetic photos made here).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
T0=$(date +%s)
say() { echo "== $* (at $(( $(date +%s) - T0 )) s)" | tee -a "$OUT/summary.txt"; }

BIN=$HERE/geoloc
if [ ! -x "$BIN" ]; then
  xz -dc "$HERE/geoloc.xz" > "$BIN.tmp" && chmod +x "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
fi
# The driver's libcuda.so.1 comes from the system; cuBLAS, cuRAND and NVRTC from the system
# or from PyTorch's CUDA wheels (site-packages/nvidia/*/lib); libcudart.so.13 ships here.
PYLIBS=$(python3 - <<'PY' 2>/dev/null
import glob, os
dirs = set()
try:
    import nvidia
    for root in nvidia.__path__:
        for p in glob.glob(os.path.join(root, "**", "lib*.so*"), recursive=True):
            dirs.add(os.path.dirname(p))
except Exception:
    pass
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="$HERE/lib${PYLIBS:+:$PYLIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
ldd "$BIN" > "$OUT/ldd.txt" 2>&1
if grep -q "not found" "$OUT/ldd.txt"; then
  say "libraries not found:"; grep "not found" "$OUT/ldd.txt" | tee -a "$OUT/summary.txt"
fi
"$BIN" --version 2>&1 | tee -a "$OUT/summary.txt"

say "gpu-check"
timeout 240 "$BIN" gpu-check run --bundle "$HERE/bundle" --device cuda --out "$OUT" \
  > "$OUT/gpu-check.log" 2>&1
echo "gpu-check exit $?" | tee -a "$OUT/summary.txt"
tail -n 40 "$OUT/gpu-check.log"

say "PyTorch eager"
PYTHONPATH="$HERE/peer/efficientnet_lite_pytorch-0.1.0-py3-none-any.whl${PYTHONPATH:+:$PYTHONPATH}" \
  timeout 150 python3 "$HERE/peer/featurize_peer.py" > "$OUT/peer.log" 2>&1
echo "peer exit $?" | tee -a "$OUT/summary.txt"
grep PEER "$OUT/peer.log" | tail -n 30

say "tiny demo with featurize and train on CUDA"
DEMO=$(mktemp -d)
cp -r "$HERE/demo/pipelines" "$DEMO/"
mkdir -p "$DEMO/data" && ln -s "$HERE/bundle/weights" "$DEMO/data/weights"
(
  cd "$DEMO" &&
    "$BIN" --no-progress synth mediaeval --out data/demo --rows 1500 --seed 7 &&
    timeout 240 "$BIN" --no-progress run pipelines/demo.toml
) > "$OUT/demo.log" 2>&1
echo "demo exit $?" | tee -a "$OUT/summary.txt"
cp "$DEMO/runs/demo/evaluate/metrics.json" "$OUT/demo-metrics.json" 2>/dev/null
cp "$DEMO/runs/demo/lite0/_manifest.json" "$OUT/demo-lite0-manifest.json" 2>/dev/null
grep -E "lite0|country|geocells|evaluate|error" "$OUT/demo.log" | tail -n 20
say "done"
