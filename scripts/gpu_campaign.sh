#!/usr/bin/env bash
# The one command for a GPU window: check the GPU, install resnetlab, run the CUDA tests and a 30-second
# benchmark, then `resnetlab experiment campaign` for the rest of a 9-minute command, everything written into
# OUT; and, back on the development machine, land what came back: the records into campaign/, the finished
# networks into weights/, and the results page's "full schedule" section redrawn from them.
#
# Usage:
#   scripts/gpu_campaign.sh --prepare       here, once: copy the CIFAR-10 archive into .gpu/data (git-ignored;
#                                           the GPU machine reaches nothing, so the data travels with the tree)
#   scripts/gpu_campaign.sh OUT             on the GPU machine, from the repository root (carry .gpu); the
#                                           window's log and campaign/ + weights/ as <=15 MiB tar parts in OUT
#   scripts/gpu_campaign.sh --land DIR      here: unpack DIR's parts over campaign/ and weights/, redraw
#                                           docs/results.md's "full schedule" section; then commit them
#
# With the project's device tool: run(command="bash scripts/gpu_campaign.sh $OUT", carry=[".gpu"],
# timeout_s=600), then `scripts/gpu_campaign.sh --land <files_at>/...`. GPU_CAMPAIGN_SECONDS (default 540)
# is the whole command's length; the campaign gets what the checks leave, less 45 s to pack the output.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
    set -e
    source="${RESNETLAB_DATA:-$(cd .. && pwd)/shared/data}/cifar10-jpeg.tar.gz"
    [ -f "$source" ] || { echo "gpu_campaign: no $source (set RESNETLAB_DATA to the folder holding it)" >&2; exit 2; }
    mkdir -p .gpu/data && cp "$source" .gpu/data/
    echo "gpu_campaign: .gpu/data/cifar10-jpeg.tar.gz ready ($(du -h .gpu/data/cifar10-jpeg.tar.gz | cut -f1)); carry .gpu"
    exit 0
fi

if [ "${1:-}" = "--land" ]; then
    set -e
    from="${2:?usage: scripts/gpu_campaign.sh --land DIR}"
    lock="${CPU_WINDOW_STATE:-runs/cpu-window}/lock"
    if [ -f "$lock" ] && ! flock -n "$lock" true; then
        echo "gpu_campaign: a CPU window is running; scripts/cpu_window.sh stop first (its next carry would write over what lands)" >&2
        exit 2
    fi
    parts=("$from"/carry.tar.part-*)
    [ -f "${parts[0]}" ] || { echo "gpu_campaign: no carry.tar.part-* in $from" >&2; exit 2; }
    cat "${parts[@]}" | tar -tf - >/dev/null || { echo "gpu_campaign: the parts in $from do not make a whole tar" >&2; exit 2; }
    before=$(du -sb campaign weights 2>/dev/null | awk '{s += $1} END {print s + 0}')
    rm -rf campaign weights
    cat "${parts[@]}" | tar -xf -
    after=$(du -sb campaign weights 2>/dev/null | awk '{s += $1} END {print s + 0}')
    echo "gpu_campaign: landed campaign/ and weights/ from $from; the repository's share grew by $(( (after - before) / 1000 )) kB to $(( after / 1000 )) kB"
    [ -f "$from/window.log" ] && cp "$from/window.log" campaign/last-window.log
    PY=${PY:-.venv/bin/python}
    "$PY" scripts/full_schedule.py --carry campaign --weights weights --page docs/results.md
    echo "gpu_campaign: now review and commit campaign/, weights/ and docs/results*"
    exit 0
fi

OUT="${1:?usage: scripts/gpu_campaign.sh OUT (on the GPU machine) | --prepare | --land DIR}"
START=$(date +%s)
TOTAL=${GPU_CAMPAIGN_SECONDS:-540}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/window.log") 2>&1
elapsed() { echo $(( $(date +%s) - START )); }
step() { echo; echo "== $* (at $(elapsed) s)"; }

step "the GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "gpu_campaign: no GPU here"; exit 1; }
PY=python3
[ -x .venv/bin/python ] && .venv/bin/python -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null && PY=.venv/bin/python
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1

step "install resnetlab (no index: the machine reaches nothing; torch, torchvision, safetensors, tqdm, matplotlib are there)"
"$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>/dev/null || {
    echo "pip could not install it; using the source tree on PYTHONPATH"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
}
"$PY" -c "import resnetlab; print('resnetlab', resnetlab.__version__)" || exit 1
export RESNETLAB_DATA="${RESNETLAB_DATA:-$PWD/.gpu/data}" RESNETLAB_CACHE="${RESNETLAB_CACHE:-/tmp/resnetlab-cache}"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=15  # progress bars into a log file: a line every 15 s, not hundreds

step "CUDA tests"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py || echo "gpu_campaign: CUDA TESTS FAILED (the campaign still runs; read the log)"

step "benchmark, 30 s"
timeout 60 "$PY" scripts/bench_train.py --device cuda --models resnet20 --seconds 1.5 --warmup 6

step "the data"
timeout 120 "$PY" -m resnetlab data cifar10 --no-download || { echo "gpu_campaign: no CIFAR-10 in $RESNETLAB_DATA (run --prepare here and carry .gpu)"; exit 1; }

budget=$(( TOTAL - $(elapsed) - 45 ))
step "campaign, ${budget} s"
if [ "$budget" -gt 60 ]; then
    # Past its budget by 15 s (it should never be), SIGTERM: the trainer finishes the step, saves, and the
    # campaign carries its runs; 30 s later a kill. Each finished unit is carried as it finishes.
    timeout --signal=TERM --kill-after=30 $(( budget + 15 )) \
        "$PY" -m resnetlab experiment campaign --budget "$budget" --runs /tmp/campaign-runs --carry campaign --weights weights
else
    echo "gpu_campaign: only ${budget} s left; no campaign this window"
fi

step "pack campaign/ and weights/ into OUT"
mkdir -p campaign weights
tar -cf - campaign weights | split -b 15m -d -a 1 - "$OUT/carry.tar.part-"
ls -l "$OUT"
n=$(ls "$OUT"/carry.tar.part-* | wc -l)
[ "$n" -le 7 ] || echo "gpu_campaign: WARNING: $n parts; the window gives back 8 files, 64 MiB"
echo "gpu_campaign: done at $(elapsed) s"
