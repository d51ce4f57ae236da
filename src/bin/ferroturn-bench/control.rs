//! Clients and the control-path driver: run queued requests (Allocate, CreatePermission,
//! ChannelBind, Refresh) on many clients with at most K transactions outstanding, over
//! non-blocking sockets and one edge-triggered epoll set. Used for setup, `--allocate-only`,
//! refreshes while holding, and teardown.
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferroturn::codec::stun::Message;

use crate::conn::Conn;
use crate::epoll::Epoll;
use crate::hist::Histogram;
use crate::proto::{Auth, Failure, Outcome, Req, Success, Txn};
use crate::INTERRUPTED;

pub struct Client {
    pub idx: usize,
    pub conn: Conn,
    pub auth: Auth,
    pub relayed: Option<SocketAddr>,
    pub mapped: Option<SocketAddr>,
    /// Where data goes: the echo peer, or the partner's relayed address (c2c).
    pub peer: Option<SocketAddr>,
    /// c2c: the partner's `idx` (whose payloads arrive here).
    pub partner_idx: Option<usize>,
    pub channel: u16,
    pub allocated: bool,
    pub lifetime: u32,
    pub txn: Option<Txn>,
    pub queue: VecDeque<Req>,
    pub failed: Option<Failure>,
    pub last_io_error: Option<String>,
    pub last_refresh: Instant,
    /// How often the socket was replaced after a 437 to Allocate (at most 3 times).
    pub reopens: u8,
    /// The `ControlSet` its current socket is registered in (0: none).
    set: u64,
}

impl Client {
    pub fn new(idx: usize, conn: Conn, auth: Auth) -> Client {
        Client {
            idx,
            conn,
            auth,
            relayed: None,
            mapped: None,
            peer: None,
            partner_idx: None,
            channel: 0x4000 + (idx % 0x1000) as u16,
            allocated: false,
            lifetime: 0,
            txn: None,
            queue: VecDeque::new(),
            failed: None,
            last_io_error: None,
            last_refresh: Instant::now(),
            reopens: 0,
            set: 0,
        }
    }

    /// Start the next queued request, if any and none outstanding. False when idle.
    pub fn start_next(&mut self, now: Instant, timeout: Duration) -> bool {
        if self.txn.is_some() {
            return true;
        }
        let Some(req) = self.queue.pop_front() else {
            return false;
        };
        let reliable = self.conn.is_stream();
        let t = Txn::new(req, &self.auth, now, timeout, reliable);
        if let Err(e) = self.conn.send(&t.buf) {
            self.last_io_error = Some(e.to_string());
        }
        self.txn = Some(t);
        true
    }

    /// Apply a successful answer to the client state.
    fn apply(&mut self, req: Req, s: &Success) {
        match req {
            Req::Allocate { lifetime } => {
                self.allocated = true;
                self.relayed = s.relayed;
                self.mapped = s.mapped;
                self.lifetime = s.lifetime.unwrap_or(lifetime);
            }
            Req::Refresh { lifetime: 0 } => self.allocated = false,
            Req::Refresh { lifetime } => self.lifetime = s.lifetime.unwrap_or(lifetime),
            _ => {}
        }
    }

    /// Handle one frame from the server that is a STUN message, for the outstanding
    /// transaction. Returns the finished request and its result, if this finished one.
    pub fn on_stun(
        &mut self,
        m: &Message,
        now: Instant,
        timeout: Duration,
    ) -> Option<(Req, Duration, Result<Success, Failure>)> {
        match self.step(m, now, timeout) {
            Step::Finished(req, lat, res) => Some((req, lat, res)),
            Step::Ignored | Step::Resent => None,
        }
    }

    /// `on_stun`, telling an ignored message from a re-sent (authenticated) request.
    fn step(&mut self, m: &Message, now: Instant, timeout: Duration) -> Step {
        let reliable = self.conn.is_stream();
        let Some(txn) = self.txn.as_mut() else {
            return Step::Ignored;
        };
        match txn.on_message(m, &mut self.auth, now, timeout, reliable) {
            Outcome::NotOurs => Step::Ignored,
            Outcome::Resend => {
                if let Err(e) = self.conn.send(&txn.buf) {
                    self.last_io_error = Some(e.to_string());
                }
                Step::Resent
            }
            Outcome::Done(s) => {
                let t = self.txn.take().expect("txn");
                self.apply(t.req, &s);
                Step::Finished(t.req, now - t.started, Ok(s))
            }
            Outcome::Failed(f) => {
                let t = self.txn.take().expect("txn");
                Step::Finished(t.req, now - t.started, Err(f))
            }
        }
    }

    /// Retransmission and deadline. Returns a failure when the transaction timed out.
    pub fn on_timer(&mut self, now: Instant) -> Option<(Req, Failure)> {
        let txn = self.txn.as_mut()?;
        if now >= txn.deadline {
            let t = self.txn.take().expect("txn");
            let f = match self.last_io_error.take() {
                Some(e) => Failure::Io(format!("no answer; {e}")),
                None => Failure::Timeout,
            };
            return Some((t.req, f));
        }
        if txn.on_rto(now) {
            if let Err(e) = self.conn.send(&txn.buf) {
                self.last_io_error = Some(e.to_string());
            }
        }
        None
    }
}

/// What a `drive` did.
#[derive(Default)]
pub struct DriveStats {
    pub ok: u64,
    pub failed: u64,
    /// Failures by key ("401", "timeout", "486", ...), first message of each.
    pub errors: BTreeMap<String, (u64, String)>,
    /// Latency of each successful Allocate (401 round trip included), µs.
    pub alloc_latency: Histogram,
    pub allocs_ok: u64,
    pub elapsed: Duration,
    /// Allocations retried on a fresh socket after 437 (the server still held the 5-tuple,
    /// e.g. coturn shortly after a previous run used the same client port).
    pub reopened_437: u64,
    /// Set when the drive stopped early: wrong credentials, unreachable server, Ctrl-C.
    pub aborted: Option<String>,
}

impl DriveStats {
    fn fail(&mut self, f: &Failure) {
        self.failed += 1;
        let e = self.errors.entry(f.key()).or_insert((0, f.to_string()));
        e.0 += 1;
    }
}

/// The epoll set the control driver waits on. A client's socket is registered once (token:
/// its `idx`) and stays until it is closed or the set is dropped, so the set can be made and
/// filled before a timed run and reused by every `drive` (allocations, refreshes, teardown).
/// Drop it before handing the sockets to the data workers: a registered socket costs an epoll
/// callback on every datagram it receives.
pub struct ControlSet {
    ep: Epoll,
    id: u64,
    /// `--spin`: poll without ever sleeping (otherwise: for LINGER, then sleep).
    pub spin: bool,
}

impl ControlSet {
    pub fn new() -> std::io::Result<ControlSet> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Ok(ControlSet {
            ep: Epoll::new(1024)?,
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            spin: false,
        })
    }

    /// Register the client's current socket, unless it already is.
    pub fn register(&self, c: &mut Client) -> std::io::Result<()> {
        if c.set != self.id {
            // Nothing is outstanding for this client now, so whatever UDP datagrams wait on its
            // socket (echoes that came after the data phase) are stale: drop them, or an
            // answer could queue behind more of them than one readiness reads.
            if !c.conn.is_stream() {
                let mut b = [0u8; 2048];
                for _ in 0..100_000 {
                    if !matches!(c.conn.recv_one(&mut b), Ok(Some(_))) {
                        break;
                    }
                }
            }
            self.ep.add(c.conn.fd(), c.idx as u64, c.conn.is_stream())?;
            c.set = self.id;
        }
        Ok(())
    }
}

/// What one answer did to the outstanding transaction.
enum Step {
    /// Not an answer to it (a late duplicate after a retransmission, or nothing outstanding).
    Ignored,
    /// 401/438: the request went out again, with credentials or a fresh nonce.
    Resent,
    Finished(Req, Duration, Result<Success, Failure>),
}

/// How long the driver polls for answers before it sleeps in epoll_wait. A driver that sleeps
/// whenever it is ahead of the server makes the server pay a wakeup for each answer it sends
/// (on loopback the sender runs the receiver's softirq and wakeup; in a VM an IPI): measured
/// +2 to +7 µs of ferroturn CPU per allocation (UDP / TCP), 6-9 % of its allocation rate.
/// With K transactions outstanding against a busy server the next answer is usually closer
/// than this, so the client rarely sleeps; an idle server costs it at most this per wait.
const LINGER: Duration = Duration::from_micros(20);
const LINGER_POLL: Duration = Duration::from_micros(1);

/// `Driver::pos` of a client that is not in the active set.
const IDLE: usize = usize::MAX;
/// Datagrams read per readiness at most, so a socket flooded with foreign datagrams cannot
/// starve the others (edge-triggered: whatever is left is read on the next arrival).
const MAX_READS: usize = 64;

/// Frames of one stream read, copied into buffers that are reused across reads (the stream's
/// own buffer is borrowed while it is read, and an answer may need a send on the same stream).
#[derive(Default)]
struct Frames {
    data: Vec<u8>,
    ends: Vec<usize>,
}

/// The state of one `drive`.
struct Driver<'a> {
    st: DriveStats,
    set: &'a mut ControlSet,
    /// Client `idx` (the epoll token) to its index in the driven slice, or IDLE.
    slot: Vec<usize>,
    /// Per client (slice index): its index in `active`, or IDLE.
    pos: Vec<usize>,
    /// Clients with a transaction outstanding.
    active: Vec<usize>,
    /// No active transaction needs its timer before this (a lower bound: set on every send,
    /// recomputed exactly when reached), so timers cost nothing per answer.
    next_timer: Option<Instant>,
    any_answer: bool,
    scratch: Vec<u8>,
    frames: Frames,
    timeout: Duration,
    server: SocketAddr,
    reopen: Option<&'a dyn Fn() -> std::io::Result<Conn>>,
}

impl Driver<'_> {
    fn arm(&mut self, c: &Client) {
        if let Some(t) = &c.txn {
            let w = t.wake_at();
            self.next_timer = Some(self.next_timer.map_or(w, |n| n.min(w)));
        }
    }

    /// Start the client's next queued request and make it active.
    fn resume(&mut self, clients: &mut [Client], i: usize, now: Instant) {
        let c = &mut clients[i];
        if let Err(e) = self.set.register(c) {
            self.st.aborted = Some(format!("epoll_ctl: {e}"));
            return;
        }
        if c.start_next(now, self.timeout) {
            if self.pos[i] == IDLE {
                self.pos[i] = self.active.len();
                self.active.push(i);
            }
            self.arm(&clients[i]);
        }
    }

    fn deactivate(&mut self, i: usize) {
        let k = self.pos[i];
        if k == IDLE {
            return;
        }
        self.active.swap_remove(k);
        if let Some(&moved) = self.active.get(k) {
            self.pos[moved] = k;
        }
        self.pos[i] = IDLE;
    }

    /// After a transaction ended: the client's next request, or out of the active set.
    fn after(&mut self, clients: &mut [Client], i: usize, now: Instant) {
        let c = &clients[i];
        if c.txn.is_some() {
            return;
        }
        if c.failed.is_none() && !c.queue.is_empty() {
            self.resume(clients, i, now);
            if clients[i].txn.is_some() {
                return;
            }
        }
        self.deactivate(i);
    }

    /// Account for a finished transaction. A client whose request fails drops the rest of
    /// its queue, except an Allocate answered 437, which is retried on a fresh socket.
    fn settle(&mut self, c: &mut Client, fin: (Req, Duration, Result<Success, Failure>)) {
        let (req, lat, res) = fin;
        let st = &mut self.st;
        match res {
            Ok(_) => {
                st.ok += 1;
                if matches!(req, Req::Allocate { .. }) {
                    st.allocs_ok += 1;
                    st.alloc_latency.record(lat.as_micros() as u64);
                }
            }
            Err(f) => {
                if let (Req::Allocate { .. }, Failure::Error(437, _), Some(op), 0..=2) =
                    (req, &f, self.reopen, c.reopens)
                {
                    if let Ok(conn) = op() {
                        // the old socket is closed here, which takes it out of the epoll set
                        c.conn = conn;
                        c.set = 0;
                        c.auth.reset();
                        c.reopens += 1;
                        c.queue.push_front(req);
                        st.reopened_437 += 1;
                        return;
                    }
                }
                if let Failure::AuthFailed(code, reason) = &f {
                    st.aborted = Some(format!(
                        "authentication failed ({code}): the server said \"{reason}\"; \
                         check --user/--password (or --secret) and --realm"
                    ));
                }
                st.fail(&f);
                c.failed = Some(f);
                c.queue.clear();
            }
        }
    }

    /// The client's socket is readable (or, for a stream, writable).
    fn on_ready(&mut self, clients: &mut [Client], i: usize, now: Instant) {
        let timeout = self.timeout;
        let c = &mut clients[i];
        let mut fin = None;
        let mut answered = false;
        let mut resent = false;
        let mut stream_err = None;
        if c.conn.is_stream() {
            // a control message that did not fit the send buffer at once
            if c.conn.has_pending() {
                if let Err(e) = c.conn.flush() {
                    c.last_io_error = Some(e.to_string());
                }
            }
            let fr = &mut self.frames;
            fr.data.clear();
            fr.ends.clear();
            let r = c.conn.recv_frames(&mut self.scratch, |f| {
                fr.data.extend_from_slice(f);
                fr.ends.push(fr.data.len());
            });
            let mut start = 0;
            for &end in &self.frames.ends {
                if let Ok(m) = Message::parse(&self.frames.data[start..end]) {
                    match c.step(&m, now, timeout) {
                        Step::Finished(req, lat, res) => {
                            answered = true;
                            fin = Some((req, lat, res));
                        }
                        Step::Resent => resent = true,
                        Step::Ignored => {}
                    }
                }
                start = end;
            }
            if let Err(e) = r {
                let f = Failure::Io(e.to_string());
                match c.txn.take() {
                    Some(t) => fin = Some((t.req, Duration::ZERO, Err(f))),
                    None => stream_err = Some(f),
                }
            }
        } else {
            // One datagram is one answer: read until one moves the transaction on (earlier
            // ones are late duplicates) or none is left.
            for _ in 0..MAX_READS {
                match c.conn.recv_one(&mut self.scratch) {
                    Ok(Some(len)) => {
                        let Ok(m) = Message::parse(&self.scratch[..len]) else {
                            continue;
                        };
                        match c.step(&m, now, timeout) {
                            Step::Finished(req, lat, res) => {
                                answered = true;
                                fin = Some((req, lat, res));
                                break;
                            }
                            Step::Resent => {
                                resent = true;
                                break;
                            }
                            Step::Ignored => {}
                        }
                    }
                    Ok(None) => break,
                    // e.g. ECONNREFUSED from an ICMP port unreachable: keep retrying
                    Err(e) => {
                        c.last_io_error =
                            Some(if e.kind() == std::io::ErrorKind::ConnectionRefused {
                                "ICMP: connection refused".into()
                            } else {
                                e.to_string()
                            });
                    }
                }
            }
        }
        if resent {
            self.arm(&clients[i]);
        }
        let c = &mut clients[i];
        self.any_answer |= answered;
        if let Some(fin) = fin {
            self.settle(c, fin);
        }
        if let Some(f) = stream_err {
            // the stream is gone after its last answer: the next request would fail on it
            if c.failed.is_none() && !c.queue.is_empty() {
                self.st.fail(&f);
                c.failed = Some(f);
                c.queue.clear();
            }
        }
        self.after(clients, i, now);
    }

    /// Retransmissions and deadlines of every active transaction; recomputes `next_timer`.
    fn on_timers(&mut self, clients: &mut [Client], now: Instant) {
        self.next_timer = None;
        let mut k = 0;
        while k < self.active.len() {
            let i = self.active[k];
            let c = &mut clients[i];
            if let Some((_req, f)) = c.on_timer(now) {
                if !self.any_answer && self.st.ok == 0 {
                    self.st.aborted = Some(format!(
                        "no response from the TURN server {} within {:.1} s ({}): is it \
                         running and reachable?",
                        self.server,
                        self.timeout.as_secs_f64(),
                        match &f {
                            Failure::Io(e) => e.clone(),
                            _ => "timeout".into(),
                        }
                    ));
                }
                self.st.fail(&f);
                c.failed = Some(f);
                c.queue.clear();
            }
            if clients[i].txn.is_none() {
                self.after(clients, i, now);
                if self.pos[i] == IDLE {
                    continue; // another client moved to k
                }
            } else {
                self.arm(&clients[i]);
            }
            k += 1;
        }
    }
}

/// Run every client's queued requests, at most `concurrency` clients at a time. A client whose
/// request fails drops the rest of its queue (and keeps `failed`).
///
/// `reopen`: for Allocate, a 437 (the server still holds this 5-tuple) is retried on a fresh
/// socket made by it, up to 3 times.
///
/// Cost per transaction: its sends and receives, and a share of one epoll_wait; timers are
/// looked at only when the earliest one is due (RFC 8489 §6.2.1 retransmissions and deadline).
pub fn drive(
    set: &mut ControlSet,
    clients: &mut [Client],
    concurrency: usize,
    timeout: Duration,
    server: SocketAddr,
    reopen: Option<&dyn Fn() -> std::io::Result<Conn>>,
) -> DriveStats {
    let t0 = Instant::now();
    let concurrency = concurrency.max(1);
    let mut slot = vec![IDLE; clients.iter().map(|c| c.idx + 1).max().unwrap_or(0)];
    for (k, c) in clients.iter().enumerate() {
        slot[c.idx] = k;
    }
    let mut d = Driver {
        st: DriveStats::default(),
        set,
        slot,
        pos: vec![IDLE; clients.len()],
        active: Vec::with_capacity(concurrency),
        next_timer: None,
        any_answer: false,
        scratch: vec![0u8; 65536],
        frames: Frames::default(),
        timeout,
        server,
        reopen,
    };
    let mut next = 0usize; // next client to start
    loop {
        if INTERRUPTED.load(Ordering::Relaxed) {
            d.st.aborted = Some("interrupted".into());
            break;
        }
        let now = Instant::now();
        while d.active.len() < concurrency && next < clients.len() && d.st.aborted.is_none() {
            let i = next;
            next += 1;
            if !clients[i].queue.is_empty() && clients[i].failed.is_none() {
                d.resume(clients, i, now);
            }
        }
        if d.st.aborted.is_some() || d.active.is_empty() {
            break;
        }
        // wait for answers or the earliest timer (at most 100 ms, for Ctrl-C)
        let ms = if d.set.spin {
            0
        } else {
            d.next_timer.map_or(100, |w| {
                w.saturating_duration_since(now)
                    .as_micros()
                    .div_ceil(1000)
                    .min(100) as libc::c_int
            })
        };
        let mut n = Ok(0);
        if ms > 0 {
            let until = now + LINGER;
            loop {
                n = d.set.ep.wait(0);
                let t = Instant::now();
                if !matches!(n, Ok(0)) || t >= until {
                    break;
                }
                // ~1 µs between polls: a system call each time would be ~20 per wait
                let next = t + LINGER_POLL;
                while Instant::now() < next {
                    std::hint::spin_loop();
                }
            }
        }
        if matches!(n, Ok(0)) {
            n = d.set.ep.wait(ms);
        }
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                d.st.aborted = Some(format!("epoll_wait: {e}"));
                break;
            }
        };
        let now = Instant::now();
        for k in 0..n {
            // a socket of a finished client, or of one not driven now: nothing is waited for
            let i = d
                .slot
                .get(d.set.ep.token(k) as usize)
                .copied()
                .unwrap_or(IDLE);
            if i != IDLE && d.pos[i] != IDLE {
                d.on_ready(clients, i, now);
            }
        }
        if d.next_timer.is_some_and(|w| now >= w) {
            d.on_timers(clients, now);
        }
        if d.st.aborted.is_some() {
            break;
        }
    }
    d.st.elapsed = t0.elapsed();
    d.st
}
