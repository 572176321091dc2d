#!/usr/bin/env bash
# CPU windows: the full-schedule campaign (docs/training.md, "CPU windows") trained in the background of a
# working session, on what the CPU leaves idle, and carried into campaign/ and weights/ for a commit.
#
# Usage:
#   scripts/cpu_window.sh start    the campaign's CPU plan in the background at nice 19 (one at a time)
#   scripts/cpu_window.sh stop     SIGTERM, wait for the save, one line of the iterations gained per run
#   scripts/cpu_window.sh status   running or not; per run: iterations done and left, images/s, ETA
#
# The window is a loop of fresh `resnetlab experiment campaign --budget 600` processes: each one carries its
# runs into campaign/ before its 10 minutes are out, so a window killed without warning loses at most 10
# minutes of training; and a fresh process a start-up away does not keep the slow-down a long-lived one picks
# up when it shares the cores (OpenMP threads stuck in barrier waits after the other load has gone).
#
# Settings (environment; the defaults are the repository's own): RESNETLAB_DATA (the folder holding
# cifar10-jpeg.tar.gz; default ../shared/data beside the repository), PY (the interpreter; default
# .venv/bin/python, else python3), CPU_WINDOW_SECONDS (each process's budget, default 600),
# CPU_WINDOW_STATE (pid file and log; default runs/cpu-window), CPU_WINDOW_RUNS (runs/cifar10),
# CPU_WINDOW_CARRY (campaign), CPU_WINDOW_WEIGHTS (weights), CPU_WINDOW_ARGS (more campaign arguments,
# e.g. a tiny plan for the tests: "--iterations 40 --nets resnet20 --table6-seeds 1").
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STATE=${CPU_WINDOW_STATE:-$ROOT/runs/cpu-window}
RUNS=${CPU_WINDOW_RUNS:-$ROOT/runs/cifar10}
CARRY=${CPU_WINDOW_CARRY:-$ROOT/campaign}
WEIGHTS=${CPU_WINDOW_WEIGHTS:-$ROOT/weights}
DATA=${RESNETLAB_DATA:-$(cd "$ROOT/.." && pwd)/shared/data}
BUDGET=${CPU_WINDOW_SECONDS:-600}
STOP_WAIT=${CPU_WINDOW_STOP_WAIT:-120}
if [ -z "${PY:-}" ]; then
    PY=python3
    [ -x "$ROOT/.venv/bin/python" ] && PY=$ROOT/.venv/bin/python
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's code, whatever the venv has installed
LOG=$STATE/window.log
PIDFILE=$STATE/pid
# shellcheck disable=SC2206  # CPU_WINDOW_ARGS is split into words on purpose
CAMPAIGN=("$PY" -m resnetlab experiment campaign --plan cpu --runs "$RUNS" --carry "$CARRY" --weights "$WEIGHTS"
    --data-dir "$DATA" ${CPU_WINDOW_ARGS:-})

say() { echo "cpu_window: $*"; }

# The loop holds an flock on $STATE/lock for as long as it (or a campaign process it started) lives: a second
# start is refused, and a window that died leaves nothing stale behind.
running() { [ -f "$STATE/lock" ] && ! flock -n "$STATE/lock" true; }

case "${1:-}" in
_loop)  # the background window itself (started by `start`, in a session of its own)
    exec 9>"$STATE/lock"
    flock -n 9 || { say "another window holds $STATE/lock"; exit 1; }
    echo $$ >"$PIDFILE"
    stopping=
    trap 'stopping=1' TERM INT  # bash runs it once the campaign in the foreground has saved and exited
    # Lowest priority on both cores (nice 19 is inherited from `start`); OpenMP threads that sleep when idle
    # instead of spinning, so that the window yields to whatever runs in the foreground. With the kernel's
    # autogroups (sched_autogroup_enabled, on here) a process's nice counts only against its own session's:
    # setsid made this window a session of its own, which then took a full share beside each terminal's tests
    # (63 % of a core, seen). Its autogroup gets nice 19 too, so it yields to the other sessions as well.
    [ -w /proc/self/autogroup ] && { echo 19 >/proc/self/autogroup; } 2>/dev/null
    export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
    export PYTHONUNBUFFERED=1 RESNETLAB_CACHE=${RESNETLAB_CACHE:-$STATE/cache}
    while [ -z "$stopping" ]; do
        echo "== $(date '+%F %T') campaign process, ${BUDGET} s"
        "${CAMPAIGN[@]}" --budget "$BUDGET"
        rc=$?
        [ -n "$stopping" ] && break
        if [ "$rc" -ne 0 ]; then
            say "the campaign exited with status $rc; the window ends (the lines above say why)"
            break
        fi
        if tail -n 80 "$LOG" | grep -q "^the plan is done"; then
            say "the plan is done; the window ends"
            break
        fi
    done
    say "window ended at $(date '+%F %T')"
    rm -f "$PIDFILE"
    ;;
start)
    mkdir -p "$STATE"
    if running; then
        say "a window is already running (pid $(cat "$PIDFILE" 2>/dev/null)); log: $LOG" >&2
        exit 1
    fi
    rm -f "$PIDFILE"
    date +%s >"$STATE/started"
    echo "== $(date '+%F %T') cpu_window start: plan cpu, data $DATA, runs $RUNS, carry $CARRY" >>"$LOG"
    setsid nice -n 19 "$ROOT/scripts/cpu_window.sh" _loop </dev/null >>"$LOG" 2>&1 &
    loop=$!  # setsid execs in place here (a background job is no group leader): the loop's own pid
    # Say what it trains once the first process has chosen its unit, or why it did not start
    lines=$(wc -l <"$LOG")
    unit=
    for _ in $(seq 1 240); do
        unit=$(tail -n +"$((lines + 1))" "$LOG" | grep -m1 "^campaign: " | sed 's/^campaign: //; s/, [0-9]* s left$//')
        [ -n "$unit" ] && break
        if ! kill -0 "$loop" 2>/dev/null; then
            say "the window ended at once; the end of $LOG:" >&2
            tail -n 15 "$LOG" >&2
            exit 1
        fi
        sleep 0.5
    done
    say "training ${unit:-the CPU plan (still starting)} and on through the CPU plan, at nice 19 in the background (pid $(cat "$PIDFILE" 2>/dev/null)); log: $LOG"
    ;;
stop)
    since=$(cat "$STATE/started" 2>/dev/null || echo 0)
    if running; then
        pid=$(cat "$PIDFILE" 2>/dev/null)
        [ -n "$pid" ] || { say "a window holds $STATE/lock but left no pid file; stop it by hand" >&2; exit 1; }
        kill -TERM -- "-$pid" 2>/dev/null
        # A SIGTERM that lands between two units' training (where no trainer listens) stops the campaign
        # before its next unit; one more every 10 s reaches a trainer that started meanwhile. Each is only noted.
        waited=0
        while running && [ "$waited" -lt "$STOP_WAIT" ]; do
            sleep 1
            waited=$((waited + 1))
            [ $((waited % 10)) -eq 0 ] && kill -TERM -- "-$pid" 2>/dev/null
        done
        if running; then
            kill -KILL -- "-$pid" 2>/dev/null
            sleep 1
            say "the window did not stop within ${STOP_WAIT} s and was killed; the last carry (at most ${BUDGET} s old) stands" >&2
        fi
        rm -f "$PIDFILE"
        echo "== $(date '+%F %T') cpu_window stop" >>"$LOG"
        what="stopped"
    elif [ -f "$STATE/started" ]; then
        what="no window was running (the last one ended by itself: $LOG says why)"
    else
        say "no window is running"
        exit 0
    fi
    gained=$("${CAMPAIGN[@]}" --gained-since "$since" 2>>"$LOG" | tail -n 1)
    say "$what; gained since its start: ${gained:-nothing that could be read (see $LOG)}; commit campaign/ and weights/ in a commit of their own"
    ;;
status)
    if running; then
        say "running since $(date -d "@$(cat "$STATE/started")" '+%F %T' 2>/dev/null) (pid $(cat "$PIDFILE" 2>/dev/null)); log: $LOG"
    else
        say "not running"
    fi
    "${CAMPAIGN[@]}" --status
    ;;
*)
    echo "usage: scripts/cpu_window.sh start|stop|status" >&2
    exit 2
    ;;
esac
