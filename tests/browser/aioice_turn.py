#!/usr/bin/env python3
"""A second, independent TURN client family against ferroturn: aioice (the ICE/TURN library
of aiortc, Python), through its public `aioice.turn.create_turn_endpoint`.

Allocates over UDP, TCP or TLS, sends COUNT datagrams of varying sizes through the relay to a
UDP echo peer that this script runs itself, and checks that every datagram comes back intact,
and that the echo peer saw them coming from the relayed address (so they really crossed the
relay). aioice binds a channel per peer (ChannelBind, RFC 8656 section 12), so this exercises
Allocate with 401 -> long-term credentials, ChannelBind and ChannelData both ways, and at the
end Refresh with lifetime 0.

  aioice_turn.py --server 127.0.0.1:PORT --transport udp|tcp|tls --user U --password P
                 [--ca ca.pem] [--peer-ip 127.0.0.1] [--count 200] [--timeout 20]
Prints one line: PASS/FAIL aioice-<transport>: ...; exit 0 on PASS.
"""
import argparse
import asyncio
import hashlib
import ssl
import sys
import time

from aioice import turn


class EchoPeer(asyncio.DatagramProtocol):
    """UDP echo server: the TURN peer."""

    def __init__(self):
        self.sources = set()
        self.count = 0

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.sources.add(addr)
        self.count += 1
        self.transport.sendto(data, addr)


class Client(asyncio.DatagramProtocol):
    """What the application sees on top of the TURN allocation."""

    def __init__(self):
        self.received = {}
        self.errors = []
        self.all_in = asyncio.get_running_loop().create_future()
        self.expected = 0

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        seq = int.from_bytes(data[:4], "big")
        self.received[seq] = (data, addr)
        if len(self.received) >= self.expected and not self.all_in.done():
            self.all_in.set_result(None)

    def error_received(self, exc):
        self.errors.append(repr(exc))


def payload(seq):
    # 4-byte sequence number, then deterministic bytes; sizes 36..1235 bytes
    size = 32 + (seq * 97) % 1200
    body = hashlib.sha256(seq.to_bytes(4, "big")).digest() * (size // 32 + 1)
    return seq.to_bytes(4, "big") + body[:size]


async def run(a):
    host, port = a.server.rsplit(":", 1)
    server = (host, int(port))
    loop = asyncio.get_running_loop()
    peer_t, peer = await loop.create_datagram_endpoint(EchoPeer, local_addr=(a.peer_ip, 0))
    peer_addr = peer_t.get_extra_info("sockname")[:2]
    ctx = None
    if a.transport == "tls":
        ctx = ssl.create_default_context(cafile=a.ca)  # verifies the chain and the host name
    t0 = time.monotonic()
    relay, client = await asyncio.wait_for(
        turn.create_turn_endpoint(
            Client, server_addr=server, username=a.user, password=a.password,
            transport="udp" if a.transport == "udp" else "tcp", ssl=ctx,
        ),
        a.timeout,
    )
    try:
        relayed = relay.get_extra_info("sockname")
        mapped = relay.get_extra_info("related_address")
        client.expected = a.count
        sent = {}
        for seq in range(a.count):
            sent[seq] = payload(seq)
            relay.sendto(sent[seq], peer_addr)
            if seq % 20 == 19:
                await asyncio.sleep(0.005)  # paced: no loss expected on loopback
        try:
            await asyncio.wait_for(client.all_in, a.timeout)
        except asyncio.TimeoutError:
            pass
        bad = [s for s, (d, src) in client.received.items() if d != sent.get(s) or tuple(src[:2]) != tuple(peer_addr)]
        missing = a.count - len(client.received)
        via_relay = {tuple(s[:2]) for s in peer.sources} == {tuple(relayed[:2])}
        detail = (f"relayed {relayed[0]}:{relayed[1]} (mapped {mapped[0]}:{mapped[1]}), "
                  f"{len(client.received)}/{a.count} echoes intact={a.count - missing - len(bad)} "
                  f"({sum(len(p) for p in sent.values())} B), peer saw sources {sorted(peer.sources)}, "
                  f"{(time.monotonic() - t0) * 1000:.0f} ms")
        problems = []
        if missing:
            problems.append(f"{missing} echoes missing")
        if bad:
            problems.append(f"{len(bad)} echoes corrupted or from the wrong address")
        if not via_relay:
            problems.append("echo peer saw a source other than the relayed address")
        if client.errors:
            problems.append("errors: " + "; ".join(client.errors[:3]))
        return problems, detail
    finally:
        relay.close()
        await asyncio.sleep(0.3)  # let the Refresh(lifetime 0) go out
        peer_t.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--transport", choices=["udp", "tcp", "tls"], default="udp")
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--ca")
    p.add_argument("--peer-ip", default="127.0.0.1")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--timeout", type=float, default=20)
    a = p.parse_args()
    name = f"aioice-{a.transport}"
    try:
        problems, detail = asyncio.run(asyncio.wait_for(run(a), a.timeout * 2 + 5))
    except Exception as e:  # noqa: BLE001 - any failure is a FAIL line
        print(f"FAIL {name}: {type(e).__name__}: {e}")
        return 1
    if problems:
        print(f"FAIL {name}: {'; '.join(problems)} [{detail}]")
        return 1
    print(f"PASS {name}: {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
