#!/usr/bin/env bash
# Train configs/digits_cnn.yaml (its own settings except the named override) and keep the
# SpectralMonitor history as experiments/alert_rules/histories/<run>.jsonl.gz; then
#   python -m experiments.alert_rules.replay  # the RESULTS.md table under default_rules()
#   flock /tmp/bench.lock experiments/alert_rules/run.sh <run>
# Runs: healthy (lr 0.003, the config's own; healthy_s1/_s2: seeds 1 and 2), lr_10x (0.03), lr_tiny (1e-6), frozen (features.2
# frozen at its initial values); bn_adam, bn_sgd_wd (SGD lr 0.1, momentum 0.9, weight decay
# 5e-4), bn_adam_lr_10x: the same net with BatchNorm after every conv (models.BatchNormCNN). The demo's history (svd-callback demo, 8 epochs) is saved as
# demo.jsonl.gz by hand: python -c "from svd_callback.demo import run_demo; run_demo()".
set -euo pipefail
run=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-/work/main/.venv/bin/python}
out=$(mktemp -d)
args=(fit --config "$root/configs/digits_cnn.yaml" --trainer.logger.init_args.save_dir "$out"
      --trainer.enable_progress_bar false)
case $run in
  healthy) ;;
  healthy_s1) args+=(--seed_everything 1 --data.init_args.seed 1) ;;
  healthy_s2) args+=(--seed_everything 2 --data.init_args.seed 2) ;;
  lr_10x) args+=(--model.init_args.lr 0.03) ;;
  lr_tiny) args+=(--model.init_args.lr 1e-6) ;;
  frozen) args+=(--model.class_path experiments.common.PartlyFrozenCNN
                 --model.init_args.frozen '[features.2]') ;;
  bn_adam) args+=(--model.class_path experiments.alert_rules.models.BatchNormCNN) ;;
  bn_sgd_wd) args+=(--model.class_path experiments.alert_rules.models.BatchNormCNN
                    --model.init_args.optimizer sgd --model.init_args.lr 0.1
                    --model.init_args.weight_decay 5e-4) ;;
  bn_adam_lr_10x) args+=(--model.class_path experiments.alert_rules.models.BatchNormCNN
                         --model.init_args.lr 0.03) ;;
  *) echo "unknown run $run" >&2; exit 2 ;;
esac
cd "$root"
OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 PYTHONPATH="$root" "$python" -m experiments.train "${args[@]}"
mkdir -p "$root/experiments/alert_rules/histories"
gzip -9 -n < "$(find "$out" -name spectral_history.jsonl | head -1)" \
   > "$root/experiments/alert_rules/histories/$run.jsonl.gz"
rm -rf "$out"
