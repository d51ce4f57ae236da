// Drives ferroturn's connectivity test page (/test on the admin listener) in headless Chromium
// (Debian's package, playwright-core; never a browser download) and checks its results: relay
// candidates over udp, tcp and tls, and a relay-only data-channel round trip.
// Usage: node test-page.mjs --url http://127.0.0.1:35480/test --token T [--home DIR]
//        [--resolver-rule "MAP localhost 127.0.0.1"] [--out FILE]
// Prints one PASS/FAIL line per check.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const args = { resolverRule: [] };
for (let i = 2; i < process.argv.length; i++) {
  const k = process.argv[i].replace(/^--/, '').replace(/-(.)/g, (_, c) => c.toUpperCase());
  if (k === 'resolverRule') args.resolverRule.push(process.argv[++i]); else args[k] = process.argv[++i];
}
if (!args.url || !args.token) { console.error('--url and --token are required'); process.exit(3); }
const exe = process.env.CHROMIUM ||
  (fs.existsSync('/usr/lib/chromium/chromium') ? '/usr/lib/chromium/chromium' : '/usr/bin/chromium');
const watchdog = setTimeout(() => { console.log('FAIL test-page: driver watchdog fired'); process.exit(3); }, 90000);
watchdog.unref();

const flags = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-dev-shm-usage', '--disable-features=WebRtcHideLocalIpsWithMdns',
  '--host-resolver-rules=' + [...args.resolverRule, 'MAP * ~NOTFOUND', 'EXCLUDE 127.0.0.1'].join(', '),
];
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ferroturn-test-page-'));
const env = { ...process.env, ...(args.home ? { HOME: args.home } : {}) };
let ctx;
let passed = 0, failed = 0;
const check = (name, ok, detail) => {
  console.log(`${ok ? 'PASS' : 'FAIL'} test-page ${name}${detail ? ': ' + detail : ''}`);
  ok ? passed++ : failed++;
};
try {
  ctx = await chromium.launchPersistentContext(path.join(tmp, 'profile'),
    { executablePath: exe, headless: true, args: flags, env, timeout: 30000 });
  const page = ctx.pages()[0] || await ctx.newPage();
  page.on('pageerror', e => console.error('page error:', e.message));
  // The token travels in the fragment (never sent to the server); run=1 starts the test.
  await page.goto(`${args.url}#token=${encodeURIComponent(args.token)}&run=1`, { timeout: 15000 });
  await page.waitForFunction(() => window.__result !== undefined, null, { timeout: 75000, polling: 200 });
  const r = await page.evaluate(() => window.__result);
  if (args.out) fs.writeFileSync(args.out, JSON.stringify(r, null, 2));
  check('credentials fetched', !r.error || !r.error.startsWith('credentials'), r.error);
  for (const kind of ['udp', 'tcp', 'tls']) {
    const g = (r.gathered || []).filter(x => x.kind === kind);
    const relay = g.flatMap(x => x.relay);
    check(`${kind} relay candidate gathered`, relay.length > 0,
      g.length ? `${g.map(x => x.url).join(' ')} -> ${relay.map(c => c.address + ':' + c.port).join(', ') || 'none'}` +
                 ` ${g.flatMap(x => x.errors).map(e => e.code + ' ' + e.text).join('; ')} (${g.map(x => x.ms + ' ms').join(', ')})`
               : 'no such URL');
  }
  const t = r.roundTrip || {};
  check('relay-only data-channel round trip', t.ok === true &&
        t.selectedPair?.local?.type === 'relay' && t.selectedPair?.remote?.type === 'relay',
    t.ok ? `connect ${t.connectMs} ms, rtt ${t.rttMs} ms, local ${JSON.stringify(t.selectedPair?.local)}` : t.error);
  // What the operator sees is on the page too.
  const text = await page.textContent('body');
  check('page shows the selected pair and timings', /selected pair, local/.test(text) && /connect time/.test(text));
} catch (e) {
  check('driver', false, String(e.message || e));
} finally {
  if (ctx) await ctx.close().catch(() => {});
  fs.rmSync(tmp, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
