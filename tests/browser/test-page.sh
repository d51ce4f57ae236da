#!/usr/bin/env bash
# The connectivity test page (test-page = true, /test on the admin listener) in headless
# Chromium: the page fetches TURN REST credentials from the server with the admin token,
# gathers relay candidates over turn:udp, turn:tcp and turns: (a certificate from a test CA that
# Chromium trusts through an NSS database), and runs a relay-only data-channel round trip.
# Also over plain HTTP: the page is served with a CSP, the credential endpoint needs the token
# (401 without) and is rate limited (429).
#
# Own ports: 35478 udp/tcp, 35479 tls, 35480 admin, relays 49000-49099 (override the base with
# TEST_PAGE_PORT). Needs chromium, certutil (libnss3-tools), openssl, curl, node >= 20; runs
# `npm ci` for playwright-core if tests/browser/node_modules is missing. No root, no apt.
# Starts one ferroturn and kills exactly that PID at exit. Prints `test-page: N passed, M failed`.
# FERROTURN_BIN: the binary (default: cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
HERE=$REPO/tests/browser
PORT=${TEST_PAGE_PORT:-35478}
TLS_PORT=$((PORT + 1))
ADMIN_PORT=$((PORT + 2))
TOKEN=test-page-token-$RANDOM$RANDOM$RANDOM
WORK=$(mktemp -d /tmp/ferroturn-test-page.XXXX)
SRV_PID=
passed=0
failed=0
pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
finish() {
  local rc=$?
  if [[ -n $SRV_PID ]]; then
    kill -TERM "$SRV_PID" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$SRV_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$SRV_PID" 2>/dev/null || true
  fi
  echo "test-page: $passed passed, $failed failed"
  if [[ $failed -gt 0 || $rc -ne 0 ]]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap finish EXIT
die() { fail "$*"; exit 1; }

for c in openssl certutil curl node; do command -v $c >/dev/null || die "$c is missing"; done
[[ -x /usr/lib/chromium/chromium ]] || command -v chromium >/dev/null || die "chromium is missing"
if [[ ! -d $HERE/node_modules/playwright-core ]]; then
  (cd "$HERE" && timeout 300 npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed"
fi
if [[ -n ${FERROTURN_BIN:-} ]]; then BIN=$FERROTURN_BIN; else
  timeout 1800 cargo build --release --quiet || die "cargo build --release failed"
  BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/ferroturn
fi
[[ -x $BIN ]] || die "no ferroturn binary at $BIN"

# Test CA + certificate for localhost; Chromium trusts the CA through $WORK/home/.pki/nssdb.
PKI=$WORK/pki
mkdir -p "$PKI" "$WORK/home/.pki/nssdb"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=ferroturn test-page CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
  -keyout "$PKI/ca.key" -out "$PKI/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -keyout "$PKI/server.key" -out "$PKI/server.csr" 2>/dev/null
printf '%s\n' basicConstraints=critical,CA:FALSE keyUsage=critical,digitalSignature extendedKeyUsage=serverAuth \
  subjectAltName=DNS:localhost >"$PKI/ext.cnf"
openssl x509 -req -in "$PKI/server.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial -days 2 \
  -extfile "$PKI/ext.cnf" -out "$PKI/server.pem" 2>/dev/null
certutil -d "sql:$WORK/home/.pki/nssdb" -N --empty-password
certutil -d "sql:$WORK/home/.pki/nssdb" -A -t C,, -n ferroturn-test-page-ca -i "$PKI/ca.pem"

printf '%s\n' "$TOKEN" >"$WORK/admin-token"
chmod 600 "$WORK/admin-token"
cat >"$WORK/turnserver.toml" <<TOML
listening-ip = "127.0.0.1"
listening-port = $PORT
tls-listening-port = $TLS_PORT
cert = "$PKI/server.pem"
pkey = "$PKI/server.key"
min-port = 49000
max-port = 49099
realm = "test-page.ferroturn.test"
use-auth-secret = true
static-auth-secret = "test-page-secret-$RANDOM$RANDOM"
# Both relayed addresses are 127.0.0.1: the round trip is a loopback peer.
allow-loopback-peers = true
relay-threads = 2
admin-listen = "127.0.0.1:$ADMIN_PORT"
admin-token-file = "$WORK/admin-token"
test-page = true
test-page-urls = ["turn:127.0.0.1:$PORT?transport=udp", "turn:127.0.0.1:$PORT?transport=tcp", "turns:localhost:$TLS_PORT?transport=tcp"]
TOML
"$BIN" --config "$WORK/turnserver.toml" >"$WORK/ferroturn.log" 2>&1 &
SRV_PID=$!
for _ in $(seq 100); do
  curl -fsS -m 1 "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null 2>&1 && break
  kill -0 "$SRV_PID" 2>/dev/null || { tail -5 "$WORK/ferroturn.log"; die "ferroturn exited"; }
  sleep 0.1
done
curl -fsS -m 1 "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null || die "ferroturn not ready"

# Plain HTTP checks.
hdrs=$(curl -sS -m 5 -D - -o "$WORK/page.html" "http://127.0.0.1:$ADMIN_PORT/test")
if grep -q '^HTTP/1.1 200' <<<"$hdrs" && grep -qi '^Content-Security-Policy:' <<<"$hdrs" && grep -q 'ferroturn connectivity test' "$WORK/page.html"; then
  pass "test-page served with a Content-Security-Policy"
else fail "test-page served: $(head -1 <<<"$hdrs")"; fi
code=$(curl -sS -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/api/v1/test-credentials")
[[ $code == 401 ]] && pass "test-page credentials without the token: 401" || fail "test-page credentials without the token: $code"

# The page in Chromium.
while read -r line; do
  case $line in PASS*) echo "$line"; passed=$((passed + 1)) ;; FAIL*) echo "$line"; failed=$((failed + 1)) ;; esac
done < <(cd "$HERE" && timeout 120 node test-page.mjs --url "http://127.0.0.1:$ADMIN_PORT/test" --token "$TOKEN" \
           --home "$WORK/home" --resolver-rule "MAP localhost 127.0.0.1" --out "$WORK/result.json" 2>>"$WORK/driver.stderr" || true)
[[ -s $WORK/result.json ]] || fail "test-page driver produced no result: $(tail -3 "$WORK/driver.stderr" | tr '\n' ' ')"

# Rate limit: at most 30 credentials a minute (the page took some already).
limited=0
for _ in $(seq 31); do
  code=$(curl -sS -m 5 -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ADMIN_PORT/api/v1/test-credentials")
  [[ $code == 429 ]] && { limited=1; break; }
  [[ $code == 200 ]] || break
done
[[ $limited == 1 ]] && pass "test-page credentials rate limited (429)" || fail "test-page credentials not rate limited (last $code)"
[[ $failed -eq 0 ]]
