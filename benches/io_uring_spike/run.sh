#!/bin/bash
# io_uring against epoll for a trivial UDP relay of ferroturn's ChannelData-echo shape (see
# relay.c and benches/README.md, "io_uring: measured, not adopted"). Not part of CI.
#   sudo apt-get install -y gcc liburing-dev
#   benches/io_uring_spike/run.sh              # REPS=6 RATES="40000 80000" by default
# Relay pinned to CPU 1, load to CPU 0; the two loops alternate; prints each run, then the
# medians and the median of the per-pair ratios.
set -euo pipefail
cd "$(dirname "$0")"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
gcc -O2 -Wall -o "$out/relay" relay.c -luring
: > "$out/runs"
for rate in ${RATES:-40000 80000}; do
  for rep in $(seq "${REPS:-6}"); do
    for m in epoll uring; do
      taskset -c 1 "$out/relay" "$m" 7 > "$out/relay.out" 2>&1 &
      pid=$!
      sleep 0.3
      g=$(taskset -c 0 "$out/relay" gen "$rate" 7.2)
      wait "$pid"
      echo "rate=$rate rep=$rep $(cat "$out/relay.out") | $g" | tee -a "$out/runs"
    done
  done
done
python3 - "$out/runs" <<'PY'
import re, statistics, sys
d = {}
for l in open(sys.argv[1]):
    m = re.search(r'rate=(\d+) rep=\d+ (\w+): .*?: (\d+) relayed/CPU-s, ([\d.]+) syscalls', l)
    if m:
        d.setdefault((int(m[1]), m[2]), []).append((int(m[3]), float(m[4])))
for rate in sorted({r for r, _ in d}):
    e, u = d[(rate, "epoll")], d[(rate, "uring")]
    me, mu = statistics.median(x for x, _ in e), statistics.median(x for x, _ in u)
    pair = statistics.median(b[0] / a[0] for a, b in zip(e, u))
    print(f"{rate} pps: epoll {me:.0f}, io_uring {mu:.0f} relayed/CPU-s; ratio of medians "
          f"{mu / me:.3f}, median pairwise {pair:.3f}; system calls per datagram "
          f"{statistics.median(s for _, s in e):.2f} vs {statistics.median(s for _, s in u):.2f}")
PY
