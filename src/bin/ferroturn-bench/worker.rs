//! The data path: a worker thread owns a subset of the clients, paces its share of the offered
//! rate in small bursts per tick, and receives with epoll + recvmmsg.
//!
//! Pacing: the schedule is cumulative (packet k of the current epoch is due at origin + k/rate),
//! so timer lateness never accumulates into drift; each wake-up sends everything due (capped at
//! ~1 ms worth per round; more than 20 ms behind is skipped and counted). Wake-ups are at most
//! one per `--tick-us` (default 100 µs), i.e. at 100 k pps per thread about 10 packets per tick,
//! timed with epoll_pwait2's nanosecond timeout (timerfd on kernels without it) and a 1 µs timer
//! slack. Idle: blocks in epoll. `--spin`: never sleeps.
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferroturn::codec::channel_data;
use ferroturn::codec::stun::{attr, method, Class, Message, Writer};

use crate::conn::Conn;
use crate::control::Client;
use crate::hist::Histogram;
use crate::mmsg::Batch;
use crate::proto::{read_payload, write_payload, Req, PAYLOAD_HEADER};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// ChannelData (ChannelBind per client)
    Channel,
    /// Send / Data indications
    Send,
}

/// One sending phase: warm-up (epoch 0), the measurement, or a saturation step.
#[derive(Clone, Copy, Debug, Default)]
pub struct Phase {
    pub epoch: u32,
    /// Total offered rate over all workers, packets/s.
    pub rate: f64,
    /// Start and end, ns since `WorkerCfg::t0`: packet k of a worker is due at
    /// start + k / (its share of the rate), for every k with that time before `end`.
    pub start_ns: u64,
    pub end_ns: u64,
}

/// What the main thread steers. Workers poll `version` (one atomic load per round) and read
/// the phase under the lock only when it changed.
#[derive(Default)]
pub struct Steer {
    pub version: AtomicU64,
    pub phase: Mutex<Phase>,
    pub stop: AtomicBool,
}

impl Steer {
    /// Start a phase `lead` from now, lasting `secs`. Returns its (start, end).
    pub fn begin(
        &self,
        t0: Instant,
        epoch: u32,
        rate: f64,
        secs: f64,
        lead: Duration,
    ) -> (Instant, Instant) {
        let start = Instant::now() + lead;
        let end = start + Duration::from_secs_f64(secs.max(0.0));
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = Phase {
            epoch,
            rate,
            start_ns: (start - t0).as_nanos() as u64,
            end_ns: (end - t0).as_nanos() as u64,
        };
        self.version.fetch_add(1, Ordering::Release);
        (start, end)
    }

    /// End the current phase now (Ctrl-C).
    pub fn halt(&self) {
        self.phase.lock().unwrap_or_else(|e| e.into_inner()).rate = 0.0;
        self.version.fetch_add(1, Ordering::Release);
    }
}

#[derive(Clone, Default)]
pub struct EpochStats {
    pub sent: u64,
    pub delivered: u64,
    /// Socket buffer full (EAGAIN) or send error: counted, not sent.
    pub send_drops: u64,
    /// Pacing fell > 20 ms behind: packets of the schedule not sent at all.
    pub skipped: u64,
    pub hist: Histogram,
}

impl EpochStats {
    fn merge(&mut self, o: &EpochStats) {
        self.sent += o.sent;
        self.delivered += o.delivered;
        self.send_drops += o.send_drops;
        self.skipped += o.skipped;
        self.hist.merge(&o.hist);
    }
}

#[derive(Default)]
pub struct WorkerStats {
    pub epochs: Vec<EpochStats>,
    /// Latency since the main thread last took it (progress line).
    pub interval: Histogram,
    /// Frames that were neither ours nor control answers.
    pub foreign: u64,
    /// Payloads from the wrong sender, or a sequence number already received (or more than
    /// 64 behind the newest): a server that duplicates or misroutes is not credited for them.
    pub misdelivered: u64,
    pub refresh_ok: u64,
    pub refresh_failed: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
}

impl WorkerStats {
    pub fn epoch_mut(&mut self, e: u32) -> &mut EpochStats {
        let e = e as usize;
        if self.epochs.len() <= e {
            self.epochs.resize_with(e + 1, EpochStats::default);
        }
        &mut self.epochs[e]
    }

    fn merge_from(&mut self, o: &mut WorkerStats) {
        for (e, s) in o.epochs.iter().enumerate() {
            if s.sent != 0 || s.delivered != 0 || s.send_drops != 0 || s.skipped != 0 {
                self.epoch_mut(e as u32).merge(s);
            }
        }
        for s in o.epochs.iter_mut() {
            s.sent = 0;
            s.delivered = 0;
            s.send_drops = 0;
            s.skipped = 0;
            s.hist.clear();
        }
        self.interval.merge(&o.interval);
        o.interval.clear();
        self.foreign += std::mem::take(&mut o.foreign);
        self.misdelivered += std::mem::take(&mut o.misdelivered);
        self.refresh_ok += std::mem::take(&mut o.refresh_ok);
        for (k, v) in std::mem::take(&mut o.refresh_failed) {
            *self.refresh_failed.entry(k).or_default() += v;
        }
        for (k, v) in std::mem::take(&mut o.errors) {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

#[derive(Clone)]
pub struct WorkerCfg {
    pub mode: Mode,
    pub size: usize,
    pub tick: Duration,
    pub spin: bool,
    /// Packets a client sends back to back per turn (`--burst`).
    pub burst: usize,
    /// This worker's share of the total rate (its clients / all clients).
    pub share: f64,
    pub lifetime: u32,
    pub refresh_every: Duration,
    pub timeout: Duration,
    /// Origin of all payload timestamps.
    pub t0: Instant,
}

struct DataClient {
    c: Client,
    /// The whole frame to send (ChannelData header or Send indication + payload).
    tmpl: Vec<u8>,
    /// Send indications to an IPv6 peer: where the address bytes XORed with the transaction
    /// ID's first four bytes sit in `tmpl`.
    xor_tid: Option<usize>,
    payload_off: usize,
    seq: u32,
    /// The stream broke: no more sending or polling.
    dead: bool,
    /// Whose payloads come back to this client: its own (echo) or its partner's (c2c).
    expect_from: u32,
    rx: SeqWindow,
}

/// Sequence numbers received from one sender: the newest and a 64-wide window behind it.
#[derive(Default)]
struct SeqWindow {
    newest: u32,
    seen: u64,
}

impl SeqWindow {
    /// Whether `seq` (from 1, +1 per packet) is new: not received before and at most 63
    /// behind the newest.
    fn fresh(&mut self, seq: u32) -> bool {
        let ahead = seq.wrapping_sub(self.newest) as i32;
        if ahead > 0 {
            self.seen = if ahead >= 64 { 0 } else { self.seen << ahead };
            self.seen |= 1;
            self.newest = seq;
            return true;
        }
        let behind = ahead.unsigned_abs();
        if behind >= 64 || self.seen & (1 << behind) != 0 {
            return false;
        }
        self.seen |= 1 << behind;
        true
    }
}

impl DataClient {
    fn new(c: Client, cfg: &WorkerCfg) -> DataClient {
        let expect_from = c.partner_idx.unwrap_or(c.idx) as u32;
        let peer = c.peer.expect("peer set before the data phase");
        let payload = vec![0xa5u8; cfg.size];
        let mut xor_tid = None;
        let (tmpl, payload_off) = match cfg.mode {
            Mode::Channel => {
                let mut t = Vec::with_capacity(4 + cfg.size);
                t.extend_from_slice(&c.channel.to_be_bytes());
                t.extend_from_slice(&(cfg.size as u16).to_be_bytes());
                t.extend_from_slice(&payload);
                (t, 4)
            }
            Mode::Send => {
                let (t, off, at) = send_template(c.idx, peer, &payload);
                xor_tid = at;
                (t, off)
            }
        };
        DataClient {
            c,
            tmpl,
            xor_tid,
            payload_off,
            seq: 0,
            dead: false,
            expect_from,
            rx: SeqWindow::default(),
        }
    }

    /// Fill in this packet's header (sequence, epoch, time) in the template.
    #[inline]
    fn stamp(&mut self, epoch: u32, ts_ns: u64) {
        self.seq = self.seq.wrapping_add(1);
        let off = self.payload_off;
        write_payload(
            &mut self.tmpl[off..off + PAYLOAD_HEADER],
            self.c.idx as u32,
            epoch,
            self.seq,
            ts_ns,
        );
        if self.payload_off > 4 {
            // Send indication: a different transaction id per indication.
            set_send_tid(&mut self.tmpl, self.xor_tid, self.seq);
        }
    }
}

/// A Send indication to `peer` carrying `payload`: (message, payload offset, where an IPv6
/// peer address's bytes XORed with the transaction ID's first four bytes sit).
fn send_template(idx: usize, peer: SocketAddr, payload: &[u8]) -> (Vec<u8>, usize, Option<usize>) {
    let mut t = Vec::with_capacity(64 + payload.len());
    let mut tid = [0u8; 12];
    tid[4..8].copy_from_slice(&(idx as u32).to_be_bytes());
    let mut w = Writer::new(&mut t, method::SEND, Class::Indication, &tid);
    // RFC 8489 §14.2: an IPv6 address is XORed with the cookie and the whole transaction ID;
    // its bytes 4..8 with the ID's first four, which `set_send_tid` changes per indication
    // (attribute header 4 B, then family and port 4 B).
    let xor_tid = peer.is_ipv6().then(|| w.len() + 12);
    w.xor_addr(attr::XOR_PEER_ADDRESS, peer);
    let off = w.len() + 4;
    w.attr(attr::DATA, payload);
    (t, off, xor_tid)
}

/// A new transaction ID for the next Send indication (its first four bytes = `seq`), with an
/// IPv6 XOR-PEER-ADDRESS re-XORed to match.
fn set_send_tid(tmpl: &mut [u8], xor_tid: Option<usize>, seq: u32) {
    let old: [u8; 4] = tmpl[8..12].try_into().unwrap_or_default();
    let new = seq.to_be_bytes();
    tmpl[8..12].copy_from_slice(&new);
    if let Some(at) = xor_tid {
        for i in 0..4 {
            tmpl[at + i] ^= old[i] ^ new[i];
        }
    }
}

/// epoll with a nanosecond timeout: epoll_pwait2, or epoll_wait + timerfd where the kernel
/// lacks it (< 5.11).
struct Poller {
    ep: RawFd,
    timerfd: Option<RawFd>,
    events: Vec<libc::epoll_event>,
}

const TIMER_TOKEN: u64 = u64::MAX;

impl Poller {
    fn new(cap: usize) -> io::Result<Poller> {
        // SAFETY: plain syscalls.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Poller {
            ep,
            timerfd: None,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; cap.clamp(16, 1024)],
        })
    }

    fn del(&self, fd: RawFd) {
        // SAFETY: valid epoll fd; the event pointer may be null for DEL.
        unsafe { libc::epoll_ctl(self.ep, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
    }

    fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: valid epoll fd and event pointer.
        if unsafe { libc::epoll_ctl(self.ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wait until readiness or `timeout` (None = forever). Returns the number of events.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        let n = self.events.len() as libc::c_int;
        if self.timerfd.is_none() {
            let ts = timeout.map(|d| libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            });
            let tsp = ts
                .as_ref()
                .map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: epoll_pwait2(epfd, events, maxevents, timeout, sigmask=NULL, sigsetsize).
            let r = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    self.ep,
                    self.events.as_mut_ptr(),
                    n,
                    tsp,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOSYS) {
                return if e.kind() == io::ErrorKind::Interrupted {
                    Ok(0)
                } else {
                    Err(e)
                };
            }
            // SAFETY: plain syscall.
            let tfd = unsafe {
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
                )
            };
            if tfd < 0 {
                return Err(io::Error::last_os_error());
            }
            self.add(tfd, TIMER_TOKEN)?;
            self.timerfd = Some(tfd);
        }
        let tfd = self.timerfd.expect("timerfd");
        let ms = match timeout {
            None => -1,
            Some(d) if d.is_zero() => 0,
            Some(d) => {
                let spec = libc::itimerspec {
                    it_interval: libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 0,
                    },
                    it_value: libc::timespec {
                        tv_sec: d.as_secs() as libc::time_t,
                        tv_nsec: d.subsec_nanos().max(1) as libc::c_long,
                    },
                };
                // SAFETY: valid timerfd and spec.
                unsafe { libc::timerfd_settime(tfd, 0, &spec, std::ptr::null_mut()) };
                -1
            }
        };
        // SAFETY: valid epoll fd and buffer.
        let r = unsafe { libc::epoll_wait(self.ep, self.events.as_mut_ptr(), n, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(r as usize)
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // SAFETY: closing fds we own.
        unsafe {
            libc::close(self.ep);
            if let Some(t) = self.timerfd {
                libc::close(t);
            }
        }
    }
}

pub struct Worker {
    cfg: WorkerCfg,
    clients: Vec<DataClient>,
    local: WorkerStats,
    shared: Arc<Mutex<WorkerStats>>,
    steer: Arc<Steer>,
    tcp: bool,
}

/// Start a worker thread over `clients`. Its stats are merged into `shared` every 100 ms; the
/// clients come back from `join` for teardown.
pub fn spawn(
    id: usize,
    clients: Vec<Client>,
    cfg: WorkerCfg,
    steer: Arc<Steer>,
    shared: Arc<Mutex<WorkerStats>>,
) -> io::Result<std::thread::JoinHandle<Vec<Client>>> {
    std::thread::Builder::new()
        .name(format!("bench-w{id}"))
        .spawn(move || {
            let tcp = clients.iter().any(|c| c.conn.is_stream());
            let clients = clients
                .into_iter()
                .map(|c| DataClient::new(c, &cfg))
                .collect();
            let mut w = Worker {
                cfg,
                clients,
                local: WorkerStats::default(),
                shared,
                steer,
                tcp,
            };
            if let Err(e) = w.run() {
                eprintln!("ferroturn-bench: worker {id}: {e}");
            }
            w.flush_stats();
            w.clients.into_iter().map(|d| d.c).collect()
        })
}

impl Worker {
    fn flush_stats(&mut self) {
        let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        s.merge_from(&mut self.local);
    }

    fn run(&mut self) -> io::Result<()> {
        // 1 µs timer slack (default 50 µs) for accurate pacing wake-ups.
        // SAFETY: prctl on the calling thread.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
        let mut poller = Poller::new(self.clients.len())?;
        for (i, d) in self.clients.iter().enumerate() {
            poller.add(d.c.conn.fd(), i as u64)?;
        }
        let slot = (self.cfg.size + 128).max(2048);
        let mut rx = Batch::new(32, slot, false);
        let mut tx = Batch::new(32, slot, false);
        let mut tcp_scratch: Vec<Vec<u8>> = Vec::new();
        let t0 = self.cfg.t0;

        let mut cur_version = 0u64;
        let mut phase = Phase::default();
        let mut origin = Instant::now();
        let mut sched: u64 = 0;
        let mut total: u64 = 0;
        let mut rate_w = 0.0f64;
        let mut rr = 0usize;
        let mut next_hk = Instant::now();
        let n_clients = self.clients.len();

        loop {
            if self.steer.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let now = Instant::now();
            let v = self.steer.version.load(Ordering::Acquire);
            if v != cur_version {
                cur_version = v;
                phase = *self.steer.phase.lock().unwrap_or_else(|e| e.into_inner());
                origin = t0 + Duration::from_nanos(phase.start_ns);
                rate_w = phase.rate * self.cfg.share;
                sched = 0;
                // packets k = 0, 1, ... due at origin + k / rate_w, before the end
                let secs = phase.end_ns.saturating_sub(phase.start_ns) as f64 / 1e9;
                total = (secs * rate_w).ceil() as u64;
            }
            // without a phase running, look for a new one every 2 ms (main starts phases
            // 10 ms ahead)
            let mut wake = now + Duration::from_millis(2);
            if sched < total && n_clients > 0 {
                if now >= origin {
                    let target = (((now - origin).as_secs_f64() * rate_w) as u64 + 1).min(total);
                    // --burst: a run of packets is due when its first one is
                    let b = self.cfg.burst.max(1) as u64;
                    let target = target.div_ceil(b).saturating_mul(b).min(total);
                    if target > sched {
                        let max_burst = ((rate_w * 0.001) as u64).max(32);
                        let mut n = target - sched;
                        let behind_cap = max_burst + (rate_w * 0.02) as u64;
                        if n > behind_cap {
                            let skip = n - max_burst;
                            self.local.epoch_mut(phase.epoch).skipped += skip;
                            sched += skip;
                            n = max_burst;
                        } else if n > max_burst {
                            n = max_burst;
                        }
                        self.send_burst(n as usize, &mut rr, phase.epoch, &mut tx, t0);
                        sched += n;
                    }
                }
                if sched < total {
                    let due = origin + Duration::from_secs_f64(sched as f64 / rate_w);
                    wake = due.max(now + self.cfg.tick);
                }
            }
            if now >= next_hk {
                self.housekeeping(now);
                next_hk = now + Duration::from_millis(100);
            }
            if self.tcp {
                for d in self.clients.iter_mut().filter(|d| !d.dead) {
                    if d.c.conn.has_pending() {
                        if let Err(e) = d.c.conn.flush() {
                            *self.local.errors.entry(format!("tcp: {e}")).or_default() += 1;
                        }
                    }
                }
            }
            let wake = wake.min(next_hk);
            let timeout = if self.cfg.spin {
                Duration::ZERO
            } else {
                wake.saturating_duration_since(Instant::now())
            };
            let nev = poller.wait(Some(timeout))?;
            for k in 0..nev {
                let tok = poller.events[k].u64;
                if tok == TIMER_TOKEN {
                    let mut b = [0u8; 8];
                    // SAFETY: reading the 8-byte expiration count of our timerfd.
                    unsafe {
                        libc::read(
                            poller.timerfd.expect("timer"),
                            b.as_mut_ptr() as *mut libc::c_void,
                            8,
                        )
                    };
                    continue;
                }
                if !self.receive(tok as usize, &mut rx, &mut tcp_scratch, t0) {
                    let d = &mut self.clients[tok as usize];
                    d.dead = true;
                    poller.del(d.c.conn.fd());
                }
            }
        }
    }

    /// Send `n` packets, round robin over the clients in runs of `--burst` packets per client
    /// (default 1); a client due several packets in one round sends them with one sendmmsg.
    fn send_burst(&mut self, n: usize, rr: &mut usize, epoch: u32, tx: &mut Batch, t0: Instant) {
        let m = self.clients.len();
        let b = self.cfg.burst.max(1);
        if b == 1 {
            let per = n / m;
            let extra = n % m;
            let touched = if per == 0 { extra } else { m };
            for j in 0..touched {
                let cnt = per + usize::from(j < extra);
                self.send_to_client((*rr + j) % m, cnt, epoch, tx, t0);
            }
            *rr = (*rr + n) % m;
        } else {
            // A video frame: b packets back to back from one client, the next client's frame
            // after it.
            let groups = n.div_ceil(b);
            for g in 0..groups {
                let cnt = b.min(n - g * b);
                self.send_to_client((*rr + g) % m, cnt, epoch, tx, t0);
            }
            *rr = (*rr + groups) % m;
        }
    }

    fn send_to_client(
        &mut self,
        ci: usize,
        mut cnt: usize,
        epoch: u32,
        tx: &mut Batch,
        t0: Instant,
    ) {
        let mut lens = [0usize; 32];
        let d = &mut self.clients[ci];
        if d.dead {
            self.local.epoch_mut(epoch).send_drops += cnt as u64;
            return;
        }
        let udp_fd = match &d.c.conn {
            Conn::Udp(s) => Some(std::os::fd::AsRawFd::as_raw_fd(s)),
            Conn::Tcp(_) => None,
        };
        while cnt > 0 {
            let now_ns = t0.elapsed().as_nanos() as u64;
            let (sent, tried) = match udp_fd {
                Some(fd) if cnt > 1 => {
                    let k = cnt.min(tx.capacity());
                    for (i, l) in lens.iter_mut().enumerate().take(k) {
                        d.stamp(epoch, now_ns);
                        let len = d.tmpl.len();
                        tx.slot_mut(i)[..len].copy_from_slice(&d.tmpl);
                        *l = len;
                    }
                    let sent = tx.send(fd, &lens[..k]).unwrap_or(0);
                    (sent as u64, k as u64)
                }
                _ => {
                    d.stamp(epoch, now_ns);
                    match d.c.conn.send(&d.tmpl) {
                        Ok(true) => (1, 1),
                        Ok(false) => (0, 1),
                        Err(e) => {
                            *self.local.errors.entry(format!("send: {e}")).or_default() += 1;
                            (0, 1)
                        }
                    }
                }
            };
            let es = self.local.epoch_mut(epoch);
            es.sent += sent;
            es.send_drops += tried - sent;
            cnt -= tried as usize;
        }
    }

    /// Receive what is there on client `ci`. False when its stream broke for good.
    fn receive(
        &mut self,
        ci: usize,
        rx: &mut Batch,
        tcp_scratch: &mut Vec<Vec<u8>>,
        t0: Instant,
    ) -> bool {
        let is_udp = matches!(self.clients[ci].c.conn, Conn::Udp(_));
        if is_udp {
            let fd = self.clients[ci].c.conn.fd();
            for _ in 0..8 {
                let n = match rx.recv(fd, false) {
                    Ok(n) => n,
                    Err(e) => {
                        // e.g. ECONNREFUSED after an ICMP error: transient for UDP
                        *self.local.errors.entry(format!("recv: {e}")).or_default() += 1;
                        return true;
                    }
                };
                if n == 0 {
                    return true;
                }
                let now_ns = t0.elapsed().as_nanos() as u64;
                for i in 0..n {
                    self.on_frame(ci, rx.get(i), now_ns);
                }
                if n < rx.capacity() {
                    return true;
                }
            }
            true
        } else {
            let mut frames = std::mem::take(tcp_scratch);
            let mut used = 0;
            let mut scratch = [0u8; 0];
            let r = self.clients[ci].c.conn.recv_frames(&mut scratch, |f| {
                if frames.len() <= used {
                    frames.push(Vec::with_capacity(f.len()));
                }
                frames[used].clear();
                frames[used].extend_from_slice(f);
                used += 1;
            });
            let now_ns = t0.elapsed().as_nanos() as u64;
            for f in frames.iter().take(used) {
                self.on_frame(ci, f, now_ns);
            }
            *tcp_scratch = frames;
            match r {
                Ok(_) => true,
                Err(e) => {
                    eprintln!(
                        "ferroturn-bench: client {}: {e}; it stops",
                        self.clients[ci].c.idx
                    );
                    *self.local.errors.entry(format!("tcp: {e}")).or_default() += 1;
                    false
                }
            }
        }
    }

    #[inline]
    fn on_payload(&mut self, ci: usize, p: &[u8], now_ns: u64) {
        match read_payload(p) {
            Some(h) => {
                let dc = &mut self.clients[ci];
                if h.client != dc.expect_from || !dc.rx.fresh(h.seq) {
                    self.local.misdelivered += 1;
                    return;
                }
                let us = now_ns.saturating_sub(h.ts_ns).div_ceil(1000);
                let es = self.local.epoch_mut(h.epoch);
                es.delivered += 1;
                es.hist.record(us);
                self.local.interval.record(us);
            }
            None => self.local.foreign += 1,
        }
    }

    fn on_frame(&mut self, ci: usize, f: &[u8], now_ns: u64) {
        if f.is_empty() {
            return;
        }
        match channel_data::classify(f[0]) {
            channel_data::Kind::ChannelData => {
                match channel_data::parse(f, channel_data::MAX_CHANNEL_LEGACY) {
                    Some((_, p)) => self.on_payload(ci, p, now_ns),
                    None => self.local.foreign += 1,
                }
            }
            channel_data::Kind::Stun => {
                let Ok(m) = Message::parse(f) else {
                    self.local.foreign += 1;
                    return;
                };
                if m.method == method::DATA && m.class == Class::Indication {
                    match m.get(attr::DATA) {
                        Some(p) => self.on_payload(ci, p, now_ns),
                        None => self.local.foreign += 1,
                    }
                    return;
                }
                let timeout = self.cfg.timeout;
                let d = &mut self.clients[ci];
                match d.c.on_stun(&m, Instant::now(), timeout) {
                    Some((_, _, Ok(_))) => {
                        self.local.refresh_ok += 1;
                        d.c.start_next(Instant::now(), timeout);
                    }
                    Some((req, _, Err(f))) => {
                        eprintln!(
                            "ferroturn-bench: client {}: {} failed: {f}",
                            d.c.idx,
                            req.name()
                        );
                        *self.local.refresh_failed.entry(f.key()).or_default() += 1;
                        d.c.queue.clear();
                    }
                    None => {
                        if d.c.txn.is_none() {
                            self.local.foreign += 1;
                        }
                    }
                }
            }
            channel_data::Kind::Other => self.local.foreign += 1,
        }
    }

    /// Every 100 ms: publish stats, run refresh transactions (allocation, permission, channel)
    /// and their retransmission timers.
    fn housekeeping(&mut self, now: Instant) {
        self.flush_stats();
        let cfg = &self.cfg;
        for d in self.clients.iter_mut().filter(|d| !d.dead) {
            let c = &mut d.c;
            if let Some((req, f)) = c.on_timer(now) {
                eprintln!(
                    "ferroturn-bench: client {}: {} failed: {f}",
                    c.idx,
                    req.name()
                );
                *self.local.refresh_failed.entry(f.key()).or_default() += 1;
                c.queue.clear();
            }
            if c.txn.is_none() && c.queue.is_empty() && now - c.last_refresh >= cfg.refresh_every {
                c.last_refresh = now;
                let peer = c.peer.expect("peer");
                c.queue.push_back(Req::Refresh {
                    lifetime: cfg.lifetime,
                });
                c.queue.push_back(Req::CreatePermission { peer });
                if cfg.mode == Mode::Channel {
                    c.queue.push_back(Req::ChannelBind {
                        channel: c.channel,
                        peer,
                    });
                }
            }
            if c.txn.is_none() {
                c.start_next(now, cfg.timeout);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_number_counts_once() {
        let mut w = SeqWindow::default();
        let got: Vec<bool> = [1, 2, 2, 4, 3, 3, 1, 70, 6, 7, 7, 71, 69]
            .iter()
            .map(|&s| w.fresh(s))
            .collect();
        // 6 is 64 behind 70: too late to tell from a duplicate, so not counted.
        let want = [
            true, true, false, true, true, false, false, true, false, true, false, true, true,
        ];
        assert_eq!(got, want);
        // Across the wrap of u32.
        let mut w = SeqWindow::default();
        assert!(w.fresh(u32::MAX - 1) && w.fresh(u32::MAX) && w.fresh(0) && w.fresh(1));
        assert!(!w.fresh(u32::MAX) && w.fresh(u32::MAX - 2));
    }

    #[test]
    fn send_indications_keep_their_peer_address_as_the_id_changes() {
        for peer in ["192.0.2.7:4000", "[2001:db8::7]:4000"] {
            let peer: SocketAddr = peer.parse().unwrap();
            let (mut t, off, at) = send_template(3, peer, &[0xa5; 40]);
            for seq in [1u32, 0xdead_beef, 2] {
                set_send_tid(&mut t, at, seq);
                let m = Message::parse(&t).unwrap();
                assert_eq!(m.transaction_id()[..4], seq.to_be_bytes());
                let v = m.get(attr::XOR_PEER_ADDRESS).unwrap();
                let got = ferroturn::codec::stun::decode_xor_addr(v, &m.transaction_id());
                assert_eq!(got, Some(peer), "seq {seq:#x}");
                assert_eq!(&t[off..], &[0xa5; 40][..]);
            }
        }
    }
}
