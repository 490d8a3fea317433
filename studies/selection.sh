#!/usr/bin/env bash
# Issue 26's evidence (results/selection/): the offline selection scores of the reference study's finished
# runs, per algorithm x dataset cell, and the checkpoint each logged signal would pick, against the true
# returns. Re-running after more runs finish scores only the new ones (evaluate select reuses each run's
# offline_scores.json for the same checkpoint and settings).
#   bash studies/selection.sh [SWEEP_DIR]      (default: the reference study's worktree)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
sweep="${1:-$HOME/.cache/sparse_offline_rl/study-reference/sweeps/reference}"
python="${SORL_PYTHON:-$repo/.venv/bin/python}"
export MINARI_DATASETS_PATH="${MINARI_DATASETS_PATH:-$repo/datasets/minari}"
out="$repo/results/selection"
mkdir -p "$out"
for cell in "algo=iql,env=hopper" "algo=iql,env=walker2d" "algo=iql,env=halfcheetah" \
            "algo=td3bc,env=hopper" "algo=td3bc,env=walker2d" "algo=td3bc,env=halfcheetah"; do
  runs=(); missing=0
  for d in "$sweep/$cell,"*; do
    [ -f "$d/summary.json" ] || continue
    if [ -f "$d/checkpoint.pt" ]; then runs+=("$d"); else missing=$((missing + 1)); fi
  done
  # A run restored from results/reference after a machine was replaced has no checkpoint to score: the
  # cell's published tables, made with it, stay as they are rather than being remade without it.
  if [ "$missing" -gt 0 ]; then
    echo "skip $cell: $missing finished run(s) have no checkpoint (restored); its published tables are kept" >&2
    continue
  fi
  [ "${#runs[@]}" -ge 3 ] || continue
  name="${cell//algo=/}"; name="${name//,env=/-}-medium"
  nice -n 19 "$python" -m sparse_offline_rl.evaluate select "${runs[@]}" "out=$out/$name.json" seed=0 | sed "s|$sweep/||g" > "$out/$name.txt"
  nice -n 19 "$python" -m sparse_offline_rl.evaluate checkpoints "${runs[@]}" "out=$out/$name-checkpoints.json" \
    | sed "s|$sweep/||g" > "$out/$name-checkpoints.txt"
done
