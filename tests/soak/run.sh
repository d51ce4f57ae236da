#!/usr/bin/env bash
# Soak: ferroturn-bench churns allocations (create, permission + channel, relay, delete) over
# UDP and TCP, and allocate-only bursts, against a release build of the server for SOAK_SECS
# (default 60). The server's RSS and open fds are sampled every second (/proc/PID/status,
# /proc/PID/fd). Pass criteria:
#   - between bench runs (no client connected) the fd count is exactly the idle baseline:
#     no relay socket or TCP connection leaks;
#   - after warm-up (the first third of the run, at least 10 s) RSS stays within
#     RSS_TOL_KB (default 4096 KiB) of the first post-warm-up sample;
#   - at the end every session_start log record has its session_end (0 leaked
#     allocations; permissions and channels live inside allocations).
# Uses relay ports 63900-63999 (test block 29) and an ephemeral listening port. Bounded: the
# loop stops at SOAK_SECS, each bench run has its own time limit, and the server is stopped
# (by PID) on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

SOAK_SECS=${SOAK_SECS:-60}
RSS_TOL_KB=${RSS_TOL_KB:-4096}
TGT=${CARGO_TARGET_DIR:-target}
nice cargo build --release --bins -q
SRV=$TGT/release/ferroturn
BENCH=$TGT/release/ferroturn-bench

work=$(mktemp -d /tmp/ferroturn-soak.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$SRV" --listening-ip 127.0.0.1 --listening-port "$port" --relay-ip 127.0.0.1 \
    --min-port 63900 --max-port 63999 --realm soak.test --user soak:soak-pw \
    --allow-loopback-peers --relay-threads 2 --log-level info --log-file "$work/server.log" \
    --max-requests-per-ip 0 --max-401-per-ip 0 --max-allocations-per-ip 0 --max-allocations-per-prefix 0 &
pid=$!
sampler=
cleanup() {
    [ -n "$sampler" ] && kill "$sampler" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
trap cleanup EXIT

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$pid/status"; }
fds() { ls "/proc/$pid/fd" | wc -l; }

# Ready when the log says so (at most 10 s).
for _ in $(seq 100); do
    grep -q "started" "$work/server.log" 2>/dev/null && break
    sleep 0.1
done
sleep 0.5
base_fds=$(fds)
echo "soak: server pid $pid on 127.0.0.1:$port, idle fds $base_fds, RSS $(rss) KiB, $SOAK_SECS s"

# Once a second: time, RSS, fds (while bench runs too).
( t0=$(date +%s); while kill -0 "$pid" 2>/dev/null; do
      echo "$(( $(date +%s) - t0 )) $(rss) $(fds)" >>"$work/samples"; sleep 1; done ) &
sampler=$!

B=(--server "127.0.0.1:$port" --user soak --password soak-pw --json --quiet --timeout 3)
start=$(date +%s)
warm=$(( SOAK_SECS / 3 > 10 ? SOAK_SECS / 3 : 10 ))
i=0; runs=0; sent=0; delivered=0; allocs=0; fail=0
ref_rss=
while [ $(( $(date +%s) - start )) -lt "$SOAK_SECS" ]; do
    i=$((i + 1))
    case $((i % 3)) in
        0) out=$(timeout 30 "$BENCH" "${B[@]}" -m 20 --rate 2000 --duration 2 --warmup 0) ;;
        1) out=$(timeout 30 "$BENCH" "${B[@]}" -m 10 --rate 1000 --duration 2 --warmup 0 --transport tcp --mode channel) ;;
        2) out=$(timeout 30 "$BENCH" "${B[@]}" --allocate-only -m 100 --concurrency 16) ;;
    esac || { echo "soak: bench run $i failed: $out"; fail=1; break; }
    runs=$((runs + 1))
    s=$(echo "$out" | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v.get("sent",0), v.get("delivered",0), v.get("allocations_ok",0))')
    read -r a b c <<<"$s"
    sent=$((sent + a)); delivered=$((delivered + b)); allocs=$((allocs + c))
    # Idle now: the fd count must be back at the baseline (TCP allocations close with their
    # connection, which the bench closes on exit; allow the server a moment to see it).
    for _ in $(seq 20); do [ "$(fds)" -eq "$base_fds" ] && break; sleep 0.05; done
    if [ "$(fds)" -ne "$base_fds" ]; then
        echo "soak: fd leak after run $i: $(fds) open, idle baseline $base_fds"; fail=1; break
    fi
    now=$(( $(date +%s) - start ))
    r=$(rss)
    if [ "$now" -ge "$warm" ]; then
        [ -z "$ref_rss" ] && ref_rss=$r
        if [ $(( r - ref_rss )) -gt "$RSS_TOL_KB" ]; then
            echo "soak: RSS grew from $ref_rss to $r KiB after warm-up (tolerance $RSS_TOL_KB)"; fail=1; break
        fi
    fi
done
sleep 1.5
final_fds=$(fds); final_rss=$(rss)
created=$(grep -c "session_start" "$work/server.log" || true)
deleted=$(grep -c "session_end" "$work/server.log" || true)
kill "$sampler" 2>/dev/null || true; sampler=
read -r rmin rmax < <(awk -v w="$warm" '$1 >= w {print $2}' "$work/samples" | sort -n | awk 'NR==1{min=$1} {max=$1} END{print min, max}')
read -r fmax < <(awk '{print $3}' "$work/samples" | sort -n | tail -1)
echo "soak: $runs bench runs in $(( $(date +%s) - start )) s: $allocs allocations, $sent packets sent, $delivered delivered"
echo "soak: allocations created $created, deleted $deleted (log lines)"
echo "soak: RSS after warm-up min $rmin KiB, max $rmax KiB (reference ${ref_rss:-?}, tolerance $RSS_TOL_KB); final $final_rss KiB"
echo "soak: fds idle baseline $base_fds, peak under load $fmax, final $final_fds"
[ "$fail" -eq 0 ] || exit 1
[ "$created" -eq "$deleted" ] || { echo "soak: $((created - deleted)) allocations leaked"; exit 1; }
[ "$created" -gt 0 ] || { echo "soak: no allocation was made"; exit 1; }
[ "$final_fds" -eq "$base_fds" ] || { echo "soak: fds $final_fds at the end, baseline $base_fds"; exit 1; }
[ "$delivered" -gt 0 ] || { echo "soak: nothing relayed"; exit 1; }
echo "soak: OK"
rm -rf "$work"
