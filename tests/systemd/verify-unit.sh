#!/usr/bin/env bash
# systemd-analyze verify on systemd/ferroturn.service. The unit's ExecStart names the installed
# path (/usr/local/bin/ferroturn); verify insists that it exists, so check a copy whose ExecStart
# points at the freshly built binary and is otherwise byte-identical.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$(pwd)/target/release/ferroturn
[ -x "$BIN" ] || cargo build --release --quiet
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
sed "s|/usr/local/bin/ferroturn|$BIN|g" systemd/ferroturn.service > "$tmp/ferroturn.service"
out=$(systemd-analyze verify "$tmp/ferroturn.service" 2>&1 || true)
# Lines about other units on this (container) machine are not ours.
ours=$(grep -F "ferroturn.service" <<<"$out" || true)
if [ -n "$ours" ]; then
  echo "$ours"; echo "systemd-analyze verify: FAILED"; exit 1
fi
echo "systemd-analyze verify: ferroturn.service OK"
if systemd-analyze security --help >/dev/null 2>&1; then
  systemd-analyze security --offline=true "$tmp/ferroturn.service" 2>/dev/null | tail -1 || true
fi
