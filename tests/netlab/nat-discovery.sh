#!/usr/bin/env bash
# RFC 5780 NAT behaviour discovery against real NATs: builds the network-namespace lab
# (shared/netlab, prefix "ftn-" so it never collides with the browser lab "ftb-"), runs the
# release ferroturn with rfc5780 in the server namespace on 10.200.0.10 + 10.200.0.11, and runs
# coturn's turnutils_natdiscovery from c1 (behind a cone NAT) and c2 (behind a symmetric NAT).
# Passes when it reports endpoint-independent mapping for c1, address and port dependent
# mapping for c2, and address and port dependent filtering for both (what netlab's NATs do).
# Prints a pass/fail summary; tears the lab down on exit.
#
# Environment: NETLAB_SH (path to netlab.sh, default ../shared/netlab/netlab.sh beside the
# clone), FERROTURN_BIN (default: cargo build --release, $CARGO_TARGET_DIR or target). Needs root, nftables, coturn's test clients (installed with apt-get if missing).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
NETLAB_SH=${NETLAB_SH:-$repo/../shared/netlab/netlab.sh}
export NETLAB_PREFIX=ftn- NETLAB_NAT1_MODE=cone NETLAB_NAT2_MODE=symmetric
P=$NETLAB_PREFIX
log() { echo "nat-discovery: $*" >&2; }

[[ -f $NETLAB_SH ]] || { log "netlab not found at $NETLAB_SH (set NETLAB_SH)"; exit 2; }
[[ $(id -u) == 0 ]] || { log "needs root (network namespaces)"; exit 2; }
if ! command -v nft >/dev/null; then
  log "installing nftables"; apt-get install -y nftables >/dev/null
fi
if ! command -v turnutils_natdiscovery >/dev/null; then
  log "installing coturn (for turnutils_natdiscovery)"; apt-get install -y coturn >/dev/null
fi
if [[ -n ${FERROTURN_BIN:-} ]]; then
  bin=$FERROTURN_BIN
else
  # Always (re)build: a stale release binary from before rfc5780 would fail confusingly.
  bin=${CARGO_TARGET_DIR:-$repo/target}/release/ferroturn
  log "building $bin"; (cd "$repo" && cargo build --release --bin ferroturn --quiet)
fi

work=$(mktemp -d)
server_pid=
cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  bash "$NETLAB_SH" down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

bash "$NETLAB_SH" up --force >&2
ip netns exec "${P}server" "$bin" -L 10.200.0.10 -L 10.200.0.11 -p 3478 --rfc5780 \
  -u probe:probe-pass --min-port 49152 --max-port 49407 --log-level info \
  >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
  grep -q started "$work/server.log" && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; log "server exited"; exit 1; }
  sleep 0.1
done
grep -q started "$work/server.log" || { log "server did not start within 10 s"; exit 1; }

fails=0
check() { # NAME FILE PATTERN
  if grep -q "$3" "$2"; then
    echo "PASS  $1"
  else
    echo "FAIL  $1 (expected \"$3\")"; fails=$((fails + 1))
  fi
}
for c in c1 c2; do
  timeout 90 ip netns exec "${P}$c" turnutils_natdiscovery -m -f 10.200.0.10 \
    >"$work/$c.out" 2>&1 || true
done
echo "--- turnutils_natdiscovery from c1 (cone NAT) ---";      grep -E "^NAT " "$work/c1.out" || true
echo "--- turnutils_natdiscovery from c2 (symmetric NAT) ---"; grep -E "^NAT " "$work/c2.out" || true
echo "--- summary ---"
check "c1 behind cone NAT: endpoint-independent mapping" "$work/c1.out" "NAT with Endpoint Independent Mapping"
check "c2 behind symmetric NAT: address and port dependent mapping" "$work/c2.out" "NAT with Address and Port Dependent Mapping"
check "c1: address and port dependent filtering" "$work/c1.out" "NAT with Address and Port Dependent Filtering"
check "c2: address and port dependent filtering" "$work/c2.out" "NAT with Address and Port Dependent Filtering"
check "responses carry OTHER-ADDRESS" "$work/c1.out" "Other addr: : 10.200.0.11:3479"
if ((fails > 0)); then
  log "$fails check(s) failed; full outputs:"
  for c in c1 c2; do echo "=== $c" >&2; cat "$work/$c.out" >&2; done
  echo "=== server log" >&2; cat "$work/server.log" >&2
  exit 1
fi
echo "nat-discovery: all checks passed"
