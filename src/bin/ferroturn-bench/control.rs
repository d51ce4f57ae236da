//! Clients and the control-path driver: run queued requests (Allocate, CreatePermission,
//! ChannelBind, Refresh) on many clients with at most K transactions outstanding, over
//! non-blocking sockets and poll(2). Used for setup, `--allocate-only`, and teardown.
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferroturn::codec::stun::Message;

use crate::conn::Conn;
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
            channel: 0x4000 + (idx % 0x1000) as u16,
            allocated: false,
            lifetime: 0,
            txn: None,
            queue: VecDeque::new(),
            failed: None,
            last_io_error: None,
            last_refresh: Instant::now(),
            reopens: 0,
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
        let reliable = self.conn.is_stream();
        let txn = self.txn.as_mut()?;
        match txn.on_message(m, &mut self.auth, now, timeout, reliable) {
            Outcome::NotOurs => None,
            Outcome::Resend => {
                if let Err(e) = self.conn.send(&txn.buf) {
                    self.last_io_error = Some(e.to_string());
                }
                None
            }
            Outcome::Done(s) => {
                let t = self.txn.take().expect("txn");
                self.apply(t.req, &s);
                Some((t.req, now - t.started, Ok(s)))
            }
            Outcome::Failed(f) => {
                let t = self.txn.take().expect("txn");
                Some((t.req, now - t.started, Err(f)))
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

/// Run every client's queued requests, at most `concurrency` clients at a time. A client whose
/// request fails drops the rest of its queue (and keeps `failed`).
///
/// `reopen`: for Allocate, a 437 (the server still holds this 5-tuple) is retried on a fresh
/// socket made by it, up to 3 times.
pub fn drive(
    clients: &mut [Client],
    concurrency: usize,
    timeout: Duration,
    server: SocketAddr,
    reopen: Option<&dyn Fn() -> std::io::Result<Conn>>,
) -> DriveStats {
    let t0 = Instant::now();
    let mut st = DriveStats::default();
    let mut next = 0usize; // next client to start
    let mut active: Vec<usize> = Vec::with_capacity(concurrency);
    let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(concurrency);
    let mut scratch = vec![0u8; 65536];
    let concurrency = concurrency.max(1);
    let mut any_answer = false;
    loop {
        if INTERRUPTED.load(Ordering::Relaxed) {
            st.aborted = Some("interrupted".into());
            break;
        }
        let now = Instant::now();
        while active.len() < concurrency && next < clients.len() {
            let c = &mut clients[next];
            if !c.queue.is_empty() && c.failed.is_none() && c.start_next(now, timeout) {
                active.push(next);
            }
            next += 1;
        }
        if active.is_empty() {
            break;
        }
        // wait for answers or the earliest timer
        let wake = active
            .iter()
            .filter_map(|&i| clients[i].txn.as_ref().map(|t| t.wake_at()))
            .min()
            .unwrap_or(now + Duration::from_millis(100));
        let ms = wake
            .saturating_duration_since(now)
            .as_micros()
            .div_ceil(1000)
            .min(100) as libc::c_int;
        for &i in &active {
            // a control message that did not fit the TCP send buffer at once
            if clients[i].conn.has_pending() {
                if let Err(e) = clients[i].conn.flush() {
                    clients[i].last_io_error = Some(e.to_string());
                }
            }
        }
        pfds.clear();
        pfds.extend(active.iter().map(|&i| libc::pollfd {
            fd: clients[i].conn.fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        // SAFETY: pfds is a valid array of pollfd of the given length.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                st.aborted = Some(format!("poll: {e}"));
                break;
            }
        }
        let now = Instant::now();
        let mut finished: Vec<usize> = Vec::new();
        for (k, &i) in active.iter().enumerate() {
            let c = &mut clients[i];
            if pfds[k].revents != 0 {
                let mut results = Vec::new();
                let mut frames: Vec<Vec<u8>> = Vec::new();
                let r = c
                    .conn
                    .recv_frames(&mut scratch, |f| frames.push(f.to_vec()));
                if let Err(e) = r {
                    if c.conn.is_stream() {
                        let f = Failure::Io(e.to_string());
                        if let Some(t) = c.txn.take() {
                            results.push((t.req, Duration::ZERO, Err(f)));
                        }
                    } else {
                        // e.g. ECONNREFUSED from an ICMP port unreachable: keep retrying
                        c.last_io_error =
                            Some(if e.kind() == std::io::ErrorKind::ConnectionRefused {
                                "ICMP: connection refused".into()
                            } else {
                                e.to_string()
                            });
                    }
                }
                for f in &frames {
                    if let Ok(m) = Message::parse(f) {
                        if let Some(res) = c.on_stun(&m, now, timeout) {
                            any_answer = true;
                            results.push(res);
                        }
                    }
                }
                for (req, lat, res) in results {
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
                                (req, &f, reopen, c.reopens)
                            {
                                if let Ok(conn) = op() {
                                    c.conn = conn;
                                    c.auth.reset();
                                    c.reopens += 1;
                                    c.queue.push_front(req);
                                    st.reopened_437 += 1;
                                    continue;
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
            }
            if let Some((_req, f)) = c.on_timer(now) {
                if !any_answer && st.ok == 0 {
                    st.aborted = Some(format!(
                        "no response from the TURN server {server} within {:.1} s ({}): is it \
                         running and reachable?",
                        timeout.as_secs_f64(),
                        match &f {
                            Failure::Io(e) => e.clone(),
                            _ => "timeout".into(),
                        }
                    ));
                }
                st.fail(&f);
                c.failed = Some(f);
                c.queue.clear();
            }
            if c.txn.is_none() && (c.failed.is_some() || !c.start_next(now, timeout)) {
                finished.push(k);
            }
        }
        for k in finished.into_iter().rev() {
            active.swap_remove(k);
        }
        if st.aborted.is_some() {
            break;
        }
    }
    st.elapsed = t0.elapsed();
    st
}
