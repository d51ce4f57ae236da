#!/usr/bin/env bash
# Real clients against ferroturn, deployed the way operators do: Chromium's WebRTC stack, aioice
# (Python) and coturn's turnutils_uclient, on loopback and in a network-namespace lab where the
# clients sit behind symmetric NATs. Prints PASS/FAIL per check and `N passed, M failed` last.
#
#  loopback (ferroturn on 127.0.0.1: static user, TURN REST secret, TLS with a test CA):
#   1. one page, two RTCPeerConnections, iceTransportPolicy 'relay', ferroturn the only ICE
#      server, over turn:...?transport=udp, ?transport=tcp and turns:localhost (certificate from
#      a test CA that Chromium trusts through an NSS database); 5 MiB each way, SHA-256 checked;
#      getStats(): relay<->relay selected, local relayProtocol udp/tcp/tls, pair byte counters;
#      the same turns: URL without the CA trusted is refused (701), so the certificate is checked
#   3. wrong password -> icecandidateerror 401; REST credentials minted by `ferroturn
#      credentials` relay 5 MiB each way; an expired REST credential -> 401
#   4. aioice TURN client over UDP, TCP and TLS: allocate, channel, echo peer through the relay
#  netlab (../shared/netlab, namespaces ftb-*: server 10.200.0.10, peer 10.200.0.20, clients
#  c1/c2 each behind its own symmetric NAT):
#      the NATs map per destination (STUN probe from c1 to two server addresses)
#   2. two Chromium processes, one in c1 and one in c2: relay-only over UDP, TCP and TLS (turns:
#      with a host name) connects and moves 5 MiB each way; the allocations came from the NATs'
#      public addresses; the same pair with only a stun: server (no TURN) does not connect
#   5. turnutils_uclient in c1 through ferroturn to turnutils_peer on 10.200.0.20: 0 lost packets
#
# Installs what is missing: Debian's chromium, libnss3-tools (certutil), nftables, coturn
# (turnutils_*); playwright-core via `npm ci` into tests/browser/node_modules (never a browser
# download); aioice via pip into a venv under /tmp. Needs root (apt, network namespaces) and
# Node >= 20. Starts its own ferroturn and helper processes and kills exactly those PIDs at exit;
# takes the lab down at exit. Every step is bounded in time.
#
# Environment: FERROTURN_BIN (default: build with `cargo build --release`, use
# target/release/ferroturn), BROWSER_TEST_PORT (28478; +1 for TLS; below the
# ephemeral port range, like the relay ports 28500-28999), NETLAB_SH, NETLAB_PREFIX
# (ftb-), KEEP_LOGS=1 (keep the work directory; it is kept anyway when something failed),
# LAB_BROWSER_ALLOW (default empty; an address here starts the lab's browser server with
# --allowed-peer-ip, see the comment there).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
HERE=$REPO/tests/browser
LAB=$REPO/tests/netlab/lab.sh
export NETLAB_PREFIX=${NETLAB_PREFIX:-ftb-}
P=$NETLAB_PREFIX
PORT=${BROWSER_TEST_PORT:-28478}
TLS_PORT=$((PORT + 1))
REALM=browser.test
USER_NAME=webrtc
USER_PASS=webrtc-pass
SECRET=browser-test-secret
BYTES=$((5 << 20))
VENV=/tmp/ferroturn-aioice-venv
AIOICE_VERSION=0.13.0
start=$(date +%s)
WORK=$(mktemp -d /tmp/ferroturn-browser.XXXX)
PIDS=()
LAB_UP=0
passed=0
failed=0

pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
# A line from a check program (e2e.mjs, aioice_turn.py) that starts with PASS/FAIL.
record() {
  local line=$1
  echo "$line"
  case $line in PASS*) passed=$((passed + 1)) ;; *) failed=$((failed + 1)) ;; esac
}
section() { echo; echo "== $* ($(($(date +%s) - start)) s)"; }

cleanup() {
  local rc=$? pid i
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  [[ $LAB_UP == 1 ]] && { "$LAB" down >/dev/null 2>&1 || echo "netlab down failed" >&2; }
  if [[ $failed -gt 0 || $rc -ne 0 || ${KEEP_LOGS:-0} == 1 ]]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "run.sh: $*" >&2; failed=$((failed + 1)); echo "$passed passed, $failed failed"; exit 1; }

# ---------------------------------------------------------------- prerequisites
section "prerequisites"
[[ $(id -u) -eq 0 ]] || die "needs root (apt-get, network namespaces)"
apt_updated=0
apt_install() {  # PACKAGE...
  export DEBIAN_FRONTEND=noninteractive
  if [[ $apt_updated == 0 ]]; then timeout 300 apt-get update -qq || die "apt-get update failed"; apt_updated=1; fi
  echo "installing $* (apt)"
  timeout 900 apt-get install -y -qq --no-install-recommends "$@" >"$WORK/apt.log" 2>&1 \
    || { tail -20 "$WORK/apt.log"; die "apt-get install $* failed"; }
}
[[ -x /usr/lib/chromium/chromium ]] || command -v chromium >/dev/null || apt_install chromium
CHROMIUM=$([[ -x /usr/lib/chromium/chromium ]] && echo /usr/lib/chromium/chromium || command -v chromium)
export CHROMIUM
command -v certutil >/dev/null || apt_install libnss3-tools
command -v nft >/dev/null || apt_install nftables
command -v turnutils_uclient >/dev/null || apt_install coturn
command -v openssl >/dev/null || apt_install openssl
"$LAB" nodes >/dev/null || die "the network-namespace lab is not available (see the message above)"
command -v node >/dev/null || die "node (>= 20) is missing"
node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' || die "node >= 20 needed (playwright-core), have $(node --version)"
# playwright-core, exactly as locked; it never downloads a browser (executablePath is Debian's).
if [[ "$(node -p 'require("'"$HERE"'/node_modules/playwright-core/package.json").version' 2>/dev/null)" != \
      "$(node -p 'require("'"$HERE"'/package-lock.json").packages["node_modules/playwright-core"].version')" ]]; then
  echo "npm ci (playwright-core)"
  (cd "$HERE" && timeout 300 npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed"
fi
# aioice in a venv of its own (pinned); python3 -m venv needs Debian's python3-venv on a plain system.
if ! "$VENV/bin/python" -c "import aioice, sys; sys.exit(aioice.__version__ != '$AIOICE_VERSION')" 2>/dev/null; then
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" 2>/dev/null; then apt_install python3-venv; rm -rf "$VENV"; python3 -m venv "$VENV"; fi
  echo "pip install aioice==$AIOICE_VERSION"
  timeout 300 "$VENV/bin/pip" install -q --disable-pip-version-check "aioice==$AIOICE_VERSION" || die "pip install aioice failed"
fi
if [[ -n ${FERROTURN_BIN:-} ]]; then BIN=$FERROTURN_BIN; else
  echo "cargo build --release"
  timeout 1800 cargo build --release --quiet || die "cargo build --release failed"
  BIN=$REPO/target/release/ferroturn
fi
[[ -x $BIN ]] || die "no ferroturn binary at $BIN"
echo "chromium: $("$CHROMIUM" --version 2>/dev/null | head -1); node $(node --version); playwright-core" \
     "$(node -p 'require("'"$HERE"'/node_modules/playwright-core/package.json").version'); aioice $AIOICE_VERSION;" \
     "coturn $(dpkg-query -W -f '${Version}' coturn 2>/dev/null || echo '?'); ferroturn $BIN"

# ---------------------------------------------------------------- test PKI
# A test CA and a server certificate for localhost and turn.ferroturn.test signed by it. Chromium
# trusts the CA through an NSS database in a $HOME of its own (HOME_TRUST); HOME_PLAIN has an
# empty one, to show that an untrusted certificate is refused.
PKI=$WORK/pki
mkdir -p "$PKI" "$WORK/home-trust/.pki/nssdb" "$WORK/home-plain/.pki/nssdb"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=ferroturn test CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
  -keyout "$PKI/ca.key" -out "$PKI/ca.pem" >/dev/null 2>&1
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -keyout "$PKI/server.key" -out "$PKI/server.csr" >/dev/null 2>&1
printf '%s\n' basicConstraints=critical,CA:FALSE keyUsage=critical,digitalSignature extendedKeyUsage=serverAuth \
  subjectAltName=DNS:localhost,DNS:turn.ferroturn.test >"$PKI/ext.cnf"
openssl x509 -req -in "$PKI/server.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial -days 2 \
  -extfile "$PKI/ext.cnf" -out "$PKI/server.pem" >/dev/null 2>&1
openssl verify -CAfile "$PKI/ca.pem" "$PKI/server.pem" >/dev/null || die "test certificate does not verify"
for h in home-trust home-plain; do certutil -d "sql:$WORK/$h/.pki/nssdb" -N --empty-password; done
certutil -d "sql:$WORK/home-trust/.pki/nssdb" -A -t C,, -n ferroturn-test-ca -i "$PKI/ca.pem"

# ---------------------------------------------------------------- helpers
wait_listen() {  # NETNS(or "") PROTO(u|t) PORT LOGFILE
  local ns=$1 proto=$2 port=$3 log=$4 i
  for i in $(seq 50); do
    if ${ns:+ip netns exec "$ns"} ss -H -l"$proto"n "sport = :$port" | grep -q .; then return 0; fi
    sleep 0.1
  done
  echo "server did not listen on $port/$proto:"; tail -5 "$log"; return 1
}
ice() {  # URL [USER PASS]
  if [[ $# -eq 1 ]]; then printf '{"urls":"%s"}' "$1"; else printf '{"urls":"%s","username":"%s","credential":"%s"}' "$1" "$2" "$3"; fi
}
e2e() {  # NAME MODE ARGS... : one browser check, recorded
  local name=$1 mode=$2; shift 2
  local line
  # $HOME of its own (empty NSS database) unless the check gives one; nothing in root's home.
  line=$(cd "$HERE" && timeout 150 node e2e.mjs "$mode" --home "$WORK/home-plain" "$@" --name "$name" --out "$WORK/$name.json" 2>>"$WORK/$name.stderr" \
         | grep -E '^(PASS|FAIL) ' | tail -1) || true
  [[ -n $line ]] || line="FAIL $name: driver produced no result (timeout?); stderr: $(tail -3 "$WORK/$name.stderr" | tr '\n' ' ')"
  record "$line"
}
aioice() {  # ARGS...
  local line
  line=$(timeout 90 "$VENV/bin/python" "$HERE/aioice_turn.py" "$@" 2>>"$WORK/aioice.stderr" | grep -E '^(PASS|FAIL) ' | tail -1) || true
  [[ -n $line ]] || line="FAIL aioice $*: no result (timeout?)"
  record "$line"
}

# ---------------------------------------------------------------- loopback
section "ferroturn on loopback: udp/tcp $PORT, tls $TLS_PORT, static user, REST secret"
# --allow-loopback-peers: both browsers' relayed addresses are 127.0.0.1, and a relay-to-relay
# permission is a permission for a loopback peer, which ferroturn refuses by default.
"$BIN" --listening-ip 127.0.0.1 --listening-port "$PORT" --tls-listening-port "$TLS_PORT" \
  --cert "$PKI/server.pem" --pkey "$PKI/server.key" --min-port 28500 --max-port 28999 \
  --realm "$REALM" --user "$USER_NAME:$USER_PASS" --use-auth-secret --static-auth-secret "$SECRET" \
  --allow-loopback-peers --relay-threads 2 --log-file "$WORK/ferroturn-loopback.log" >"$WORK/ferroturn-loopback.out" 2>&1 &
LOOP_PID=$!; PIDS+=("$LOOP_PID")
wait_listen "" u "$PORT" "$WORK/ferroturn-loopback.out" && wait_listen "" t "$TLS_PORT" "$WORK/ferroturn-loopback.out" \
  || die "ferroturn did not start on loopback"

section "1. Chromium, one page, two PeerConnections, relay only, ${BYTES} B each way"
e2e chromium-relay-udp one-page --ice "$(ice "turn:127.0.0.1:$PORT?transport=udp" "$USER_NAME" "$USER_PASS")" --expect relay:udp --bytes "$BYTES"
e2e chromium-relay-tcp one-page --ice "$(ice "turn:127.0.0.1:$PORT?transport=tcp" "$USER_NAME" "$USER_PASS")" --expect relay:tcp --bytes "$BYTES"
# turns: by host name; `localhost` is mapped in front of the catch-all resolver rule, so Chromium
# makes no lookup; the certificate chain is checked against the test CA in the NSS database.
e2e chromium-relay-tls one-page --ice "$(ice "turns:localhost:$TLS_PORT?transport=tcp" "$USER_NAME" "$USER_PASS")" --expect relay:tls \
  --bytes "$BYTES" --home "$WORK/home-trust" --resolver-rule "MAP localhost 127.0.0.1"
e2e chromium-tls-untrusted-ca-refused one-page --ice "$(ice "turns:localhost:$TLS_PORT?transport=tcp" "$USER_NAME" "$USER_PASS")" \
  --expect error:701 --timeout 10000 --home "$WORK/home-plain" --resolver-rule "MAP localhost 127.0.0.1"

section "3. credentials: wrong password, TURN REST API (ferroturn credentials), expired REST credential"
e2e chromium-wrong-password-401 one-page --ice "$(ice "turn:127.0.0.1:$PORT?transport=udp" "$USER_NAME" wrong-password)" \
  --expect error:401 --timeout 10000
rest_json=$("$BIN" credentials --secret "$SECRET" --user alice --ttl 600 --uri "turn:127.0.0.1:$PORT?transport=udp")
echo "minted: $rest_json"
e2e chromium-rest-credentials one-page --ice "$rest_json" --expect relay:udp --bytes "$BYTES"
# Minted by hand with the README's formula, with an expiry one minute in the past.
expired_user="$(($(date +%s) - 60)):alice"
expired_pass=$(printf %s "$expired_user" | openssl dgst -binary -sha1 -hmac "$SECRET" | base64)
e2e chromium-rest-expired-401 one-page --ice "$(ice "turn:127.0.0.1:$PORT?transport=udp" "$expired_user" "$expired_pass")" \
  --expect error:401 --timeout 10000

section "4. aioice (Python) TURN client: allocate, ChannelBind, echo peer on 127.0.0.1 through the relay"
aioice --server "127.0.0.1:$PORT" --transport udp --user "$USER_NAME" --password "$USER_PASS"
aioice --server "127.0.0.1:$PORT" --transport tcp --user "$USER_NAME" --password "$USER_PASS"
aioice --server "localhost:$TLS_PORT" --transport tls --user "$USER_NAME" --password "$USER_PASS" --ca "$PKI/ca.pem"

if kill -0 "$LOOP_PID" 2>/dev/null; then pass "loopback ferroturn still running"; else fail "loopback ferroturn died"; fi

# ---------------------------------------------------------------- netlab
section "netlab: namespaces ${P}*, clients behind symmetric NATs"
timeout 60 "$LAB" up --force >"$WORK/netlab.log" 2>&1 || { cat "$WORK/netlab.log"; die "netlab up failed"; }
LAB_UP=1
"$LAB" status
# The browsers' server: as an operator runs it, with no peer allowance. Each browser's permission
# is for the other browser's relayed address 10.200.0.10:<relay port>: RFC 1918 space, reachable
# because it is this server's own address inside the relay port range (another allocation).
# (This suite found that ferroturn used to refuse it as "private"; fixed in peer_filter.rs.)
LAB_BROWSER_ALLOW=${LAB_BROWSER_ALLOW-}
ip netns exec "${P}server" "$BIN" --listening-ip 10.200.0.10 --listening-ip 10.200.0.11 --relay-ip 10.200.0.10 \
  --listening-port 3478 --tls-listening-port 5349 --cert "$PKI/server.pem" --pkey "$PKI/server.key" \
  --min-port 49152 --max-port 49999 --realm lab.test --user "$USER_NAME:$USER_PASS" \
  ${LAB_BROWSER_ALLOW:+--allowed-peer-ip "$LAB_BROWSER_ALLOW"} \
  --relay-threads 2 --log-file "$WORK/ferroturn-lab.log" >"$WORK/ferroturn-lab.out" 2>&1 &
LAB_PID=$!; PIDS+=("$LAB_PID")
# The uclient's server: the echo peer 10.200.0.20 is RFC 1918 space, which ferroturn refuses by
# default (SSRF guard); an operator allows such a peer explicitly, as here. turnutils_uclient picks
# channel numbers up to 0x7FFF (RFC 5766), hence --legacy-channel-numbers (as in tests/interop).
ip netns exec "${P}server" "$BIN" --listening-ip 10.200.0.10 --relay-ip 10.200.0.10 --listening-port 3488 \
  --no-tls --min-port 50000 --max-port 50999 --realm lab.test --user "$USER_NAME:$USER_PASS" \
  --allowed-peer-ip 10.200.0.20 --legacy-channel-numbers --relay-threads 2 \
  --log-file "$WORK/ferroturn-lab-uclient.log" >"$WORK/ferroturn-lab-uclient.out" 2>&1 &
LAB2_PID=$!; PIDS+=("$LAB2_PID")
ip netns exec "${P}peer" turnutils_peer -L 10.200.0.20 -p 3480 >"$WORK/turnutils_peer.log" 2>&1 &
PIDS+=("$!")
wait_listen "${P}server" u 3478 "$WORK/ferroturn-lab.out" && wait_listen "${P}server" t 5349 "$WORK/ferroturn-lab.out" \
  && wait_listen "${P}server" u 3488 "$WORK/ferroturn-lab-uclient.out" && wait_listen "${P}peer" u 3480 "$WORK/turnutils_peer.log" \
  || die "lab servers did not start"

probe=$(timeout 20 ip netns exec "${P}c1" python3 "$REPO/tests/netlab/stun-probe.py" 10.200.0.10:3478 10.200.0.11:3478 | tail -1) || true
if [[ $probe == *'endpoint-dependent mapping (symmetric)'* ]]; then
  pass "netlab-nat-is-symmetric: c1's NAT maps per destination (ferroturn on 10.200.0.10 and .11 as STUN servers): $probe"
else fail "netlab-nat-is-symmetric: $probe"; fi

section "2. two Chromium processes, ${P}c1 and ${P}c2, each behind its own symmetric NAT"
e2e lab-chromium-relay-udp two-browsers --ns-a "${P}c1" --ns-b "${P}c2" \
  --ice "$(ice "turn:10.200.0.10:3478?transport=udp" "$USER_NAME" "$USER_PASS")" --expect relay:udp --bytes "$BYTES"
e2e lab-chromium-relay-tcp two-browsers --ns-a "${P}c1" --ns-b "${P}c2" \
  --ice "$(ice "turn:10.200.0.10:3478?transport=tcp" "$USER_NAME" "$USER_PASS")" --expect relay:tcp --bytes "$BYTES"
e2e lab-chromium-relay-tls two-browsers --ns-a "${P}c1" --ns-b "${P}c2" \
  --ice "$(ice "turns:turn.ferroturn.test:5349?transport=tcp" "$USER_NAME" "$USER_PASS")" --expect relay:tls --bytes "$BYTES" \
  --home "$WORK/home-trust" --resolver-rule "MAP turn.ferroturn.test 10.200.0.10"
nat_clients=$(grep -Eo 'session_start.* client=10\.20[01]\.[0-9.]+' "$WORK/ferroturn-lab.log" | grep -Eo '10\.20[01]\.[0-9]+\.[0-9]+' | sort | uniq -c | tr -s ' ' | tr '\n' ',' || true)
if grep -q 'client=10.200.0.101:' "$WORK/ferroturn-lab.log" && grep -q 'client=10.200.0.102:' "$WORK/ferroturn-lab.log" \
   && ! grep -Eq 'client=10\.201\.' "$WORK/ferroturn-lab.log"; then
  pass "lab-allocations-via-nat: the server saw the browsers only as the NATs' public addresses (allocations:${nat_clients%,})"
else fail "lab-allocations-via-nat: allocations from: ${nat_clients%,}"; fi
# No TURN, only STUN: host candidates are unroutable and each symmetric NAT gives the other side a
# mapping that was made for the STUN server, so the checks must fail.
e2e lab-chromium-stun-only-fails two-browsers --ns-a "${P}c1" --ns-b "${P}c2" \
  --ice "$(ice "stun:10.200.0.10:3478")" --policy all --expect fail --timeout 10000
if grep -q 'peer_denied' "$WORK/ferroturn-lab.log"; then
  echo "note: the lab server refused peers: $(grep -o 'peer=[^ ]* reason=[a-z-]*' "$WORK/ferroturn-lab.log" | sort -u | head -3 | tr '\n' ' ')"
fi

section "5. turnutils_uclient in ${P}c1 (behind symmetric NAT) -> ferroturn -> turnutils_peer 10.200.0.20"
uc_log=$WORK/uclient-lab.log
if timeout 90 ip netns exec "${P}c1" turnutils_uclient -c -m 5 -n 200 -l 100 -z 10 -e 10.200.0.20 -r 3480 \
     -u "$USER_NAME" -w "$USER_PASS" -p 3488 10.200.0.10 >"$uc_log" 2>&1; then
  lost=$(grep -Eo "Total lost packets [0-9]+ \([0-9.]+%\)" "$uc_log" | tail -1 || true)
  sent=$(grep -Eo "tot_send_msgs=[0-9]+" "$uc_log" | tail -1 | cut -d= -f2 || true)
  recv=$(grep -Eo "tot_recv_msgs=[0-9]+" "$uc_log" | tail -1 | cut -d= -f2 || true)
  if [[ $lost =~ ^Total\ lost\ packets\ 0\  && -n $sent && $sent -gt 0 && $sent == "$recv" ]] \
     && grep -q 'client=10.200.0.101:' "$WORK/ferroturn-lab-uclient.log"; then
    pass "lab-uclient-5x200: sent=$sent recv=$recv, $lost, allocations from NAT address 10.200.0.101"
  else fail "lab-uclient-5x200: sent=$sent recv=$recv '$lost'"; tail -5 "$uc_log"; fi
else fail "lab-uclient-5x200: turnutils_uclient failed or timed out"; tail -5 "$uc_log"; fi

for pid in "$LAB_PID" "$LAB2_PID"; do
  if kill -0 "$pid" 2>/dev/null; then pass "lab ferroturn (pid $pid) still running"; else fail "lab ferroturn (pid $pid) died"; fi
done
if grep -l panicked "$WORK"/ferroturn-*.log "$WORK"/ferroturn-*.out >/dev/null 2>&1; then fail "a ferroturn log shows a panic"; fi

section "done"
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
