#!/usr/bin/env bash
# Drive ferroturn with coturn's own test clients (Debian package `coturn`):
#   turnutils_stunclient  - STUN Binding
#   turnutils_uclient     - TURN allocations relaying to turnutils_peer (echo) on 127.0.0.1,
#                           ChannelData mode and Send-indication mode (-s), several sessions, paced
#   turnutils_uclient -y  - client-to-client through two relays of the same server
#   turnutils_uclient -W  - TURN REST API credentials (shared secret)
#   turnutils_uclient -t  - TCP client leg;  -t -S: TLS client leg (self-signed test certificate)
#   turnutils_uclient -x  - IPv6 over [::1]: IPv6 client leg, IPv6 relayed address, IPv6 peer
#   turnutils_uclient -T  - RFC 6062 TCP relay (Connect, ConnectionAttempt, ConnectionBind), TCP and TLS
# Every run must report 0 lost packets. Loopback only; kills only the PIDs it started.
#
# Usage: tests/interop/coturn-clients.sh [path/to/ferroturn]   (default: target/release/ferroturn)
set -euo pipefail

BIN=${1:-target/release/ferroturn}
PORT=${TURN_PORT:-34878}
TLS_PORT=${TURN_TLS_PORT:-34879}
PEER_PORT=${PEER_PORT:-34890}
USER=uclient
PASS=uclient-pass
REALM=interop.test
SECRET=interop-secret
OUT=$(mktemp -d /tmp/ferroturn-interop.XXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

command -v turnutils_uclient >/dev/null || { echo "turnutils_uclient missing: apt-get install coturn" >&2; exit 2; }
[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build --release)" >&2; exit 2; }

# A throwaway self-signed certificate for the TLS listener.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -keyout "$OUT/key.pem" -out "$OUT/cert.pem" >/dev/null 2>&1
"$BIN" --listening-ip 127.0.0.1 --listening-ip ::1 --listening-port "$PORT" \
  --tls-listening-port "$TLS_PORT" --cert "$OUT/cert.pem" --pkey "$OUT/key.pem" \
  --relay-ip 127.0.0.1 --relay-ip ::1 \
  --min-port 45000 --max-port 45999 --realm "$REALM" --user "$USER:$PASS" \
  --use-auth-secret --static-auth-secret "$SECRET" \
  --allow-loopback-peers --legacy-channel-numbers --relay-threads 2 --log-file "$OUT/ferroturn.log" >"$OUT/ferroturn.stdout" 2>&1 &
SERVER=$!; PIDS+=("$SERVER")
turnutils_peer -L 127.0.0.1 -p "$PEER_PORT" >"$OUT/peer.log" 2>&1 &
PIDS+=("$!")
turnutils_peer -L ::1 -p "$PEER_PORT" >"$OUT/peer6.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 50); do ss -H -lun "sport = :$PORT" | grep -q . && break; sleep 0.1; done
ss -H -lun "sport = :$PORT" | grep -q . || { echo "ferroturn did not start"; cat "$OUT"/ferroturn.*; exit 1; }

fail=0
pass() { echo "  PASS $*"; }
bad() { echo "  FAIL $*"; fail=1; }

echo "== turnutils_stunclient"
if timeout 20 turnutils_stunclient -p "$PORT" 127.0.0.1 >"$OUT/stun.log" 2>&1 \
   && grep -Eq "UDP reflexive addr: 127\.0\.0\.1:[0-9]+" "$OUT/stun.log"; then
  pass "binding: $(grep -Eo 'UDP reflexive addr: [0-9.:]+' "$OUT/stun.log" | head -1)"
else bad "stunclient"; cat "$OUT/stun.log"; fi

# name | flags. -c: no RTCP allocation; -z: ms between packets per session (paced).
run_uclient() {
  local name=$1; shift
  local log="$OUT/uclient-$name.log"
  local server=${SERVER_ADDR:-127.0.0.1} port=${UCLIENT_PORT:-$PORT}
  if ! timeout 120 turnutils_uclient "$@" -p "$port" -u "$USER" -w "$PASS" "$server" >"$log" 2>&1; then
    bad "$name: uclient exited non-zero"; tail -20 "$log"; return
  fi
  local lost sent recv
  lost=$(grep -Eo "Total lost packets [0-9]+ \([0-9.]+%\)" "$log" | tail -1 || true)
  sent=$(grep -Eo "tot_send_msgs=[0-9]+" "$log" | tail -1 | cut -d= -f2 || true)
  recv=$(grep -Eo "tot_recv_msgs=[0-9]+" "$log" | tail -1 | cut -d= -f2 || true)
  if [[ "$lost" =~ ^Total\ lost\ packets\ 0\  ]] && [[ -n "$sent" && "$sent" -gt 0 && "$sent" == "$recv" ]]; then
    pass "$name: sent=$sent recv=$recv, $lost; $(grep -Eo 'Average round trip delay [0-9.]+ ms' "$log" | tail -1)"
  else
    bad "$name: sent=$sent recv=$recv '$lost'"; tail -20 "$log"
  fi
}

echo "== turnutils_uclient against turnutils_peer (echo) on 127.0.0.1:$PEER_PORT"
run_uclient channeldata-10x500   -c -m 10 -n 500 -l 100 -z 10 -e 127.0.0.1 -r "$PEER_PORT"
run_uclient send-indication-10x500 -s -c -m 10 -n 500 -l 100 -z 10 -e 127.0.0.1 -r "$PEER_PORT"
run_uclient channeldata-1000B-5x300 -c -m 5 -n 300 -l 1000 -z 10 -e 127.0.0.1 -r "$PEER_PORT"
run_uclient dont-fragment-5x200  -g -c -m 5 -n 200 -l 100 -z 10 -e 127.0.0.1 -r "$PEER_PORT"
run_uclient client-to-client-10x500 -y -c -m 10 -n 500 -l 100 -z 10
echo "== TCP client leg (-t)"
run_uclient tcp-channeldata-10x300 -t -c -m 10 -n 300 -l 100 -z 10 -e 127.0.0.1 -r "$PEER_PORT"
run_uclient tcp-send-indication-10x300 -t -s -c -m 10 -n 300 -l 100 -z 10 -e 127.0.0.1 -r "$PEER_PORT"
run_uclient tcp-1000B-5x200 -t -c -m 5 -n 200 -l 1000 -z 10 -e 127.0.0.1 -r "$PEER_PORT"
echo "== TLS client leg (-t -S) on port $TLS_PORT"
UCLIENT_PORT=$TLS_PORT run_uclient tls-channeldata-10x300 -t -S -c -m 10 -n 300 -l 100 -z 10 -e 127.0.0.1 -r "$PEER_PORT"
UCLIENT_PORT=$TLS_PORT run_uclient tls-send-indication-5x300 -t -S -s -c -m 5 -n 300 -l 100 -z 10 -e 127.0.0.1 -r "$PEER_PORT"
echo "== RFC 8656 dual allocation (-Z: IPv4 + IPv6 relayed addresses in one allocation)"
run_uclient dual-allocation-4x200 -Z -c -m 4 -n 200 -l 100 -z 10 -e 127.0.0.1 -r "$PEER_PORT"
echo "== RFC 6062 TCP allocations (-T: client-to-client over TCP relayed addresses)"
run_uclient tcp-relay-4x200 -T -m 4 -n 200 -l 100 -z 10
UCLIENT_PORT=$TLS_PORT run_uclient tcp-relay-tls-4x200 -T -S -m 4 -n 200 -l 100 -z 10
echo "== IPv6: client, relayed address and peer on [::1] (-x)"
SERVER_ADDR=::1 run_uclient ipv6-udp-channeldata-5x300 -x -c -m 5 -n 300 -l 100 -z 10 -e ::1 -r "$PEER_PORT"
SERVER_ADDR=::1 run_uclient ipv6-tcp-send-5x300 -x -t -s -c -m 5 -n 300 -l 100 -z 10 -e ::1 -r "$PEER_PORT"
echo "== turnutils_uclient with TURN REST API credentials (-W secret)"
if timeout 60 turnutils_uclient -c -m 4 -n 200 -l 100 -z 10 -e 127.0.0.1 -r "$PEER_PORT" \
     -p "$PORT" -u restuser -W "$SECRET" 127.0.0.1 >"$OUT/uclient-rest.log" 2>&1 \
   && grep -Eq "Total lost packets 0 " "$OUT/uclient-rest.log"; then
  pass "rest-api: $(grep -Eo 'Total lost packets [0-9]+ \([0-9.]+%\)' "$OUT/uclient-rest.log" | tail -1)"
else bad "rest-api"; tail -20 "$OUT/uclient-rest.log"; fi
echo "== wrong password is refused"
if timeout 30 turnutils_uclient -c -m 1 -n 5 -e 127.0.0.1 -r "$PEER_PORT" -p "$PORT" -u "$USER" -w wrong 127.0.0.1 >"$OUT/uclient-wrong.log" 2>&1 \
   && grep -Eq "Total lost packets 0 " "$OUT/uclient-wrong.log"; then
  bad "wrong password was accepted"
elif grep -q 'reason="bad MESSAGE-INTEGRITY"' "$OUT/ferroturn.log"; then
  pass "wrong password refused (server logged auth_failure: bad MESSAGE-INTEGRITY)"
else bad "wrong password: no auth_failure logged"; fi

kill -0 "$SERVER" 2>/dev/null && pass "server still running" || bad "server died"
grep -q "panicked" "$OUT/ferroturn.log" "$OUT/ferroturn.stdout" && bad "server log shows a panic"
echo "session records: $(grep -c session_start "$OUT/ferroturn.log" || true) started, $(grep -c session_end "$OUT/ferroturn.log" || true) ended"
if [ "$fail" -ne 0 ]; then echo "coturn client interop: FAILED (logs in $OUT)"; exit 1; fi
echo "coturn client interop: all passed"
rm -rf "$OUT"
