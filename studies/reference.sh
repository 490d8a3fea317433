#!/usr/bin/env bash
# The reference study (README "Reference results"), run in the background from its own git worktree at a
# fixed commit, so that later changes to the code never reach running jobs. Re-running this script
# resumes: finished runs are skipped, interrupted ones continue from their last checkpoint.
#   bash studies/reference.sh [COMMIT] [BLOCKS] [OVERRIDES...]
#   e.g.  bash studies/reference.sh HEAD "pai dense curve"
#         bash studies/reference.sh 58d4084 dense hydra.launcher.max_members=1
# OVERRIDES go to every block's `run.py -m` after the preset; they may only change how the runs are
# scheduled (group size, groups at a time, which cells), never a run's settings, or the study would not
# be one protocol. A machine that can be replaced between sessions loses every unfinished group: size
# the groups to finish within a session (results/reference/README.md, "Size the groups to the session").
# Worktree: $SORL_STUDY_DIR (default ~/.cache/sparse_offline_rl/study-reference); the runs, with their
# checkpoints, stay in its sweeps/reference; logs in its logs/. Datasets come from this checkout's
# datasets/minari (MINARI_DATASETS_PATH), made once.
set -euo pipefail
# With the kernel's autogroups (sched_autogroup_enabled=1) nice orders processes within one session
# only: a study started in a session of its own (setsid, as the README says) would take an equal share
# of the cores from every other session. Its whole autogroup is niced instead; only when this script
# leads its session, so that a shell running it in the foreground is left alone.
if [ -w /proc/self/autogroup ] && [ "$(ps -o sid= -p $$ | tr -d ' ')" = "$$" ]; then
  echo 19 > /proc/self/autogroup
fi
repo="$(cd "$(dirname "$0")/.." && pwd)"
commit="${1:-HEAD}"
blocks="${2:-pai dense curve}"
extra=("${@:3}")
envs=""
for override in "${extra[@]}"; do
  case "$override" in
    env=*) envs="${override#env=}" ;;
    hydra.launcher.*|algo=*|pruner=*|sparsity=*|seed=*) ;;
    *) echo "error: override $override is not accepted: accepted: hydra.launcher.*, env=, algo=, pruner=, sparsity=, seed=" >&2; exit 1 ;;
  esac
done
export MINARI_DATASETS_PATH="${MINARI_DATASETS_PATH:-$repo/datasets/minari}"
python="${SORL_PYTHON:-$repo/.venv/bin/python}"
# A cell's seeds must share one draw of its dataset, and another CPU platform makes another draw
# (docs/reproducibility.md): refuse the datasets this machine holds another draw of than the published runs.
"$python" -m sparse_offline_rl.report "$repo/results/reference" --check-draws "$envs" || exit 1
study="${SORL_STUDY_DIR:-$HOME/.cache/sparse_offline_rl/study-reference}"
want="$(git -C "$repo" rev-parse "$commit")"
if [ ! -d "$study" ]; then
  git -C "$repo" worktree add --detach "$study" "$want"
fi
have="$(git -C "$study" rev-parse HEAD)"
if [ "$have" != "$want" ]; then
  echo "error: $study is at $have, not $want; a study keeps one commit (finish it, or set SORL_STUDY_DIR)" >&2
  exit 1
fi
# A machine can be replaced between sessions, taking the worktree's runs with it: the runs already
# published in results/reference are put back (summary, curve, config; no checkpoint), so the launcher
# skips them instead of training them again. Only runs of this commit are restored.
mkdir -p "$study/sweeps/reference" "$study/logs"
for run in "$repo"/results/reference/algo=*; do
  [ -f "$run/summary.json" ] || continue
  target="$study/sweeps/reference/$(basename "$run")"
  [ -e "$target" ] && continue
  grep -q "\"commit\": \"$want\"" "$run/summary.json" || continue
  cp -r "$run" "$target"
  echo "$(date -u +%FT%TZ) restored $(basename "$run") from results/reference (no checkpoint)" >> "$study/logs/blocks.log"
done
cd "$study"
for block in $blocks; do
  case "$block" in
    pai) preset=reference ;;
    dense|curve|during) preset="reference_$block" ;;
    *) echo "error: block=$block is invalid: accepted: pai, dense, curve, during" >&2; exit 1 ;;
  esac
  echo "$(date -u +%FT%TZ) start $preset at $have ${extra[*]}" >> logs/blocks.log
  PYTHONPATH="$study" nice -n 19 "$python" run.py -m "+sweep=$preset" "${extra[@]}" >> "logs/$preset.log" 2>&1
  echo "$(date -u +%FT%TZ) end $preset" >> logs/blocks.log
done
