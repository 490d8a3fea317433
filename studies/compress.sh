#!/usr/bin/env bash
# Issue 25's compress evidence (results/budget_search/): trained dense IQL hopper-medium runs fitted to an
# actor bytes budget (40 kB as TorchScript; the dense actor is 281 kB), by bisection and by the constrained
# allocator, without and with 5000 steps of masked fine-tuning, 3 seeds. Re-running skips finished outputs.
#   bash studies/compress.sh SOURCE_PREFIX OUT_DIR    (SOURCE_PREFIX-s0, -s1, -s2: the trained run directories)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
source_prefix="$1"
out="$2"
python="${SORL_PYTHON:-$repo/.venv/bin/python}"
export MINARI_DATASETS_PATH="${MINARI_DATASETS_PATH:-$repo/datasets/minari}"
mkdir -p "$out"
for seed in 0 1 2; do
  for search in bisect constrained; do
    for steps in 0 5000; do
      OMP_NUM_THREADS=1 "$python" -m sparse_offline_rl.compress "run_dir=$source_prefix-s$seed" \
        budget_cost=sparse_offline_rl.export:actor_bytes budget_cost_max=40000 "budget_search=$search" \
        "finetune_steps=$steps" "out=$out/s$seed-$search-ft$steps"
    done
  done
done
