#!/usr/bin/env bash
# The one command for a GPU window: check the data and the GPU, install resnetlab, run the CUDA tests and a
# 30-second benchmark, then `resnetlab experiment campaign` for the rest of the window, its carry packed into
# OUT after every carry; and, back on the development machine, land what came back: campaign/ replaced, the
# window's new networks added to weights/, the results page's "full schedule" section redrawn from them.
#
# Usage:
#   scripts/gpu_campaign.sh --prepare        here, before each window: the CIFAR-10 archive into .gpu/data and
#                                            the commit into .gpu/commit (git-ignored; the machine reaches
#                                            nothing and has no .git), and what the window will receive, in
#                                            bytes: refused over 64 MiB
#   scripts/gpu_campaign.sh OUT [SECONDS]    on the GPU machine, from the repository root (carry .gpu); SECONDS
#                                            (default 540) is the time the command has: the campaign ends 45 s
#                                            before it. OUT: window.log, manifest.json and the carry as tar
#                                            parts of <=15 MiB (at most 6; 64 MiB with the log), repacked after
#                                            each carry of the campaign, so a kill at any moment leaves the last
#   scripts/gpu_campaign.sh --land DIR       here: check DIR's manifest, parts and members, then swap campaign/
#                                            and weights/ in (or touch nothing, one line why); redraw
#                                            docs/results.md's "full schedule" section; then commit them
#
# With the project's device tool: run(command="bash scripts/gpu_campaign.sh $OUT <seconds>", carry=[".gpu"],
# timeout_s=600), <seconds> the call's timeout_s, or less where the session's device time left (status:
# budget_left_s) less the machine's start (1-3 minutes) is less; then `scripts/gpu_campaign.sh --land
# <files_at>`. If the CUDA tests fail the campaign still runs, eager (train.cuda_graph=off), said in the log.
# More campaign arguments: GPU_CAMPAIGN_ARGS (e.g. "--set train.cuda_graph=off"). GPU_CAMPAIGN_REHEARSAL=cpu
# swaps the GPU lines out (no nvidia-smi, no CUDA check, no install, no benchmark): tests/test_gpu_window.py
# rehearses a whole window on the CPU that way, GPU_CAMPAIGN_TESTS naming the tests it runs and
# GPU_CAMPAIGN_RUNS the run folder (default /tmp/campaign-runs).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
    set -e
    source="${RESNETLAB_DATA:-$(cd .. && pwd)/shared/data}/cifar10-jpeg.tar.gz"
    [ -f "$source" ] || { echo "gpu_campaign: no $source (set RESNETLAB_DATA to the folder holding it)" >&2; exit 2; }
    mkdir -p .gpu/data
    cmp -s "$source" .gpu/data/cifar10-jpeg.tar.gz || cp "$source" .gpu/data/
    commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
    dirty=false
    [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && dirty=true
    echo "$commit $dirty" >.gpu/commit
    rm -f .gpu/window.json
    echo "gpu_campaign: .gpu ready (CIFAR-10 $(du -h .gpu/data/cifar10-jpeg.tar.gz | cut -f1), commit $commit$([ $dirty = true ] && echo ', with uncommitted changes'))"
    "${PY:-python3}" scripts/gpu_window.py sent --carry .gpu  # exit 2 over the limit
    exit 0
fi

if [ "${1:-}" = "--land" ]; then
    from="${2:?usage: scripts/gpu_campaign.sh --land DIR}"
    lock="${CPU_WINDOW_STATE:-runs/cpu-window}/lock"
    if [ -f "$lock" ] && ! flock -n "$lock" true; then
        echo "gpu_campaign: a CPU window is running; scripts/cpu_window.sh stop first (its next carry would write over what lands)" >&2
        exit 2
    fi
    PY=${PY:-.venv/bin/python}
    [ -x "$PY" ] || PY=python3
    "$PY" scripts/gpu_window.py land "$from" || exit $?
    "$PY" scripts/full_schedule.py --carry campaign --weights weights --page docs/results.md
    echo "gpu_campaign: now review and commit campaign/, weights/ and docs/results*"
    exit 0
fi

OUT="${1:?usage: scripts/gpu_campaign.sh OUT [SECONDS] (on the GPU machine) | --prepare | --land DIR}"
TOTAL="${2:-${GPU_CAMPAIGN_SECONDS:-540}}"
[[ "$TOTAL" =~ ^[0-9]+$ ]] || { echo "gpu_campaign: SECONDS must be a whole number of seconds, got $TOTAL" >&2; exit 2; }
REHEARSAL=${GPU_CAMPAIGN_REHEARSAL:-}
START=$(date +%s)
mkdir -p "$OUT"
exec > >(tee -a "$OUT/window.log") 2>&1
elapsed() { echo $(( $(date +%s) - START )); }
step() { echo; echo "== $* (at $(elapsed) s of $TOTAL)"; }
PY=${PY:-python3}

step "the carry (.gpu) and the window"
read -r commit dirty <.gpu/commit 2>/dev/null || { echo "gpu_campaign: no .gpu/commit: run scripts/gpu_campaign.sh --prepare there and carry .gpu"; exit 1; }
export RESNETLAB_GIT_COMMIT="$commit" RESNETLAB_GIT_DIRTY="$dirty"  # the records' commit: the tree has no .git
export RESNETLAB_DATA="${RESNETLAB_DATA:-$PWD/.gpu/data}" RESNETLAB_CACHE="${RESNETLAB_CACHE:-/tmp/resnetlab-cache}"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=15  # progress bars into a log file: a line every 15 s, not hundreds
[ -n "$(ls -A "$RESNETLAB_DATA" 2>/dev/null)" ] || { echo "gpu_campaign: nothing in $RESNETLAB_DATA (run --prepare there and carry .gpu)"; exit 1; }
timeout 60 "$PY" scripts/gpu_window.py start --commit "$commit" || exit 1

if [ -z "$REHEARSAL" ]; then
    step "the GPU"
    timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "gpu_campaign: no GPU here"; exit 1; }
    [ -x .venv/bin/python ] && timeout 60 .venv/bin/python -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null && PY=.venv/bin/python
    timeout 90 "$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name(), 'TF32 convolutions', torch.backends.cudnn.allow_tf32, 'matmul', torch.backends.cuda.matmul.allow_tf32)" || exit 1

    step "install resnetlab (no index: the machine reaches nothing; torch, torchvision, safetensors, tqdm, matplotlib are there)"
    timeout 120 "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>/dev/null || {
        echo "pip could not install it; using the source tree on PYTHONPATH"
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    }
else
    step "rehearsal ($REHEARSAL): no GPU check, no install; the source tree on PYTHONPATH"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
timeout 90 "$PY" -c "import resnetlab; print('resnetlab', resnetlab.__version__)" || exit 1

step "the data"
timeout 300 "$PY" -m resnetlab data cifar10 --no-download || { echo "gpu_campaign: no CIFAR-10 in $RESNETLAB_DATA (run --prepare there and carry .gpu)"; exit 1; }

step "CUDA tests"
# The trainer's SIGTERM handler only notes the signal while it trains; --kill-after ends pytest regardless.
# shellcheck disable=SC2086  # GPU_CAMPAIGN_TESTS is split into words on purpose
timeout --signal=TERM --kill-after=15 150 "$PY" -m pytest -q -p no:cacheprovider ${GPU_CAMPAIGN_TESTS:-tests/test_cuda.py}
tests=$?
# shellcheck disable=SC2206
ARGS=(${GPU_CAMPAIGN_ARGS:-})
if [ "$tests" -ne 0 ]; then
    echo "gpu_campaign: CUDA TESTS FAILED (status $tests): THE CAMPAIGN TRAINS EAGER (train.cuda_graph=off) THIS WINDOW; read the log above"
    ARGS+=(--set train.cuda_graph=off)
fi

if [ -z "$REHEARSAL" ]; then
    step "benchmark, 30 s"
    timeout --signal=TERM --kill-after=10 60 "$PY" scripts/bench_train.py --device cuda --models resnet20 --seconds 1.5 --warmup 6
fi

pack() {  # the carry into OUT; a failed pack keeps the previous one and says why
    echo "gpu_campaign: packing the carry ($1, at $(elapsed) s)"
    timeout 60 "$PY" scripts/gpu_window.py pack "$OUT" || echo "gpu_campaign: NOT PACKED; OUT keeps the previous pack"
}

budget=$(( TOTAL - $(elapsed) - 45 ))
step "campaign, ${budget} s"
if [ "$budget" -gt 60 ]; then
    CAMPAIGN=("$PY" -m resnetlab experiment campaign --budget "$budget" --runs "${GPU_CAMPAIGN_RUNS:-/tmp/campaign-runs}" --carry campaign
        --weights weights "${ARGS[@]}")
    echo "${CAMPAIGN[*]}"
    # Past its budget by 15 s (it should never be), SIGTERM: the trainer finishes the step, saves, and the
    # campaign carries its runs; 20 s later a kill. The campaign prints "campaign: <unit>" after each carry
    # (before its next unit trains, when campaign/ is still): each such line packs the carry.
    timeout --preserve-status --signal=TERM --kill-after=20 $(( budget + 15 )) "${CAMPAIGN[@]}" 2>&1 |
        while IFS= read -r line; do
            printf '%s\n' "$line"
            case "$line" in "campaign: "*) pack "before ${line#campaign: }" ;; esac
        done
    status=${PIPESTATUS[0]}
    if [ "$status" -eq 0 ]; then
        pack "the window's last carry"
    else
        echo "gpu_campaign: the campaign exited with status $status; its last carry may be half written, so OUT keeps the pack of the carry before"
    fi
else
    echo "gpu_campaign: only ${budget} s left; no campaign this window"
    pack "the window's starting state"
fi
ls -l "$OUT"
echo "gpu_campaign: done at $(elapsed) s of $TOTAL"
