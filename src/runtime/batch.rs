//! Batched UDP I/O for the relay loop: `recvmmsg` fills up to [`BATCH`] slots in one system call,
//! `sendmmsg` sends up to [`BATCH`] datagrams in one. Slots keep [`PEER_HEADROOM`] bytes in front
//! so the engine can frame peer data in place. One `Batch` per shard, allocated once.
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

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
}

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
        }
    }

    /// The whole slot `i` (headroom included).
    #[inline]
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.buf[i * SLOT..(i + 1) * SLOT]
    }

    #[inline]
    pub fn slot(&self, i: usize) -> &[u8] {
        &self.buf[i * SLOT..(i + 1) * SLOT]
    }

    /// Receive up to [`BATCH`] datagrams, each at `offset` within its slot. Ok(0): nothing to
    /// read (EAGAIN). Truncated datagrams cannot happen: a slot holds the largest one.
    pub fn recv(&mut self, fd: RawFd, offset: usize) -> io::Result<usize> {
        debug_assert!(offset + MAX_DATAGRAM <= SLOT);
        // SAFETY: all-zero is a valid value for these C structs.
        let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { zeroed() };
        let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let base = self.buf.as_mut_ptr();
        for i in 0..BATCH {
            // SAFETY: slot i spans [i*SLOT, (i+1)*SLOT) of `buf`, which lives across the call.
            iov[i].iov_base = unsafe { base.add(i * SLOT + offset) } as *mut libc::c_void;
            iov[i].iov_len = MAX_DATAGRAM;
            hdrs[i].msg_hdr.msg_name = &mut addrs[i] as *mut _ as *mut libc::c_void;
            hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdrs[i].msg_hdr.msg_iov = &mut iov[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every pointer above refers to live, correctly sized memory.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
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
            self.len[i] = hdrs[i].msg_len as usize;
            self.from[i] = from_storage(&addrs[i]).unwrap_or(self.from[i]);
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

/// Send `msgs` on `fd` with as few `sendmmsg` calls as it takes. Returns how many were not sent
/// (socket buffer full: dropped, as the network would, and counted by the caller).
///
/// # Safety
/// Every `Out` must point at `len` readable bytes that stay alive for the call.
pub unsafe fn send(fd: RawFd, msgs: &[Out]) -> usize {
    let mut dropped = 0;
    for chunk in msgs.chunks(BATCH) {
        let mut addrs: [libc::sockaddr_storage; BATCH] = zeroed();
        let mut iov: [libc::iovec; BATCH] = zeroed();
        let mut hdrs: [libc::mmsghdr; BATCH] = zeroed();
        for (i, m) in chunk.iter().enumerate() {
            let alen = to_storage(m.to, &mut addrs[i]);
            iov[i].iov_base = m.ptr as *mut libc::c_void;
            iov[i].iov_len = m.len;
            hdrs[i].msg_hdr.msg_name = &mut addrs[i] as *mut _ as *mut libc::c_void;
            hdrs[i].msg_hdr.msg_namelen = alen;
            hdrs[i].msg_hdr.msg_iov = &mut iov[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        let mut done = 0;
        while done < chunk.len() {
            let r = libc::sendmmsg(
                fd,
                hdrs.as_mut_ptr().add(done),
                (chunk.len() - done) as libc::c_uint,
                libc::MSG_DONTWAIT,
            );
            if r <= 0 {
                let e = io::Error::last_os_error();
                if r < 0 && e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if r < 0 && e.kind() != io::ErrorKind::WouldBlock {
                    // An error for the first message (e.g. EMSGSIZE with DONT-FRAGMENT, or an
                    // ICMP-reported refusal): skip that one and go on with the rest.
                    done += 1;
                    dropped += 1;
                    continue;
                }
                dropped += chunk.len() - done;
                break;
            }
            done += r as usize;
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

fn to_storage(a: SocketAddr, s: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let sin = unsafe { &mut *(s as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(s as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_scope_id = v6.scope_id();
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
            let outs: Vec<Out> = payloads
                .iter()
                .map(|p| Out {
                    to,
                    ptr: p.as_ptr(),
                    len: p.len(),
                })
                .collect();
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
}
