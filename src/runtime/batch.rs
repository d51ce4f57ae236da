//! Batched UDP I/O for the relay loop: `recvmmsg` fills up to [`BATCH`] slots in one system call,
//! `sendmmsg` sends up to [`BATCH`] datagrams in one. Slots keep [`PEER_HEADROOM`] bytes in front
//! so the engine can frame peer data in place. One `Batch` per shard, allocated once.
use std::io;
use std::mem::{size_of, zeroed, MaybeUninit};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::pktinfo::{self, CtrlBuf};
use crate::engine::{PEER_HEADROOM, PEER_TAILROOM};

/// Datagrams per system call. Past ~16 the gain flattens (the per-call cost is amortised).
pub const BATCH: usize = 16;
/// Largest UDP payload (IPv4: 65535 - 20 - 8).
pub const MAX_DATAGRAM: usize = 65_507;
/// One slot: headroom, the largest datagram, tail room.
pub const SLOT: usize = PEER_HEADROOM + MAX_DATAGRAM + PEER_TAILROOM;

pub struct Batch {
    buf: Vec<u8>,
    pub len: [usize; BATCH],
    pub from: [SocketAddr; BATCH],
    /// Local address each datagram was sent to, after [`Batch::recv_with_dst`] (wildcard
    /// listeners); None when the kernel did not say.
    pub dst: [Option<IpAddr>; BATCH],
    /// Control-message buffers for `dst`, one per slot, allocated with the batch.
    ctrl: [CtrlBuf; BATCH],
    hdrs: RecvHdrs,
}

/// `recvmmsg`'s headers, iovecs and source addresses, kept across calls so a call zeroes
/// nothing (3.3 KB per call otherwise; with the send side's zeroing, 1.5-1.75 % of a relayed
/// datagram's CPU at one per wake-up). Their pointers are set again before each call.
struct RecvHdrs {
    hdrs: [libc::mmsghdr; BATCH],
    iov: [libc::iovec; BATCH],
    addrs: [libc::sockaddr_storage; BATCH],
}

// SAFETY: the raw pointers in `hdrs` and `iov` point into the batch and are only used during a
// `Batch::recv` call (through `&mut self`), which sets them again first; moving them to another
// thread between calls leaves nothing that refers to the old thread or location.
unsafe impl Send for RecvHdrs {}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Self {
        Batch {
            buf: vec![0u8; BATCH * SLOT],
            len: [0; BATCH],
            from: [SocketAddr::from(([0, 0, 0, 0], 0)); BATCH],
            dst: [None; BATCH],
            ctrl: [CtrlBuf::default(); BATCH],
            // SAFETY: all-zero is a valid value for these C structs.
            hdrs: RecvHdrs {
                hdrs: unsafe { zeroed() },
                iov: unsafe { zeroed() },
                addrs: unsafe { zeroed() },
            },
        }
    }

    /// Every slot at once, with the source and length of each datagram: the slots are
    /// disjoint borrows of one, so pointers into one slot stay valid while the next is written
    /// (a `&mut` slot per datagram taken from the whole buffer would re-borrow all of it each
    /// time).
    #[inline]
    pub fn slots_mut(
        &mut self,
    ) -> (
        std::slice::ChunksExactMut<'_, u8>,
        &[SocketAddr; BATCH],
        &[usize; BATCH],
    ) {
        (self.buf.chunks_exact_mut(SLOT), &self.from, &self.len)
    }

    #[inline]
    pub fn slot(&self, i: usize) -> &[u8] {
        &self.buf[i * SLOT..(i + 1) * SLOT]
    }

    /// Receive up to [`BATCH`] datagrams, each at `offset` within its slot. Ok(0): nothing to
    /// read (EAGAIN). Truncated datagrams cannot happen: a slot holds the largest one.
    pub fn recv(&mut self, fd: RawFd, offset: usize) -> io::Result<usize> {
        self.recv_inner(fd, offset, false)
    }

    /// [`Batch::recv`] that also fills [`Batch::dst`] from IP_PKTINFO / IPV6_PKTINFO (the socket
    /// must have them enabled, see [`pktinfo::enable`]).
    pub fn recv_with_dst(&mut self, fd: RawFd, offset: usize) -> io::Result<usize> {
        self.recv_inner(fd, offset, true)
    }

    fn recv_inner(&mut self, fd: RawFd, offset: usize, want_dst: bool) -> io::Result<usize> {
        debug_assert!(offset + MAX_DATAGRAM <= SLOT);
        let base = self.buf.as_mut_ptr();
        let r = &mut self.hdrs;
        for i in 0..BATCH {
            // SAFETY: slot i spans [i*SLOT, (i+1)*SLOT) of `buf`, which lives across the call.
            r.iov[i].iov_base = unsafe { base.add(i * SLOT + offset) } as *mut libc::c_void;
            r.iov[i].iov_len = MAX_DATAGRAM;
            // Every field the kernel reads, and the ones it wrote last time, set again.
            let h = &mut r.hdrs[i].msg_hdr;
            h.msg_name = &mut r.addrs[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut r.iov[i];
            h.msg_iovlen = 1;
            if want_dst {
                h.msg_control = self.ctrl[i].0.as_mut_ptr() as *mut libc::c_void;
                h.msg_controllen = pktinfo::CTRL_LEN as _;
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
            h.msg_flags = 0;
        }
        // SAFETY: every pointer above refers to live, correctly sized memory in `self`.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                r.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let n = n as usize;
        for i in 0..n {
            self.len[i] = r.hdrs[i].msg_len as usize;
            self.from[i] = from_storage(&r.addrs[i]).unwrap_or(self.from[i]);
            if want_dst {
                // The kernel wrote msg_controllen bytes (less if MSG_CTRUNC cut them short).
                #[allow(clippy::unnecessary_cast)] // socklen_t, not size_t, on musl
                let n = (r.hdrs[i].msg_hdr.msg_controllen as usize).min(pktinfo::CTRL_LEN);
                self.dst[i] = pktinfo::parse(&self.ctrl[i].0[..n]);
            }
        }
        Ok(n)
    }
}

/// One outgoing datagram: destination and a byte range of a buffer.
#[derive(Clone, Copy)]
pub struct Out {
    pub to: SocketAddr,
    pub ptr: *const u8,
    pub len: usize,
}

/// UDP generic segmentation offload (Linux >= 4.18, `UDP_SEGMENT`): a run of equal-size
/// datagrams for one destination leaves as one message, which the stack builds, routes and
/// queues once and cuts into datagrams at the end (or the NIC does). Off until [`enable_gso`]
/// finds the kernel supports it; switched off for good if the device cannot do it (EIO).
static GSO: AtomicBool = AtomicBool::new(false);
/// Largest segment size GSO is used for, per family; lowered when the kernel refuses a run
/// as larger than the path MTU (EINVAL) while the same datagrams go through one by one.
static GSO_MAX_SEG_V4: AtomicUsize = AtomicUsize::new(1472); // 1500 - 20 - 8
static GSO_MAX_SEG_V6: AtomicUsize = AtomicUsize::new(1452); // 1500 - 40 - 8
/// The limits are never lowered below this: WebRTC media packets are at most ~1200 bytes, and
/// a peer that provokes refusals (ICMP "fragmentation needed" for its own address) can then
/// only slow its own runs down, not turn GSO off for everyone.
const GSO_SEG_FLOOR: usize = 1200;
/// UDP_MAX_SEGMENTS (linux/udp.h). With [`BATCH`] = 16 datagrams per call a run never gets
/// there, nor past [`MAX_DATAGRAM`] bytes; both checks stay in case BATCH grows.
const GSO_MAX_SEGS: usize = 64;
/// linux/udp.h; defined here because not every libc target exports it.
const UDP_SEGMENT: libc::c_int = 103;
const SOL_UDP: libc::c_int = 17;
/// CMSG_SPACE(sizeof(u16)) on 64-bit Linux: a 16-byte header plus 8-byte aligned data.
const GSO_CMSG: usize = 24;
/// Control data per sent message: IP_PKTINFO / IPV6_PKTINFO (wildcard listeners) + UDP_SEGMENT.
const SEND_CMSG: usize = pktinfo::CTRL_LEN + GSO_CMSG;

/// Turn GSO on when `want` and the kernel knows `UDP_SEGMENT` (probed on a scratch socket).
/// Returns whether it is on.
pub fn enable_gso(want: bool) -> bool {
    let ok = want && gso_supported();
    GSO.store(ok, Ordering::Relaxed);
    ok
}

fn gso_supported() -> bool {
    // SAFETY: plain socket calls on a socket we own and close.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return false;
        }
        let mut v: libc::c_int = 0;
        let mut l = size_of::<libc::c_int>() as libc::socklen_t;
        let r = libc::getsockopt(fd, SOL_UDP, UDP_SEGMENT, &mut v as *mut _ as *mut _, &mut l);
        libc::close(fd);
        r == 0
    }
}

/// Send `msgs` on `fd` with as few `sendmmsg` calls as it takes; consecutive datagrams for one
/// destination with the same length (the last may be shorter) go as one GSO message. Returns
/// how many datagrams were not sent (socket buffer full: dropped, as the network would, and
/// counted by the caller).
///
/// # Safety
/// Every `Out` must point at `len` readable bytes that stay alive for the call.
pub unsafe fn send(fd: RawFd, msgs: &[Out]) -> usize {
    send_from(fd, msgs, None)
}

/// [`send`] with every datagram leaving from the local address `src` (IP_PKTINFO /
/// IPV6_PKTINFO; for a wildcard listener: the address the client sent to), GSO messages
/// included. `None`: the kernel picks, no control message.
///
/// # Safety
/// As [`send`].
pub unsafe fn send_from(fd: RawFd, msgs: &[Out], src: Option<IpAddr>) -> usize {
    send_counted(fd, msgs, src, &mut 0)
}

/// [`send_from`], adding to `refused` the GSO messages the kernel refused (resent plainly).
unsafe fn send_counted(fd: RawFd, msgs: &[Out], src: Option<IpAddr>, refused: &mut usize) -> usize {
    // The source-address message, built once; it goes first in every message's control data
    // (its CMSG_SPACE is a multiple of the alignment, so UDP_SEGMENT can follow it).
    let mut pk = CtrlBuf::default();
    let pk_len = src.map_or(0, |ip| pktinfo::build(ip, &mut pk));
    let gso = GSO.load(Ordering::Relaxed);
    let mut dropped = 0;
    for chunk in msgs.chunks(BATCH) {
        // Only the entries a call uses are written (zeroing all BATCH of them, ~4.7 KB, was
        // most of the 1.5-1.75 % `RecvHdrs` mentions); the kernel reads no others.
        let mut addrs = [const { MaybeUninit::<libc::sockaddr_storage>::uninit() }; BATCH];
        let mut iov = [const { MaybeUninit::<libc::iovec>::uninit() }; BATCH];
        // One pointer for the whole array: a GSO message's msg_iov spans several entries.
        let iov_p = iov.as_mut_ptr() as *mut libc::iovec;
        let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; BATCH];
        let mut cmsgs = [const { MaybeUninit::<[u64; SEND_CMSG / 8]>::uninit() }; BATCH];
        // message h covers chunk[first[h] .. first[h] + segs[h]]
        let mut first = [0usize; BATCH];
        let mut segs = [0usize; BATCH];
        let (mut h, mut i) = (0, 0);
        while i < chunk.len() {
            let m = &chunk[i];
            // The run: same destination, every datagram but the last exactly m.len long.
            let mut n = 1;
            // (a run to port 0 would be refused whatever its size; the engine drops those)
            if gso && m.len <= max_seg(m.to) && m.to.port() != 0 {
                let mut bytes = m.len;
                while i + n < chunk.len()
                    && n < GSO_MAX_SEGS
                    && chunk[i + n].to == m.to
                    && chunk[i + n].len <= m.len
                    && chunk[i + n].len > 0
                    && bytes + chunk[i + n].len <= MAX_DATAGRAM
                {
                    bytes += chunk[i + n].len;
                    n += 1;
                    if chunk[i + n - 1].len < m.len {
                        break; // a short datagram ends the run
                    }
                }
            }
            for (j, o) in chunk[i..i + n].iter().enumerate() {
                iov_p.add(i + j).write(libc::iovec {
                    iov_base: o.ptr as *mut libc::c_void,
                    iov_len: o.len,
                });
            }
            let alen = to_storage(m.to, addrs[h].as_mut_ptr());
            let hdr = &mut hdrs[h].write(zeroed()).msg_hdr;
            hdr.msg_name = addrs[h].as_mut_ptr() as *mut libc::c_void;
            hdr.msg_namelen = alen;
            hdr.msg_iov = iov_p.add(i);
            hdr.msg_iovlen = n as _;
            let ctrl = cmsgs[h].as_mut_ptr() as *mut u8;
            if pk_len > 0 {
                std::ptr::copy_nonoverlapping(pk.0.as_ptr(), ctrl, pk_len);
            }
            if n > 1 {
                std::ptr::write_bytes(ctrl.add(pk_len), 0, GSO_CMSG);
                let c = ctrl.add(pk_len) as *mut libc::cmsghdr;
                (*c).cmsg_level = SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, m.len as u16);
            }
            let clen = pk_len + if n > 1 { GSO_CMSG } else { 0 };
            if clen > 0 {
                hdr.msg_control = ctrl as *mut libc::c_void;
                hdr.msg_controllen = clen as _;
            }
            first[h] = i;
            segs[h] = n;
            h += 1;
            i += n;
        }
        let mut done = 0;
        while done < h {
            // (entries 0..h are initialised, and only h - done from `done` are passed)
            let r = libc::sendmmsg(
                fd,
                hdrs.as_mut_ptr().add(done) as *mut libc::mmsghdr,
                (h - done) as libc::c_uint,
                libc::MSG_DONTWAIT,
            );
            if r > 0 {
                done += r as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            if r < 0 && e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            let errno = e.raw_os_error().unwrap_or(0);
            if r < 0 && segs[done] > 1 && (errno == libc::EIO || errno == libc::EINVAL) {
                // The GSO message was refused; resend the run datagram by datagram. EIO: the
                // device cannot segment (no checksum offload) or the route is IPsec: GSO goes
                // off. EINVAL: the segment exceeds the path MTU, or the destination is
                // refused whatever the size; only when the single datagrams do go through was
                // it the size, and then sizes from this one up are sent one by one.
                *refused += 1;
                let run = &chunk[first[done]..first[done] + segs[done]];
                let lost = send_plain(fd, run, &pk, pk_len);
                dropped += lost;
                if errno == libc::EIO {
                    GSO.store(false, Ordering::Relaxed);
                } else if lost < run.len() && run[0].len > GSO_SEG_FLOOR {
                    let limit = if run[0].to.is_ipv4() {
                        &GSO_MAX_SEG_V4
                    } else {
                        &GSO_MAX_SEG_V6
                    };
                    limit.fetch_min(run[0].len - 1, Ordering::Relaxed);
                }
                done += 1;
                continue;
            }
            if r < 0 && e.kind() != io::ErrorKind::WouldBlock {
                // An error for the first message (e.g. EMSGSIZE with DONT-FRAGMENT, or an
                // ICMP-reported refusal): skip that one and go on with the rest.
                dropped += segs[done];
                done += 1;
                continue;
            }
            dropped += segs[done..h].iter().sum::<usize>();
            break;
        }
    }
    dropped
}

#[inline]
fn max_seg(to: SocketAddr) -> usize {
    if to.is_ipv4() {
        GSO_MAX_SEG_V4.load(Ordering::Relaxed)
    } else {
        GSO_MAX_SEG_V6.load(Ordering::Relaxed)
    }
}

/// `send` without GSO: one datagram per message, with the source-address message `pk` (its
/// first `pk_len` bytes) if any.
unsafe fn send_plain(fd: RawFd, msgs: &[Out], pk: &CtrlBuf, pk_len: usize) -> usize {
    let mut dropped = 0;
    for m in msgs {
        let mut addr = MaybeUninit::<libc::sockaddr_storage>::uninit();
        let alen = to_storage(m.to, addr.as_mut_ptr());
        let mut iov = libc::iovec {
            iov_base: m.ptr as *mut libc::c_void,
            iov_len: m.len,
        };
        let mut hdr: libc::msghdr = zeroed();
        hdr.msg_name = addr.as_mut_ptr() as *mut libc::c_void;
        hdr.msg_namelen = alen;
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        if pk_len > 0 {
            // The kernel only reads control data on send.
            hdr.msg_control = pk.0.as_ptr() as *mut libc::c_void;
            hdr.msg_controllen = pk_len as _;
        }
        loop {
            let r = libc::sendmsg(fd, &hdr, libc::MSG_DONTWAIT);
            if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            dropped += usize::from(r < 0);
            break;
        }
    }
    dropped
}

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Write `a` as a complete `sockaddr_in` / `sockaddr_in6` (padding zeroed) at `s`; returns its
/// length. `s` may be uninitialised.
///
/// # Safety
/// `s` must be valid for writes of a `sockaddr_storage`.
unsafe fn to_storage(a: SocketAddr, s: *mut libc::sockaddr_storage) -> libc::socklen_t {
    match a {
        SocketAddr::V4(v4) => {
            // SAFETY: all-zero is a valid sockaddr_in; storage is large and aligned enough.
            let mut sin: libc::sockaddr_in = unsafe { zeroed() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            unsafe { std::ptr::write(s as *mut libc::sockaddr_in, sin) };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let mut sin6: libc::sockaddr_in6 = unsafe { zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_scope_id = v6.scope_id();
            unsafe { std::ptr::write(s as *mut libc::sockaddr_in6, sin6) };
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn batch_roundtrip_v4_and_v6() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let a = std::net::UdpSocket::bind(bind).unwrap();
            let b = std::net::UdpSocket::bind(bind).unwrap();
            let to = b.local_addr().unwrap();
            let payloads: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 1 + i as usize * 50]).collect();
            let outs = outs_to(to, &payloads);
            // SAFETY: the payloads outlive the call.
            assert_eq!(unsafe { send(a.as_raw_fd(), &outs) }, 0);
            let mut batch = Batch::new();
            let mut got = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while got.len() < payloads.len() && std::time::Instant::now() < deadline {
                let n = batch.recv(b.as_raw_fd(), PEER_HEADROOM).unwrap();
                for i in 0..n {
                    assert_eq!(batch.from[i], a.local_addr().unwrap());
                    let s = &batch.slot(i)[PEER_HEADROOM..PEER_HEADROOM + batch.len[i]];
                    got.push(s.to_vec());
                }
            }
            assert_eq!(got, payloads);
        }
    }

    /// One `Out` to `to` per payload.
    fn outs_to(to: SocketAddr, payloads: &[Vec<u8>]) -> Vec<Out> {
        payloads
            .iter()
            .map(|p| Out {
                to,
                ptr: p.as_ptr(),
                len: p.len(),
            })
            .collect()
    }

    /// Receive datagrams on `b` until `want` arrived or 5 s passed.
    fn recv_all(b: &std::net::UdpSocket, want: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut batch = Batch::new();
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < want && std::time::Instant::now() < deadline {
            let n = batch.recv(b.as_raw_fd(), 0).unwrap();
            for i in 0..n {
                got.push((batch.from[i], batch.slot(i)[..batch.len[i]].to_vec()));
            }
            if n == 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        got
    }

    /// Runs of equal-size datagrams to one destination (GSO messages when the kernel has
    /// UDP_SEGMENT) arrive as the same datagrams, in order, with their own sizes: a short
    /// last one ends a run, a longer one or another destination starts a new one.
    #[test]
    fn gso_runs_arrive_as_the_datagrams_sent() {
        let on = enable_gso(true);
        eprintln!("GSO supported: {on}");
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let a = std::net::UdpSocket::bind(bind).unwrap();
            let b1 = std::net::UdpSocket::bind(bind).unwrap();
            let b2 = std::net::UdpSocket::bind(bind).unwrap();
            let (t1, t2) = (b1.local_addr().unwrap(), b2.local_addr().unwrap());
            // (destination, length): a run of 5 x 1200 + 700, 3 x 100 to b2, 1200 then a
            // longer 1300 (two runs), 70 x 40 (more than one BATCH chunk), single datagrams.
            let mut plan: Vec<(SocketAddr, usize)> = Vec::new();
            plan.extend([(t1, 1200); 5]);
            plan.push((t1, 700));
            plan.extend([(t2, 100); 3]);
            plan.extend([(t1, 1200), (t1, 1300), (t2, 9), (t1, 1)]);
            plan.extend([(t2, 40); 70]);
            plan.push((t1, 1472));
            plan.push((t1, 1473));
            let payloads: Vec<Vec<u8>> = plan
                .iter()
                .enumerate()
                .map(|(i, &(_, len))| (0..len).map(|k| (i * 7 + k) as u8).collect())
                .collect();
            let outs: Vec<Out> = plan
                .iter()
                .zip(&payloads)
                .map(|(&(to, _), p)| Out {
                    to,
                    ptr: p.as_ptr(),
                    len: p.len(),
                })
                .collect();
            let mut refused = 0;
            // SAFETY: the payloads outlive the call.
            let lost = unsafe { send_counted(a.as_raw_fd(), &outs, None, &mut refused) };
            assert_eq!(
                (lost, refused),
                (0, 0),
                "nothing lost, no GSO message refused"
            );
            for (sock, to) in [(&b1, t1), (&b2, t2)] {
                let want: Vec<Vec<u8>> = plan
                    .iter()
                    .zip(&payloads)
                    .filter(|((dst, _), _)| *dst == to)
                    .map(|(_, p)| p.clone())
                    .collect();
                let got = recv_all(sock, want.len());
                assert!(got.iter().all(|(from, _)| *from == a.local_addr().unwrap()));
                let got: Vec<Vec<u8>> = got.into_iter().map(|(_, p)| p).collect();
                assert_eq!(got.len(), want.len(), "{bind} -> {to}");
                assert_eq!(got, want, "{bind} -> {to}");
            }
        }
    }

    /// A GSO message the kernel refuses (here EINVAL: SO_NO_CHECK forbids GSO) is resent
    /// datagram by datagram; as those go through, sizes from that one up are no longer tried
    /// with GSO, down to the floor and no further.
    #[test]
    fn refused_gso_falls_back_to_single_datagrams() {
        if !enable_gso(true) {
            return; // no UDP_SEGMENT: nothing to refuse
        }
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let one: libc::c_int = 1;
        // SAFETY: a valid fd and an int option.
        let r = unsafe {
            libc::setsockopt(
                a.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                &one as *const _ as *const libc::c_void,
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = b.local_addr().unwrap();
        // 1301 B: a size no other test sends, above the floor, so the lowered limit is ours.
        let payloads: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 1301]).collect();
        let outs = outs_to(to, &payloads);
        let mut refused = 0;
        // SAFETY: the payloads outlive the call.
        assert_eq!(
            unsafe { send_counted(a.as_raw_fd(), &outs, None, &mut refused) },
            0
        );
        assert_eq!(refused, 1, "one run, refused once");
        let got: Vec<Vec<u8>> = recv_all(&b, 6).into_iter().map(|(_, p)| p).collect();
        assert_eq!(got, payloads);
        assert!(GSO_MAX_SEG_V4.load(Ordering::Relaxed) < 1301);
        assert_eq!(GSO_MAX_SEG_V4.load(Ordering::Relaxed), 1300);
        // Refused at or below the floor: resent plainly, the limit stays.
        let small: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 1000]).collect();
        let outs = outs_to(to, &small);
        // SAFETY: the payloads outlive the call.
        assert_eq!(unsafe { send(a.as_raw_fd(), &outs) }, 0);
        let got: Vec<Vec<u8>> = recv_all(&b, 4).into_iter().map(|(_, p)| p).collect();
        assert_eq!(got, small);
        assert_eq!(GSO_MAX_SEG_V4.load(Ordering::Relaxed), 1300);
    }

    /// A wildcard socket learns each datagram's local address and answers from it: a client
    /// connected to 127.0.0.2 (which only takes datagrams from there) gets the replies, single
    /// ones and a run of equal-size ones (one GSO message where the kernel has UDP_SEGMENT).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn wildcard_learns_and_replies_from_the_destination() {
        enable_gso(true);
        let server = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        pktinfo::enable(server.as_raw_fd(), false).unwrap();
        server
            .bind(&SocketAddr::from(([0, 0, 0, 0], 0)).into())
            .unwrap();
        server.set_nonblocking(true).unwrap();
        let port = server.local_addr().unwrap().as_socket().unwrap().port();
        let server: std::net::UdpSocket = server.into();
        for dst in [[127, 0, 0, 2], [127, 0, 0, 1]] {
            let to = SocketAddr::from((dst, port));
            let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            client.connect(to).unwrap();
            client
                .set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            client.send(b"ping").unwrap();
            let mut batch = Batch::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            let mut n = 0;
            while n == 0 && std::time::Instant::now() < deadline {
                n = batch.recv_with_dst(server.as_raw_fd(), 0).unwrap();
            }
            assert_eq!(n, 1);
            assert_eq!(batch.dst[0], Some(to.ip()));
            assert_eq!(batch.from[0], client.local_addr().unwrap());
            // One, then a run of 5 x 500 + 300 (a GSO message when on; 500 stays under the
            // limit the refusal test above lowers), then one.
            let mut payloads: Vec<Vec<u8>> = vec![b"pong".to_vec()];
            payloads.extend((0..5u8).map(|i| vec![i; 500]));
            payloads.push(vec![9; 300]);
            let outs = outs_to(batch.from[0], &payloads);
            let mut refused = 0;
            // SAFETY: the payloads outlive the calls.
            unsafe {
                assert_eq!(send_from(server.as_raw_fd(), &outs[..1], batch.dst[0]), 0);
                let fd = server.as_raw_fd();
                assert_eq!(send_counted(fd, &outs[1..], batch.dst[0], &mut refused), 0);
            }
            let mut buf = [0u8; 2048];
            for p in &payloads {
                let k = client
                    .recv(&mut buf)
                    .expect("reply from the address the client used");
                assert_eq!(&buf[..k], p.as_slice());
            }
            // The kernel took IP_PKTINFO and UDP_SEGMENT together: no refused GSO message.
            assert_eq!(refused, 0);
        }
    }
}
