#!/usr/bin/env bash
# Run every test of ferroturn: unit and integration tests (cargo test, including the webrtc-rs
# client end-to-end tests), then coturn's own clients against the release binary.
# Installs what it needs (Debian's coturn package for turnutils_*) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v turnutils_uclient >/dev/null; then
  echo "== installing Debian's coturn (for turnutils_stunclient / turnutils_uclient / turnutils_peer)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq coturn >/dev/null
fi
# The coturn package may start its own turnserver on systems with systemd; it must not hold
# the ports the tests use. It is not ours to stop, so the tests use their own ports instead.

echo "== cargo test (unit, engine with fake clock, webrtc-rs client end to end)"
cargo test --all-targets 2>&1 | tee /tmp/ferroturn-cargo-test.log | grep -E "^(test result|running|error|failures)|FAILED|panicked" || true
if grep -Eq "^test result: FAILED|^error(\[|:)" /tmp/ferroturn-cargo-test.log; then
  echo "cargo test failed (full log: /tmp/ferroturn-cargo-test.log)"; exit 1
fi
passed=$(grep -Eo "^test result: ok\. [0-9]+ passed" /tmp/ferroturn-cargo-test.log | awk '{s+=$4} END {print s+0}')
echo "cargo test: $passed tests passed"

echo "== release build"
cargo build --release --quiet
echo "== coturn clients against ferroturn"
tests/interop/coturn-clients.sh target/release/ferroturn
