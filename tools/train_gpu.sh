#!/usr/bin/env bash
# Continues the s4-starter recipe on one GPU in bfloat16 for a fixed number of minutes, then reports samples/s and
# the held-out scorecard of the new best step beside the shipped weights'. Never part of CI.
#
#   bash tools/train_gpu.sh [MINUTES=8] [RUN_DIR=/tmp/s4_gpu]
#
# Starts from the shipped weights (init_from), 64^3 crops at batch 16 (the GPU has the memory the CPU recipe
# lacked), bf16 convolutions with float32 params and correlation. The run stops on SIGTERM after MINUTES and
# saves a checkpoint. If the scorecard is better, export it over the shipped weights with the command printed.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-8}"
run="${2:-/tmp/s4_gpu}"
python -c 'import jax; d = jax.devices()[0]; print("device:", d.platform, d.device_kind)'

timeout --signal=TERM "${minutes}m" python train.py --config=configs/s4_starter.py:mix --workdir="$run" \
  --config.init_from=raftdvc_jax/weights/s4-starter --config.train.compute_dtype=bfloat16 \
  --config.train.batch_size=16 --config.data.synthetic.size=64 --config.data.num_workers=12 \
  --config.train.num_steps=20000 --config.train.lr=2e-4 --config.train.eval_every=500 \
  --config.train.checkpoint_every=500 || true

python - "$run" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1] + '/metrics.jsonl')]
speed = [r['steps_per_s'] for r in rows if r.get('steps_per_s')]
vals = [(r['step'], r['val_epe'], r['val_zero_epe']) for r in rows if 'val_epe' in r]
print(f'steps: {rows[-1]["step"]}  samples/s: {16 * sum(speed) / max(len(speed), 1):.1f}  (batch 16, 64^3, bf16)')
for step, epe, zero in vals:
  print(f'  step {step}: val_epe {epe:.4f}  val_zero_epe {zero:.4f}')
PY
python tools/eval_weights.py --checkpoint "$run" --size 64 --per_cell 2 --suites synthetic,blobs
echo "shipped weights, for comparison:"
python tools/eval_weights.py --checkpoint s4-starter --size 64 --per_cell 2 --suites synthetic,blobs
echo "if better: python tools/export_weights.py --run $run --output raftdvc_jax/weights/s4-starter --overwrite"
