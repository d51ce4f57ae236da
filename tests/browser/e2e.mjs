#!/usr/bin/env node
// Drives headless Chromium (Debian's package; playwright-core never downloads a browser) for
// ferroturn's browser tests, and decides PASS/FAIL from what the pages report.
// Adapted from shared/browser-e2e/run-turn-test.mjs and run-two-browsers.mjs: same Chromium
// flags, same catch-all resolver rule (no DNS lookup ever leaves the machine), same signaling
// over Playwright's pipe and `ip netns exec` wrapper for browsers inside network namespaces.
// Changed: pages are served by request interception (no HTTP server), iceServers are passed as
// JSON, $HOME can be set (NSS trust store), and the expectation is checked here.
//
//   node e2e.mjs one-page     --ice JSON [--ice-b JSON] [options]
//   node e2e.mjs two-browsers --ice JSON [--ice-b JSON] --ns-a NS --ns-b NS [options]
// options:
//   --expect relay:udp|relay:tcp|relay:tls   connected, relay<->relay selected on every
//                            PeerConnection, local relayProtocol as given, `--bytes` each way
//                            with equal SHA-256, selected pair byte counters >= --bytes
//            error:CODE      not connected, an icecandidateerror with errorCode CODE
//            fail            not connected; every side gathered a srflx candidate (the STUN
//                            server was reachable) and no candidate pair succeeded
//   --policy relay|all (relay)  --bytes N (5 MiB)  --timeout MS (30000; two-browsers 40000)
//   --home DIR       $HOME for Chromium (its NSS database, $HOME/.pki/nssdb, holds test CAs)
//   --resolver-rule 'MAP name ip'   put in front of the catch-all `MAP * ~NOTFOUND`
//   --name NAME      label for the summary line;  --out FILE  full JSON result
//   --chromium PATH  (default /usr/lib/chromium/chromium, $CHROMIUM)   --verbose
// Prints one summary line; exit 0 = expectation met, 1 = not met, 3 = driver error.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
let chromium;
try { ({ chromium } = require('playwright-core')); }
catch (e) { console.error('playwright-core not found: run `npm ci` in tests/browser'); process.exit(3); }
const here = path.dirname(fileURLToPath(import.meta.url));

const mode = process.argv[2];
if (mode !== 'one-page' && mode !== 'two-browsers') { console.error('usage: e2e.mjs one-page|two-browsers --ice JSON ...'); process.exit(3); }
const args = { policy: 'relay', bytes: String(5 << 20), timeout: mode === 'two-browsers' ? '40000' : '30000', expect: 'relay:udp', resolverRule: [] };
const argv = process.argv.slice(3);
for (let i = 0; i < argv.length; i++) {
  const k = argv[i];
  if (k === '--verbose') { args.verbose = true; continue; }
  if (!k.startsWith('--') || i + 1 >= argv.length) { console.error('bad argument ' + k); process.exit(3); }
  const key = k.slice(2).replace(/-(\w)/g, (_, c) => c.toUpperCase());
  if (key === 'resolverRule') args.resolverRule.push(argv[++i]); else args[key] = argv[++i];
}
const name = args.name || mode;
const iceList = j => { const v = JSON.parse(j); return Array.isArray(v) ? v : [v]; };
if (!args.ice) { console.error('--ice is required'); process.exit(3); }
const iceA = iceList(args.ice), iceB = args.iceB ? iceList(args.iceB) : iceA;
const bytes = +args.bytes, timeout = +args.timeout;
// IP literal hosts of stun:/turn:/turns: URLs (RFC 7064/7065: scheme:host[:port][?transport=...]).
function ipLiterals(servers) {
  const ips = new Set();
  for (const s of servers) for (const u of [].concat(s.urls)) {
    const m = /^(?:stun|stuns|turn|turns):(\[[0-9a-fA-F:.]+\]|[0-9.]+)(?::\d+)?(?:\?.*)?$/.exec(u);
    if (m && (m[1].startsWith('[') || /^\d+\.\d+\.\d+\.\d+$/.test(m[1]))) ips.add(m[1].replace(/^\[|\]$/g, ''));
  }
  return [...ips];
}
const exe = args.chromium || process.env.CHROMIUM ||
  (fs.existsSync('/usr/lib/chromium/chromium') ? '/usr/lib/chromium/chromium' : '/usr/bin/chromium');

// Hard bound on the whole run, whatever hangs.
const watchdog = setTimeout(() => { console.log(`FAIL ${name}: driver watchdog fired`); process.exit(3); }, timeout + 45000);
watchdog.unref();

const flags = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-dev-shm-usage',
  // no mDNS (.local) host candidates, so no multicast
  '--disable-features=WebRtcHideLocalIpsWithMdns',
  // Chromium looks up Google/DuckDuckGo hosts at start despite the flags above: refuse every
  // hostname here; test names are mapped by --resolver-rule in front of the catch-all (first
  // MAP that matches wins). The rule also matches IP literals, and Chromium does pass the host
  // of a TCP TURN URL through the resolver (turn:10.200.0.10:3478?transport=tcp failed with 701
  // and no SYN on the wire; UDP TURN URLs are not resolved): exclude every IP literal used.
  '--host-resolver-rules=' + [...args.resolverRule, 'MAP * ~NOTFOUND', 'EXCLUDE 127.0.0.1',
                              ...ipLiterals([...iceA, ...iceB]).map(ip => 'EXCLUDE ' + ip)].join(', '),
];
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ferroturn-e2e-'));
const env = { ...process.env, ...(args.home ? { HOME: args.home } : {}) };
const files = { 'one-page.html': 'text/html', 'peer.html': 'text/html', 'common.js': 'text/javascript' };

async function launch(label, ns) {
  let executablePath = exe;
  if (ns) {  // same binary inside the namespace; control stays on Playwright's pipe
    if (!/^[A-Za-z0-9_.-]+$/.test(ns)) throw new Error('bad namespace name ' + ns);
    executablePath = path.join(tmp, `chromium-${label}.sh`);
    fs.writeFileSync(executablePath, `#!/bin/sh\nexec ip netns exec ${ns} ${exe} "$@"\n`, { mode: 0o755 });
  }
  const ctx = await chromium.launchPersistentContext(path.join(tmp, 'profile-' + label),
    { executablePath, headless: true, args: flags, env, timeout: 30000 });
  const page = ctx.pages()[0] || await ctx.newPage();
  await page.route('http://127.0.0.1/**', r => {
    const f = new URL(r.request().url()).pathname.slice(1);
    if (!files[f]) return r.fulfill({ status: 404, body: '' });
    return r.fulfill({ status: 200, contentType: files[f], body: fs.readFileSync(path.join(here, f)) });
  });
  page.on('console', m => { if (args.verbose) console.error(`[${label}]`, m.text()); });
  page.on('pageerror', e => console.error(`[${label}] page error:`, e.message));
  return { ctx, page };
}

const waitResult = p => p.waitForFunction(() => window.__result !== undefined, null, { timeout: timeout + 20000, polling: 100 })
  .then(() => p.evaluate(() => window.__result));

// ---- expectation checks; each returns a list of problems (empty = pass) ----
const srflx = cands => cands.filter(c => / typ srflx /.test(c));
function checkSide(label, r, side) {
  // side: { reply, transfers, pair } as seen by one PeerConnection
  const p = [];
  const [kind, arg] = args.expect.split(':');
  if (kind === 'relay') {
    if (r.error) p.push(`${label}: ${r.error}`);
    if (!r.connected) p.push(`${label}: not connected`);
    const sp = side.pair;
    if (!sp) p.push(`${label}: no selected candidate pair`);
    else {
      if (sp.local?.type !== 'relay' || sp.remote?.type !== 'relay')
        p.push(`${label}: selected pair is ${sp.local?.type}->${sp.remote?.type}, not relay->relay`);
      if (sp.local?.relayProtocol !== arg) p.push(`${label}: local relayProtocol ${sp.local?.relayProtocol}, expected ${arg}`);
      if (bytes > 0 && !(sp.bytesSent >= bytes && sp.bytesReceived >= bytes))
        p.push(`${label}: selected pair moved ${sp.bytesSent} B out / ${sp.bytesReceived} B in, expected >= ${bytes} each way`);
    }
    if (bytes > 0) for (const dir of ['ab', 'ba']) {
      const t = side.transfers?.[dir];
      if (!t) p.push(`${label}: no ${dir} transfer result`);
      else if (!t.match || t.bytes !== bytes) p.push(`${label}: ${dir} integrity: ${t.bytes} B, sha sent ${t.sentSha} recv ${t.recvSha}`);
    }
  } else if (kind === 'error') {
    if (r.connected) p.push(`${label}: connected, expected a failure`);
    if (!r.iceErrors.some(e => e.errorCode === +arg)) p.push(`${label}: no icecandidateerror ${arg} (got ${JSON.stringify(r.iceErrors)})`);
  } else if (kind === 'fail') {
    if (r.connected) p.push(`${label}: connected, expected ICE to fail`);
    if (!srflx(side.candidates).length) p.push(`${label}: no srflx candidate (STUN server not reached?)`);
    if ((side.pairs || []).some(x => x.state === 'succeeded')) p.push(`${label}: a candidate pair succeeded`);
  } else p.push('unknown --expect ' + args.expect);
  return p;
}
const describePair = sp => sp ? `${sp.local?.type}/${sp.local?.relayProtocol || sp.local?.protocol} ${sp.local?.address}:${sp.local?.port} -> ${sp.remote?.type} ${sp.remote?.address}:${sp.remote?.port}` : 'none';
const describeXfer = t => t ? `${(t.bytes / 1048576).toFixed(1)} MiB sha256 ${t.match ? 'ok' : 'MISMATCH'} ${t.mbitPerSec} Mbit/s` : '-';

const t0 = Date.now();
let code = 3, contexts = [];
try {
  let summary, problems, out;
  if (mode === 'one-page') {
    const B = await launch('one');
    contexts.push(B.ctx);
    await B.page.goto('http://127.0.0.1/one-page.html');
    await B.page.evaluate(c => window.startTest(c), { iceServersA: iceA, iceServersB: iceB, policy: args.policy, timeout, bytes });
    const r = await waitResult(B.page);
    out = r;
    problems = [...checkSide('A', r, { pair: r.selectedPair?.a, transfers: r.transfers, candidates: r.candidates.a, pairs: r.pairs?.a }),
                ...checkSide('B', r, { pair: r.selectedPair?.b, transfers: r.transfers, candidates: r.candidates.b, pairs: r.pairs?.b })];
    summary = args.expect.startsWith('relay')
      ? `A ${describePair(r.selectedPair?.a)}; B ${describePair(r.selectedPair?.b)}; A->B ${describeXfer(r.transfers?.ab)}; B->A ${describeXfer(r.transfers?.ba)}`
      : `connected=${r.connected} iceErrors=${JSON.stringify(r.iceErrors.map(e => `${e.pc}:${e.errorCode} ${e.errorText}`))}`;
  } else {
    const [A, B] = await Promise.all([launch('a', args.nsA), launch('b', args.nsB)]);
    contexts.push(A.ctx, B.ctx);
    await Promise.all([A.page.goto('http://127.0.0.1/peer.html'), B.page.goto('http://127.0.0.1/peer.html')]);
    // signaling: sendSignal in one page -> onSignal in the other
    await A.page.exposeBinding('sendSignal', (_s, m) => { B.page.evaluate(x => window.onSignal(x), m).catch(() => {}); });
    await B.page.exposeBinding('sendSignal', (_s, m) => { A.page.evaluate(x => window.onSignal(x), m).catch(() => {}); });
    const common = { policy: args.policy, timeout, bytes };
    await B.page.evaluate(c => window.startPeer(c), { ...common, role: 'answer', iceServers: iceB });
    await A.page.evaluate(c => window.startPeer(c), { ...common, role: 'offer', iceServers: iceA });
    const [ra, rb] = await Promise.all([waitResult(A.page), waitResult(B.page)]);
    await Promise.all([A.page, B.page].map(p => p.evaluate(() => window.__closePeer()).catch(() => {})));
    await new Promise(r => setTimeout(r, 300));   // let the Refresh(lifetime 0) requests go out
    out = { a: ra, b: rb };
    problems = [...checkSide('A', ra, { pair: ra.selectedPair, transfers: ra.transfers, candidates: ra.candidates, pairs: ra.pairs }),
                ...checkSide('B', rb, { pair: rb.selectedPair, transfers: rb.transfers, candidates: rb.candidates, pairs: rb.pairs })];
    if (args.expect.startsWith('relay'))
      summary = `A(${args.nsA || 'root'}) ${describePair(ra.selectedPair)}; B(${args.nsB || 'root'}) ${describePair(rb.selectedPair)}; ` +
                `A->B ${describeXfer(ra.transfers?.ab)}; B->A ${describeXfer(rb.transfers?.ba)}`;
    else if (args.expect === 'fail')
      summary = `connected A=${ra.connected} B=${rb.connected}; srflx A=[${srflx(ra.candidates).map(c => c.split(' ').slice(4, 6).join(':'))}] ` +
                `B=[${srflx(rb.candidates).map(c => c.split(' ').slice(4, 6).join(':'))}]; pairs checked A=${(ra.pairs || []).length} B=${(rb.pairs || []).length}, none succeeded`;
    else summary = `connected A=${ra.connected} B=${rb.connected} iceErrors A=${JSON.stringify(ra.iceErrors)} B=${JSON.stringify(rb.iceErrors)}`;
  }
  out.driver = { mode, chromium: exe, version: contexts[0].browser()?.version?.() ?? null, totalMs: Date.now() - t0, args };
  if (args.out) fs.writeFileSync(args.out, JSON.stringify(out, null, 2));
  if (problems.length === 0) { console.log(`PASS ${name}: ${summary} (${Date.now() - t0} ms)`); code = 0; }
  else { console.log(`FAIL ${name}: ${problems.join('; ')} [${summary}]`); code = 1; }
} catch (e) {
  console.log(`FAIL ${name}: driver error: ${e.message.split('\n')[0]}`);
  code = 3;
} finally {
  for (const c of contexts) await c.close().catch(() => {});
  fs.rmSync(tmp, { recursive: true, force: true });
}
process.exit(code);
