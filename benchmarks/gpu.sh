#!/usr/bin/env bash
# Issue 18's whole GPU measurement as one script for the lent device machine (one H200; the runs' time limits add up
# to 570 s), rerunnable as is. Every figure is a `raylab bench` JSON: images/s, TFLOP/s from the FLOPs counted per
# update, the fraction of the bf16 limit (--peak-tflops), the static-shape, CUDA-graph and compiled paths beside the
# float32 eager baseline of the same run, and the share of a real stream's accept/reject decisions that autocast keeps.
#
# Prepare here: benchmarks/gpu_prepare.sh (Ray's slim wheel and the wheels it lacks there into .whl/, the data into
# shared/data/: only the checkout travels). Run there (device tool):
#   run command="bash benchmarks/gpu.sh" carry=[".whl", "shared"] timeout_s=580
# Everything comes back in one archive, $OUT/gpu-bench.tar.gz (the tool returns at most 8 files); unpack it here:
#   tar xzf <files_at>/gpu-bench.tar.gz -C docs/bench
# --peak-tflops: 790 is the bf16 matrix rate measured on the H200 (device notes); 395, half of it, stands for TF32
# convolutions in float32.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-docs/bench}  # the device's $OUT, from which the tool returns at most 8 files: so one archive goes there
W=${WORK:-/tmp/gpu-bench}  # every figure, log and profile, packed into $OUT/gpu-bench.tar.gz after each step
PY=${PYTHON:-python3}
rm -rf "$W" && mkdir -p "$W" "$OUT"
pack() {  # a run cut off at its limit still returns what it measured; the Chrome trace is dropped if it is too big
  tar czf "$OUT/gpu-bench.partial.tgz" -C "$W" . || return
  if [ "$(stat -c %s "$OUT/gpu-bench.partial.tgz")" -gt $((15 * 1024 * 1024)) ]; then
    tar czf "$OUT/gpu-bench.partial.tgz" -C "$W" --exclude='*-profile.json' .
  fi
  mv "$OUT/gpu-bench.partial.tgz" "$OUT/gpu-bench.tar.gz"
}
# the carried wheels go to a folder of their own, as the device notes do it (the image's Python may not be writable)
SITE=${SITE:-/tmp/site}
export PYTHONPATH=$SITE:$PWD
if ! $PY -c "import ray, webdataset" 2>/dev/null; then
  # a failure here is reported, not fatal: what does not need the missing piece is still measured
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || echo "cannot install the carried wheels in .whl/ (gpu_prepare.sh makes them)"
  $PY -c "import ray, webdataset; print('ray', ray.__version__)" || echo "ray or webdataset does not import"
fi
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$W/gpu-machine.txt"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$W/gpu-machine.txt"
pack

bench() {  # name, seconds, bench arguments...
  local name=$1 limit=$2; shift 2
  echo "== $name"
  timeout "$limit" $PY -m raylab bench --device cuda --no-art --data-dir "${DATA:-shared/data}" "$@" \
    --out "$W/$name.json" > "$W/$name.log" 2>&1 || echo "   $name failed or ran out of time: see $W/$name.log"
  grep -E '"(batched|static|compiled|graphed|static_plain_copy|faithful|faithful_static|faithful_graphed|faithful_graphed_amp|bare_kernel)_(images_per_s|fraction_of_peak)"|decision_agreement|later_pass_over|rho_max_abs_diff_vs_static|prefetch_over_plain_copy' \
    "$W/$name.json" 2>/dev/null | sed 's/^/   /'
  pack
}
# InceptionV3 at 299 px (the paper's main model): float32 eager (today's baseline), then autocast with the
# static-shape update, each side by side with the eager batched mode in the same run; the autocast run also profiles
# two static-shape updates (op table by GPU self time, Chrome trace beside it). torch.compile runs on its own: a bench
# writes its JSON when it ends, so a compilation that outlasts its limit loses only the compiled figures.
bench gpu-inception-299-fp32 50 --arch inception_v3 --image-size 299 --channels 3 --images 500 --batch-size 256 \
  --no-faithful --peak-tflops 395
bench gpu-inception-299-amp 60 --arch inception_v3 --image-size 299 --channels 3 --images 500 --batch-size 256 \
  --amp --no-faithful --peak-tflops 790 --profile "$W/gpu-inception-299-amp-profile.txt"
bench gpu-inception-299-amp-compiled 90 --arch inception_v3 --image-size 299 --channels 3 --images 500 \
  --batch-size 256 --amp --compile --no-static --no-faithful --peak-tflops 790
# The faithful mode (batch 1, launch-bound) eager, static-shape and replayed from CUDA graphs, float32 and autocast.
bench gpu-inception-299-faithful-amp 100 --arch inception_v3 --image-size 299 --channels 3 --images 300 \
  --batch-size 256 --amp --peak-tflops 790
bench gpu-resnet50-224-amp 50 --arch resnet50 --image-size 224 --channels 3 --images 500 --batch-size 256 \
  --amp --no-faithful --peak-tflops 790
bench gpu-vgg16-224-amp 50 --arch vgg16 --image-size 224 --channels 3 --images 500 --batch-size 256 \
  --amp --no-faithful --peak-tflops 790
# The engine end to end on the GPU: JPEG shards -> reader actors (4 decode threads each) -> one GPU worker, against
# its bare kernel, decoding on the reader's CPU threads and on the worker's GPU (nvJPEG) side by side, and with the
# worker's next batch copied to the GPU during its current update (staging, the default on cuda) and without; the
# RGB model audits PneumoniaMNIST repeated to RGB. Also: one reader's decode rate, and nvJPEG's on whole batches.
echo "== gpu-engine-inception-299-amp"
timeout 130 $PY -m raylab bench --engine --device cuda --no-art --data-dir "${DATA:-shared/data}" --arch inception_v3 \
  --image-size 299 --channels 3 --images 500 --batch-size 256 --amp --workers 1 --cpus-per-worker 4 \
  --cpus-per-reader 4 --shard-format jpg --decode-on reader worker \
  --out "$W/gpu-engine-inception-299-amp.json" > "$W/gpu-engine-inception-299-amp.log" 2>&1 \
  || echo "   the engine run failed or ran out of time: see $W/gpu-engine-inception-299-amp.log"
grep -E '"(engine|engine_decode_on_worker|engine_stage_off)_1w_(images_per_s|over_bare_kernel|worker_idle_fraction)"|staged_over_unstaged|decode_images_per_s|transport_tensor_over' \
  "$W/gpu-engine-inception-299-amp.json" 2>/dev/null | sed 's/^/   /'
pack
# The GPU-only tests: nvJPEG against the reader's pixels (a level or so), the CUDA-graph UAP against the eager one,
# the overlapped copy's UAP against the plain copy's, a batch staged from another thread, and a training with dropout
# resumed to the weights of one never stopped (pytest and hypothesis are in the image)
timeout 40 $PY -m pytest -q -p no:cacheprovider tests/test_gpu_path.py tests/test_train.py -k "nvjpeg or cuda_graphs or overlapped or staged or (dropout and cuda)" > "$W/gpu-only-tests.log" 2>&1; \
  tail -1 "$W/gpu-only-tests.log" | sed 's/^/   GPU-only tests: /'
pack
ls -la "$W" "$OUT"
