#!/usr/bin/env bash
# compare-coturn.sh - coturn vs ferroturn, back to back, same pinning, same load.
#
# Usage: benches/compare-coturn.sh [--runs N] [--smoke] [--json FILE] [--no-build]
#                                  [--ferroturn-args "ARGS"] [--floor]
#   --runs N     runs of every scenario per server (default 3); medians are reported
#   --smoke      one short run of each scenario (< 2 min): proves the script works
#   --json FILE  also write every measurement and the medians as JSON
#   --no-build   use the binaries already in $CARGO_TARGET_DIR (default target)/release
#   --ferroturn-args "ARGS"  extra ferroturn options, split on spaces (e.g.
#                "--relay-coalesce-us 50"); printed with the table
#   --floor      also run benches/floor/null_turn.c (built with cc), a "TURN server" that does
#                only the system calls and framing (no protocol work, no GSO), on the UDP
#                scenarios under the same load (third table): the kernel's share of each
#
# Servers run one at a time on loopback, pinned to CPU $SERVER_CPU (default 1, one relay
# thread each: coturn --relay-threads 1, ferroturn -m 1); the load (ferroturn-bench, coturn's
# turnutils_uclient and turnutils_peer) is pinned to CPU $LOAD_CPU (default 0). The figure per
# data scenario is relayed datagrams per server-CPU-second: datagrams the server forwarded,
# counted where they arrived (echo: received by the peer + received back by the clients; c2c
# and uclient: 2 x delivered), divided by the server's CPU time over the run
# (/proc/PID/task/*/schedstat, all threads).
#
# Ports (all 127.0.0.1, below the kernel's ephemeral range so no client socket or TIME-WAIT
# entry can hold them, none of 3478/34878/34879/35478-35480): coturn 9478 (+9479 alt), TLS
# 9486 (+9487 alt), ferroturn 9480, TLS 9488, null_turn 9482 (--floor), turnutils_peer 9490-9491, relay ports 10000-31999 (below the ephemeral
# range, so 10 000 client sockets cannot take them). Only processes this script started are
# stopped, by PID (trap on exit).
set -euo pipefail

RUNS=3
SMOKE=0
JSON_OUT=
BUILD=1
FERRO_ARGS=
FLOOR=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --smoke) SMOKE=1; RUNS=1; shift ;;
    --json) JSON_OUT=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --ferroturn-args) FERRO_ARGS=$2; shift 2 ;;
    --floor) FLOOR=1; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "compare-coturn.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "compare-coturn.sh: --runs wants a positive integer" >&2; exit 2; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SERVER_CPU=${SERVER_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}

if ! command -v turnserver >/dev/null || ! command -v turnutils_uclient >/dev/null; then
  echo "# installing coturn (Debian package)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq coturn >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq coturn >/dev/null; }
fi
if ! command -v openssl >/dev/null; then
  echo "# installing openssl (test certificates for the TLS scenario)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq openssl >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq openssl >/dev/null; }
fi
for t in python3 taskset turnserver turnutils_uclient turnutils_peer openssl; do
  command -v "$t" >/dev/null || { echo "compare-coturn.sh: $t not found" >&2; exit 2; }
done
if [[ "$BUILD" == 1 ]]; then
  (cd "$ROOT" && cargo build --release --bins --quiet)
fi
for b in ferroturn ferroturn-bench; do
  [[ -x "$TARGET/release/$b" ]] || { echo "compare-coturn.sh: $TARGET/release/$b missing (build it)" >&2; exit 2; }
done

OUT=$(mktemp -d /tmp/compare-coturn.XXXXXX)
echo "# logs: $OUT" >&2
# TLS scenario: a test CA and a server certificate for 127.0.0.1, both servers use it
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$OUT/ca.key" -out "$OUT/ca.crt" -subj "/CN=compare-coturn CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$OUT/server.key" -out "$OUT/server.csr" -subj "/CN=127.0.0.1" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$OUT/ext.cnf"
openssl x509 -req -in "$OUT/server.csr" -CA "$OUT/ca.crt" -CAkey "$OUT/ca.key" -CAcreateserial \
  -days 2 -extfile "$OUT/ext.cnf" -out "$OUT/server.crt" 2>/dev/null
if [[ "$FLOOR" == 1 ]]; then
  cc -O2 -o "$OUT/null_turn" "$ROOT/benches/floor/null_turn.c" \
    || { echo "compare-coturn.sh: --floor needs a C compiler (apt-get install gcc)" >&2; exit 2; }
fi
export ROOT TARGET SERVER_CPU LOAD_CPU RUNS SMOKE JSON_OUT OUT FERRO_ARGS FLOOR
exec python3 - <<'PYEOF'
import json, os, signal, statistics, subprocess, sys, time

OUT = os.environ["OUT"]
BIN = os.environ["TARGET"] + "/release/"
SCPU, LCPU = os.environ["SERVER_CPU"], os.environ["LOAD_CPU"]
RUNS, SMOKE = int(os.environ["RUNS"]), os.environ["SMOKE"] == "1"
FERRO_ARGS = os.environ.get("FERRO_ARGS", "").split()
FLOOR = os.environ.get("FLOOR") == "1"
HOST, COTURN_PORT, FERRO_PORT, PEER_PORT = "127.0.0.1", 9478, 9480, 9490
NULL_PORT = 9482  # the floor's null TURN server (--floor)
COTURN_TLS, FERRO_TLS = 9486, 9488
CERT, KEY, CA = f"{OUT}/server.crt", f"{OUT}/server.key", f"{OUT}/ca.crt"
MIN_PORT, MAX_PORT = 10000, 31999
USER, PASS, REALM = "bench", "benchpass", "bench.local"
DUR = 2 if SMOKE else 5            # seconds of measured traffic per data scenario
RATE = 40000                       # offered packets/s (paced; = 80 k relayed/s in echo modes)
# ChannelData 100 B at other paced rates: relayed/CPU-s depends on where the load sits against
# each server's own saturation (a busy server batches by itself, an idle one pays a wake-up
# per datagram), so one rate alone says little; the sweep shows the whole curve
SWEEP = [10000, 20000, 60000, 80000]
N_ALLOC = 2000 if SMOKE else 5000  # allocations for the allocations/s figure
N_IDLE = 10000                     # idle allocations for the RSS figure
started = []                       # PIDs this script started


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(3)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cleanup(*_):
    for p in started:
        stop(p)


signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
signal.signal(signal.SIGINT, lambda *_: sys.exit(130))


def spawn(cmd, cpu, log):
    p = subprocess.Popen(["taskset", "-c", cpu] + cmd, stdout=open(log, "a"),
                         stderr=subprocess.STDOUT, start_new_session=True)
    started.append(p)
    return p


def cpu_s(pid):
    t = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                t += int(f.read().split()[0])
        except OSError:
            pass
    return t / 1e9


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def port_open(port):
    # a listening UDP socket on HOST:port, per ss
    r = subprocess.run(["ss", "-H", "-lun", f"sport = :{port}"], capture_output=True, text=True)
    return bool(r.stdout.strip())


class Server:
    def __init__(self, name):
        self.name, self.p = name, None

    def start(self):
        log = f"{OUT}/{self.name}.log"
        if self.name == "coturn":
            self.port, self.tls_port = COTURN_PORT, COTURN_TLS
            cmd = ["turnserver", "-n", "--listening-ip", HOST, "--relay-ip", HOST,
                   "--listening-port", str(COTURN_PORT), "--alt-listening-port", str(COTURN_PORT + 1),
                   "--min-port", str(MIN_PORT), "--max-port", str(MAX_PORT), "--lt-cred-mech",
                   "--user", f"{USER}:{PASS}", "--realm", REALM, "--allow-loopback-peers",
                   "--cert", CERT, "--pkey", KEY, "--tls-listening-port", str(COTURN_TLS),
                   "--no-dtls", "--no-cli", "--no-rfc5780", "--no-software-attribute",
                   "--relay-threads", "1", "--userdb", f"{OUT}/turndb",
                   "--log-file", f"{OUT}/turnserver.log", "--simple-log", "--no-stdout-log"]
        elif self.name == "null":
            self.port, self.tls_port = NULL_PORT, None
            cmd = [f"{OUT}/null_turn", str(NULL_PORT)]
        else:
            self.port, self.tls_port = FERRO_PORT, FERRO_TLS
            cmd = [BIN + "ferroturn", "-L", HOST, "-p", str(FERRO_PORT), "-E", HOST,
                   "--cert", CERT, "--pkey", KEY, "--tls-listening-port", str(FERRO_TLS),
                   "--min-port", str(MIN_PORT), "--max-port", str(MAX_PORT), "-r", REALM,
                   "-u", f"{USER}:{PASS}", "--allow-loopback-peers", "-m", "1",
                   # turnutils_uclient binds channels below 0x4000 (RFC 5766 range)
                   "--legacy-channel-numbers",
                   # every client is 127.0.0.1: lift the per-source abuse limits (coturn has
                   # none by default) so 10 000 allocations from one address are allowed
                   "--max-allocations-per-ip", "0", "--max-allocations-per-prefix", "0",
                   "--max-requests-per-ip", "0", "--max-401-per-ip", "0"] + FERRO_ARGS
        if port_open(self.port):
            sys.exit(f"compare-coturn.sh: UDP port {self.port} is already in use")
        self.p = spawn(cmd, SCPU, log)
        for _ in range(100):
            if port_open(self.port):
                break
            if self.p.poll() is not None:
                sys.exit(f"compare-coturn.sh: {self.name} exited; see {log}")
            time.sleep(0.05)
        else:
            sys.exit(f"compare-coturn.sh: {self.name} did not start; see {log}")
        time.sleep(0.3)
        return self

    def stop(self):
        stop(self.p)
        time.sleep(0.5)  # let the kernel release the relay ports

    @property
    def addr(self):
        return f"{HOST}:{self.port}"


problems = []  # (server, scenario, what): printed under the tables; such a row is marked "!"


def problem(srv, key, what):
    problems.append((srv.name, key, what))
    print(f"# WARNING {srv.name} {key}: {what}", file=sys.stderr, flush=True)


def bench(srv, args, timeout=120, tls=False, key=None):
    """ferroturn-bench against srv; returns (its JSON, server CPU seconds over the run).
    With `key`, whatever makes the figure doubtful is recorded as a problem of that scenario:
    an exit code other than 0, failed allocations or bindings, clients that never sent, the
    client falling behind the offered rate, packets it could not send, payloads from the
    wrong sender or received twice, datagrams dropped at the client's own sockets, more than
    1 % loss."""
    addr = f"{HOST}:{srv.tls_port}" if tls else srv.addr
    extra = ["--transport", "tls", "--tls-ca", CA] if tls else []
    cmd = ["taskset", "-c", LCPU, BIN + "ferroturn-bench", "-s", addr, "-u", USER, "-w", PASS,
           "--json", "--quiet"] + extra + args
    c0 = cpu_s(srv.p.pid)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    c1 = cpu_s(srv.p.pid)
    try:
        j = json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        sys.exit(f"compare-coturn.sh: ferroturn-bench {' '.join(args)} against {srv.name} "
                 f"failed: {r.stderr.strip()[-500:]}")
    if key is not None:
        if r.returncode != 0:
            problem(srv, key, f"ferroturn-bench exited {r.returncode}")
        for field in ("allocations_failed", "bind_failed", "send_drops", "skipped",
                      "misdelivered"):
            if j.get(field):
                problem(srv, key, f"{field} = {j[field]}")
        if j.get("interrupted"):
            problem(srv, key, "interrupted")
        if j.get("client_rx_drops"):
            # the load client's own receive buffers overflowed: some loss is not the server's
            problem(srv, key, f"client sockets dropped {j['client_rx_drops']} datagrams")
        if "--allocate-only" not in args:
            if j.get("clients_sending", 0) < j.get("allocations_requested", 0):
                problem(srv, key, f"only {j.get('clients_sending')} clients sending")
            if not j.get("saturation") and j.get("sent_pps", 0) < 0.99 * j.get("offered_pps", 0):
                problem(srv, key, f"client sent {j['sent_pps']}/s of {j['offered_pps']}/s offered")
            if not j.get("saturation") and j.get("loss_pct", 0) > 1.0:
                problem(srv, key, f"loss {j['loss_pct']} %")
    return j, c1 - c0


def warm_up(srv):
    """1 s of ChannelData, not counted: first-use costs (page faults, caches) of a fresh server."""
    bench(srv, ["-m", "20", "--rate", str(RATE), "--warmup", "0", "--duration", "1"])


def relayed_per_cpu(srv, key, args, tls=False):
    j, cpu = bench(srv, ["--warmup", "0", "--duration", str(DUR)] + args, tls=tls, key=key)
    # Datagrams the server forwarded, counted where they arrived: echo, what the peer received
    # plus what came back; c2c, each delivered message crossed the server twice. (Counting
    # what clients sent would credit a server for datagrams it dropped.)
    if j["c2c"]:
        relayed = 2 * j["delivered"]
    else:
        relayed = j["echoed_by_peer"] + j["delivered"]
    return {"value": relayed / cpu if cpu > 0 else 0.0, "relayed": relayed, "server_cpu_s": cpu,
            "loss_pct": j["loss_pct"], "p99_us": j["latency_us"]["p99"]}


def uclient(srv):
    """coturn's own load client: 20 sessions x 1000 msg/s through turnutils_peer."""
    n = 1000 if SMOKE else 5000
    cmd = ["taskset", "-c", LCPU, "turnutils_uclient", "-m", "20", "-c", "-z", "1", "-n", str(n),
           "-l", "100", "-p", str(srv.port), "-e", HOST, "-r", str(PEER_PORT), "-u", USER,
           "-w", PASS, HOST]
    c0 = cpu_s(srv.p.pid)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    c1 = cpu_s(srv.p.pid)
    tot = None
    for line in (r.stdout + r.stderr).splitlines():
        if "tot_send_msgs=" in line:
            kv = dict(x.strip().split("=") for x in line.split(":")[-1].split(",") if "=" in x)
            # echoed messages crossed the server twice (lower bound: one-way losses are
            # not counted)
            tot = 2 * int(kv["tot_recv_msgs"])
    if tot is None:
        sys.exit(f"compare-coturn.sh: turnutils_uclient against {srv.name} printed no totals")
    if r.returncode != 0:
        problem(srv, "uclient100", f"turnutils_uclient exited {r.returncode}")
    cpu = c1 - c0
    return {"value": tot / cpu if cpu > 0 else 0.0, "relayed": tot, "server_cpu_s": cpu}


def saturation(srv):
    # geometric steps x1.25 from 20 k, then 3 bisection steps (--refine) after the first loss
    cap = 6 if SMOKE else 75
    j, cpu = bench(srv, ["-m", "20", "--c2c", "--saturate", "--rate", "20000", "--step-secs",
                         "1" if SMOKE else "2", "--duration", str(cap)], timeout=cap + 60,
                   key="sat")
    stop = j["saturation"]["stop"] or ""
    # stopped by the time cap, or because the load client could not send the next step's
    # rate, rather than by the server losing > 1 %: the figure is a lower bound
    return {"value": float(j["saturation"]["max_pass_pps"] or 0), "server_cpu_s": cpu,
            "stop": stop, "capped": "--duration" in stop or "client-bound" in stop}


def allocs(srv):
    j, cpu = bench(srv, ["--allocate-only", "-m", str(N_ALLOC), "--concurrency", "64"],
                   key="allocs")
    ok = j["allocations_ok"]
    # allocate + delete, per server CPU second: what the server could do with the client free
    return {"value": float(j["allocs_per_s"]), "per_server_cpu_s": ok / cpu if cpu > 0 else 0.0,
            "failed": j["allocations_failed"]}


def rss(name):
    """RSS growth of a fresh server holding N_IDLE idle allocations."""
    srv = Server(name).start()
    r0 = rss_kb(srv.p.pid)
    cmd = ["taskset", "-c", LCPU, BIN + "ferroturn-bench", "-s", srv.addr, "-u", USER, "-w", PASS,
           "--allocate-only", "-m", str(N_IDLE), "--concurrency", "64", "--hold", "60"]
    errlog = open(f"{OUT}/rss-{name}.log", "w+")
    p = subprocess.Popen(cmd, stdout=errlog, stderr=subprocess.STDOUT, start_new_session=True)
    started.append(p)
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None:
        errlog.seek(0)
        if "holding" in errlog.read():
            break
        time.sleep(0.1)
    time.sleep(1.0)
    r1 = rss_kb(srv.p.pid)
    stop(p)  # SIGTERM: the client deletes its allocations and exits
    srv.stop()
    errlog.seek(0)
    text = errlog.read()
    held = [int(w) for line in text.splitlines() if "holding" in line
            for w in line.split()[2:3] if w.isdigit()]
    n = held[0] if held else 0
    if n == 0:
        sys.exit(f"compare-coturn.sh: no idle allocations held on {name}; see {OUT}/rss-{name}.log")
    return {"value": (r1 - r0) * 1024 / n, "allocations": n, "rss0_kb": r0, "rss1_kb": r1}


def p99(srv, rate):
    j, cpu = bench(srv, ["-m", "20", "--rate", str(int(rate)), "--warmup", "1", "--duration",
                         str(DUR)], key="p99")
    return {"value": float(j["latency_us"]["p99"]), "rate": int(rate), "loss_pct": j["loss_pct"]}


SCEN = [  # key, label, unit, better ("hi"/"lo")
    ("chan100", "ChannelData UDP 100 B (ferroturn-bench, 40 k pps echo)", "relayed/CPU-s", "hi"),
] + [(f"chan100_{r // 1000}k", f"ChannelData UDP 100 B, {r // 1000} k pps echo", "relayed/CPU-s",
       "hi") for r in SWEEP] + [
    ("uclient100", "ChannelData UDP 100 B (turnutils_uclient, 20 k pps echo)", "relayed/CPU-s", "hi"),
    ("chan1000", "ChannelData UDP 1000 B", "relayed/CPU-s", "hi"),
    ("send100", "Send/Data indications 100 B", "relayed/CPU-s", "hi"),
    ("tcp100", "TCP client leg, ChannelData 100 B", "relayed/CPU-s", "hi"),
    ("tls100", "TLS client leg, ChannelData 100 B", "relayed/CPU-s", "hi"),
    ("c2c100", "client-to-client ChannelData 100 B", "relayed/CPU-s", "hi"),
    ("video", "video-like: ChannelData 1200 B, 8 back to back per client", "relayed/CPU-s", "hi"),
    ("sat", "saturation, c2c, max rate with <= 1 % loss", "msg/s", "hi"),
    ("allocs", "authenticated allocations/s (ferroturn-bench, 64 outstanding)", "allocs/s", "hi"),
    ("allocs_cpu", "allocate+delete per server-CPU-second", "allocs/CPU-s", "hi"),
    ("rss", f"RSS growth per idle allocation ({N_IDLE})", "bytes", "lo"),
    ("p99", "p99 RTT at 50 % of coturn's saturation rate (echo)", "us", "lo"),
]
results = {k: {"coturn": [], "ferroturn": [], "null": []} for k, *_ in SCEN}
raw = []

peer = spawn(["turnutils_peer", "-L", HOST, "-p", str(PEER_PORT)], LCPU, f"{OUT}/peer.log")
try:
    t_start = time.time()
    sat_coturn = []
    # The order alternates from run to run (host drift over a run is not one server's);
    # p99 comes last, at one rate for all runs: half the median of coturn's saturation runs.
    orders = [("coturn", "ferroturn") if run % 2 == 0 else ("ferroturn", "coturn")
              for run in range(RUNS)]
    if FLOOR:  # the null server goes first, between or last in turn
        orders = [o[:run % 3] + ("null",) + o[run % 3:] for run, o in enumerate(orders)]
    meas = {}
    for run in range(RUNS):
        for name in orders[run]:
            srv = Server(name).start()
            m = {}
            warm_up(srv)
            m["chan100"] = relayed_per_cpu(srv, "chan100", ["-m", "20", "--rate", str(RATE)])
            for r in SWEEP:
                k = f"chan100_{r // 1000}k"
                m[k] = relayed_per_cpu(srv, k, ["-m", "20", "--rate", str(r)])
            # null_turn (--floor) speaks UDP only and is not measured for RSS
            real = name != "null"
            if real:
                m["uclient100"] = uclient(srv)
            m["chan1000"] = relayed_per_cpu(srv, "chan1000",
                                            ["-m", "20", "--rate", str(RATE), "-l", "1000"])
            m["send100"] = relayed_per_cpu(srv, "send100",
                                           ["-m", "20", "--rate", str(RATE), "--mode", "send"])
            if real:
                m["tcp100"] = relayed_per_cpu(srv, "tcp100", ["-m", "20", "--rate", str(RATE),
                                                              "--transport", "tcp"])
                m["tls100"] = relayed_per_cpu(srv, "tls100", ["-m", "20", "--rate", str(RATE)],
                                              tls=True)
            m["c2c100"] = relayed_per_cpu(srv, "c2c100",
                                          ["-m", "20", "--rate", str(RATE), "--c2c"])
            # a video frame's packets leave a sender's pacer together: GSO territory
            m["video"] = relayed_per_cpu(srv, "video", ["-m", "20", "--rate", str(RATE), "-l",
                                                        "1200", "--burst", "8"])
            m["sat"] = saturation(srv)
            if name == "coturn":
                sat_coturn.append(m["sat"]["value"])
            a = allocs(srv)
            m["allocs"] = a
            m["allocs_cpu"] = {"value": a["per_server_cpu_s"]}
            srv.stop()
            if real:
                m["rss"] = rss(name)
            meas[(run, name)] = m
            print(f"# run {run + 1}/{RUNS} {name}: " + ", ".join(
                f"{k}={v['value']:.0f}" for k, v in m.items()), file=sys.stderr, flush=True)
    # (a saturation search whose first step already lost > 1 % reports 0: then the search's
    # starting rate stands in, so the p99 runs still happen)
    p99_rate = 0.5 * (statistics.median(sat_coturn) or 20000)
    for run in range(RUNS):
        for name in orders[run]:
            srv = Server(name).start()
            warm_up(srv)
            meas[(run, name)]["p99"] = p99(srv, p99_rate)
            srv.stop()
            print(f"# run {run + 1}/{RUNS} {name}: p99={meas[(run, name)]['p99']['value']:.0f} us "
                  f"at {p99_rate:.0f} pps", file=sys.stderr, flush=True)
    for run in range(RUNS):
        for name in ("coturn", "ferroturn") + (("null",) if FLOOR else ()):
            m = meas[(run, name)]
            for k, v in m.items():
                results[k][name].append(v["value"])
            raw.append({"run": run + 1, "server": name, "first": orders[run][0],
                        "measurements": m})
    elapsed = time.time() - t_start
finally:
    cleanup()

rows = []
for key, label, unit, better in SCEN:
    c = statistics.median(results[key]["coturn"])
    f = statistics.median(results[key]["ferroturn"])
    ratio = f / c if c else float("nan")
    capped = {n: any(r["measurements"][key].get("capped") for r in raw if r["server"] == n)
              for n in ("coturn", "ferroturn")}
    rows.append({"scenario": key, "label": label, "unit": unit, "coturn": c, "ferroturn": f,
                 "ratio": ratio, "runs": RUNS, "lower_bound": capped,
                 "problems": [f"{n}: {w}" for n, k, w in problems
                              if k == key and n in ("coturn", "ferroturn")]})

cv = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "coturn"], capture_output=True,
                    text=True).stdout or "?"
print(f"\n### coturn {cv} vs ferroturn, median of {RUNS} run(s), "
      f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
      f"server on CPU {SCPU}, load on CPU {LCPU}, {elapsed:.0f} s"
      + (f", ferroturn with `{' '.join(FERRO_ARGS)}`" if FERRO_ARGS else "") + "\n")
print("| scenario | unit | coturn | ferroturn | ferroturn / coturn |")
print("|---|---|---:|---:|---:|")
for r in rows:
    lb = r["lower_bound"]
    c = (">= " if lb["coturn"] else "") + f"{r['coturn']:.0f}"
    f = (">= " if lb["ferroturn"] else "") + f"{r['ferroturn']:.0f}"
    flag = " !" if r["problems"] else ""
    print(f"| {r['label']} | {r['unit']} | {c} | {f} | {r['ratio']:.2f}{flag} |")
# The load sweep with what a single figure hides: loss, latency and how busy each server was
sweep = [(RATE, "chan100")] + [(r, f"chan100_{r // 1000}k") for r in SWEEP]
print("\nChannelData UDP 100 B echo by offered rate (medians; busy = server CPU / measured seconds):\n")
print("| offered pps | coturn relayed/CPU-s | busy | loss % | p99 µs | ferroturn relayed/CPU-s | busy | loss % | p99 µs | ratio |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for rate, key in sorted(sweep):
    cells = []
    for n in ("coturn", "ferroturn"):
        ms = [r["measurements"][key] for r in raw if r["server"] == n]
        med = lambda f: statistics.median(f(x) for x in ms)
        cells.append(f"{med(lambda x: x['value']):.0f} | {100 * med(lambda x: x['server_cpu_s']) / DUR:.0f} % | "
                     f"{med(lambda x: x['loss_pct']):.1f} | {med(lambda x: x['p99_us']):.0f}")
    row = next(r for r in rows if r["scenario"] == key)
    print(f"| {rate} | {cells[0]} | {cells[1]} | {row['ratio']:.2f} |")
floor_rows = []
if FLOOR:
    # The floor: the same load on a server that only moves datagrams (benches/floor/null_turn.c)
    print("\nThe floor (--floor): null_turn, no authentication, permissions, timers or lookups, "
          "the same system calls and framing, no GSO (medians):\n")
    print("| scenario | unit | coturn | ferroturn | null_turn | coturn / null | ferroturn / null |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for key, label, unit, better in SCEN:
        if not results[key]["null"]:
            continue
        c, f = (statistics.median(results[key][n]) for n in ("coturn", "ferroturn"))
        z = statistics.median(results[key]["null"])
        floor_rows.append({"scenario": key, "coturn": c, "ferroturn": f, "null": z})
        ratios = f"{c / z:.2f} | {f / z:.2f}" if z else "- | -"
        flag = " !" if any(n == "null" and k == key for n, k, _ in problems) else ""
        print(f"| {label} | {unit} | {c:.0f} | {f:.0f} | {z:.0f}{flag} | {ratios} |")
    print("\n(for p99 lower is better; ! : a null_turn run of the scenario is listed below)")
print("\n(ratio: ferroturn / coturn; for RSS and p99 lower is better, so < 1 is better there;"
      " >= : the saturation search hit its time cap or the load client's limit before the"
      " server lost > 1 %; the order of the servers alternates from run to run)")
if problems:
    print("\n! doubtful figures (a run of the scenario had this; see the logs):")
    for n, k, w in problems:
        print(f"  - {k}, {n}: {w}")
if os.environ.get("JSON_OUT"):
    with open(os.environ["JSON_OUT"], "w") as fh:
        json.dump({"runs": RUNS, "smoke": SMOKE, "coturn_version": cv,
                   "ferroturn_args": FERRO_ARGS, "p99_rate": p99_rate, "rows": rows,
                   "raw": raw, "problems": problems, "floor": floor_rows},
                  fh, indent=1)
PYEOF
