#!/usr/bin/env bash
# ferroturn's handle on the project's network-namespace lab: runs shared/netlab/netlab.sh (which
# CI has beside the clone, at ../shared) with ferroturn's own namespace prefix, so that the
# browser suite never touches a lab someone else has up under netlab's default prefix "tl-".
#   tests/netlab/lab.sh up|down|status|exec NODE CMD...   (see netlab.sh; nodes: server peer c1 c2 ...)
# Environment: NETLAB_SH (path to netlab.sh), NETLAB_PREFIX (default "ftb-", at most 6 chars).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
NETLAB_SH=${NETLAB_SH:-$repo/../shared/netlab/netlab.sh}
if [[ ! -f $NETLAB_SH ]]; then
  echo "lab.sh: netlab not found at $NETLAB_SH: it lives in the project's shared/ folder, which" \
       "CI puts beside the clone (../shared); set NETLAB_SH to its netlab.sh" >&2
  exit 2
fi
export NETLAB_PREFIX=${NETLAB_PREFIX:-ftb-}
exec bash "$NETLAB_SH" "$@"
