// Shared page code for ferroturn's browser tests (one-page.html, peer.html).
// Adapted from shared/browser-e2e/turn-test.html and peer.html (the project's browser e2e
// harness, verified there against coturn): same getStats() pair lookup and candidate-pair
// diagnostics; added here: deterministic bulk data with a SHA-256 integrity check in both
// directions, and the selected pair's byte counters and relay protocol.
'use strict';

window.E2E = (() => {
  const CHUNK = 16384;                     // data channel message size
  const HIGH_WATER = 4 << 20, LOW_WATER = 1 << 20;

  // Deterministic bytes: xorshift32 stream from a seed (same on both sides, no randomness).
  function makeData(bytes, seed) {
    const out = new Uint8Array(bytes);
    const words = new Uint32Array(out.buffer, 0, bytes >>> 2);
    let x = seed >>> 0 || 1;
    for (let i = 0; i < words.length; i++) {
      x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
      words[i] = x;
    }
    for (let i = words.length * 4; i < bytes; i++) out[i] = i & 0xff;
    return out;
  }

  async function sha256Hex(u8) {
    const d = new Uint8Array(await crypto.subtle.digest('SHA-256', u8));
    return Array.from(d, b => b.toString(16).padStart(2, '0')).join('');
  }

  // Sender half of a transfer: `bytes` deterministic bytes in CHUNK messages with
  // back-pressure, then the string 'sha256:<hex of what was sent>'.
  async function sendBulk(dc, bytes, seed) {
    const data = makeData(bytes, seed);
    const sha = await sha256Hex(data);
    dc.bufferedAmountLowThreshold = LOW_WATER;
    const t0 = performance.now();
    for (let off = 0; off < bytes; off += CHUNK) {
      if (dc.bufferedAmount > HIGH_WATER)
        await new Promise(r => { dc.onbufferedamountlow = () => { dc.onbufferedamountlow = null; r(); }; });
      dc.send(data.subarray(off, Math.min(off + CHUNK, bytes)));
    }
    dc.send('sha256:' + sha);
    return { sha, queuedMs: Math.round(performance.now() - t0) };
  }

  // Receiver half: collects binary messages into one buffer (order is that of an ordered,
  // reliable channel), then waits for the sender's digest string and compares.
  function recvBulk(dc, bytes) {
    return new Promise((resolve, reject) => {
      const buf = new Uint8Array(bytes);
      let got = 0, msgs = 0, t0 = null;
      dc.onmessage = async ev => {
        if (typeof ev.data === 'string') {
          if (!ev.data.startsWith('sha256:')) return;
          const sentSha = ev.data.slice(7);
          if (got !== bytes) { reject(new Error(`digest arrived after ${got} of ${bytes} bytes`)); return; }
          const recvSha = await sha256Hex(buf);
          const secs = (performance.now() - t0) / 1000;
          resolve({ bytes: got, messages: msgs, sentSha, recvSha, match: sentSha === recvSha,
                    seconds: +secs.toFixed(3), mbitPerSec: +((got * 8) / secs / 1e6).toFixed(1) });
          return;
        }
        const m = new Uint8Array(ev.data);
        if (t0 === null) t0 = performance.now();
        if (got + m.length > bytes) { reject(new Error(`received more than ${bytes} bytes`)); return; }
        buf.set(m, got); got += m.length; msgs++;
      };
    });
  }

  // The selected candidate pair (via the transport's selectedCandidatePairId) with both
  // candidates and the pair's byte counters.
  async function pairInfo(pc) {
    const st = await pc.getStats();
    let pair = null;
    st.forEach(s => { if (s.type === 'transport' && s.selectedCandidatePairId) pair = st.get(s.selectedCandidatePairId); });
    if (!pair) st.forEach(s => { if (!pair && s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
    if (!pair) return null;
    const c = x => x ? ({ type: x.candidateType, address: x.address, port: x.port, protocol: x.protocol,
                          relayProtocol: x.relayProtocol, url: x.url }) : null;
    return { state: pair.state, nominated: pair.nominated, rtt: pair.currentRoundTripTime,
             bytesSent: pair.bytesSent, bytesReceived: pair.bytesReceived,
             local: c(st.get(pair.localCandidateId)), remote: c(st.get(pair.remoteCandidateId)) };
  }

  // Every candidate pair with its check counters (diagnostics for failures).
  async function allPairs(pc) {
    const pairs = [];
    try {
      const st = await pc.getStats();
      st.forEach(s => {
        if (s.type !== 'candidate-pair') return;
        const l = st.get(s.localCandidateId) || {}, r = st.get(s.remoteCandidateId) || {};
        pairs.push({ local: `${l.candidateType}(${l.address}:${l.port}${l.relayProtocol ? '/' + l.relayProtocol : ''})`,
                     remote: `${r.candidateType}(${r.address}:${r.port})`, state: s.state,
                     requestsSent: s.requestsSent, responsesReceived: s.responsesReceived,
                     requestsReceived: s.requestsReceived });
      });
    } catch (_) {}
    return pairs;
  }

  function logger() {
    const t0 = performance.now(), log = [];
    const ms = () => Math.round(performance.now() - t0);
    const L = (...a) => { const s = `[${ms()}ms] ` + a.join(' '); log.push(s); console.log(s); };
    return { L, log, ms };
  }

  function finish(result) {
    window.__result = result;
    const out = document.getElementById('out');
    if (out) out.textContent = JSON.stringify(result, null, 2);
  }

  return { sendBulk, recvBulk, pairInfo, allPairs, logger, finish };
})();
