#!/usr/bin/env python3
# Copied from shared/netlab/stun-probe.py (the project's netlab tools), unchanged but for this line.
"""Minimal STUN (RFC 5389) Binding probe for NAT-behaviour checks.

Sends Binding requests from ONE local UDP socket to each DEST (ip:port) and
prints the XOR-MAPPED-ADDRESS seen by each server. If the mapped port differs
between destinations, the NAT has endpoint-dependent mapping ("symmetric").

  stun-probe.py [--bind IP:PORT] [--timeout S] [--tries N] DEST [DEST ...]
Exit status: 0 all answered, 1 some destination did not answer.
Output (one JSON line per destination plus a summary line).
"""
import argparse, json, os, socket, struct, sys, time

MAGIC = 0x2112A442


def request():
    tid = os.urandom(12)
    return tid, struct.pack("!HHI", 0x0001, 0, MAGIC) + tid


def parse(data, tid):
    if len(data) < 20:
        return None
    mtype, mlen, magic = struct.unpack("!HHI", data[:8])
    if magic != MAGIC or data[8:20] != tid or mtype != 0x0101:
        return None
    pos, end, mapped = 20, 20 + mlen, None
    while pos + 4 <= end:
        atype, alen = struct.unpack("!HH", data[pos:pos + 4])
        val = data[pos + 4:pos + 4 + alen]
        if atype in (0x0020, 0x0001) and len(val) >= 8 and val[1] == 0x01:  # IPv4 only
            port = struct.unpack("!H", val[2:4])[0]
            ip = bytes(val[4:8])
            if atype == 0x0020:
                port ^= MAGIC >> 16
                ip = bytes(a ^ b for a, b in zip(ip, struct.pack("!I", MAGIC)))
            mapped = (socket.inet_ntoa(ip), port)
            if atype == 0x0020:
                break
        pos += 4 + alen + ((4 - alen % 4) % 4)
    return mapped


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dest", nargs="+", help="ip:port")
    ap.add_argument("--bind", default="0.0.0.0:0")
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--tries", type=int, default=3)
    a = ap.parse_args()
    bip, bport = a.bind.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((bip, int(bport)))
    local = s.getsockname()
    results = []
    for d in a.dest:
        ip, port = d.rsplit(":", 1)
        mapped, rtt = None, None
        for _ in range(max(1, min(a.tries, 10))):
            tid, pkt = request()
            t0 = time.time()
            s.sendto(pkt, (ip, int(port)))
            s.settimeout(a.timeout)
            try:
                while mapped is None:
                    data, _src = s.recvfrom(2048)
                    mapped = parse(data, tid)
            except socket.timeout:
                continue
            rtt = round((time.time() - t0) * 1000, 2)
            break
        r = {"local": f"{local[0]}:{local[1]}", "dest": d,
             "mapped": f"{mapped[0]}:{mapped[1]}" if mapped else None, "rtt_ms": rtt}
        results.append(r)
        print(json.dumps(r))
    ports = {r["mapped"] for r in results if r["mapped"]}
    behaviour = ("no-answer" if not ports else
                 "endpoint-dependent mapping (symmetric)" if len(ports) > 1 else
                 "endpoint-independent mapping (same mapping for all destinations)")
    print(json.dumps({"summary": behaviour, "distinct_mappings": sorted(ports)}))
    return 0 if all(r["mapped"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
