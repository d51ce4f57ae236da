//! Wildcard UDP listeners (0.0.0.0, `::`) and the address a client sent to.
//!
//! A UDP socket bound to the wildcard answers from whatever source address the kernel's route
//! picks, not from the address the client used. On a multi-homed host, or an IPv6 host with
//! several addresses (SLAAC + temporary ones), the reply then comes from an address the client
//! never talked to, and it (or its NAT, or a browser's ICE agent) drops it. So for wildcard
//! listeners only: IP_PKTINFO / IPV6_RECVPKTINFO report each datagram's local address in a
//! control message at receive, and every datagram sent back carries IP_PKTINFO (`ipi_spec_dst`)
//! / IPV6_PKTINFO (`ipi6_addr`) with that address as its source (ip(7), ipv6(7); RFC 3542 §6).
//! Listeners on a specific address need none of it and take the plain path.
//!
//! IPv4-mapped addresses cannot occur: IPv6 sockets are IPV6_V6ONLY (see `sockets.rs`), so
//! `::` only sees IPv6 and IPv4 clients reach the separate 0.0.0.0 listener.
use std::io;
use std::mem::size_of;
use std::net::IpAddr;
use std::os::fd::RawFd;

/// Room for one IP_PKTINFO or IPV6_PKTINFO message (CMSG_SPACE(20) = 40 on 64-bit Linux),
/// with slack for one more the kernel might add.
pub const CTRL_LEN: usize = 64;

/// One control-message buffer, aligned for `cmsghdr` (whose first field is a `size_t`).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub struct CtrlBuf(pub [u8; CTRL_LEN]);

impl Default for CtrlBuf {
    fn default() -> Self {
        CtrlBuf([0; CTRL_LEN])
    }
}

/// Ask the kernel for each datagram's local address (IP_PKTINFO / IPV6_RECVPKTINFO).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn enable(fd: RawFd, v6: bool) -> io::Result<()> {
    let (level, name) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    let on: libc::c_int = 1;
    // SAFETY: a valid fd and a c_int option value of the right size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &on as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Elsewhere the listener keeps the kernel's choice of source address.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn enable(_fd: RawFd, _v6: bool) -> io::Result<()> {
    Ok(())
}

/// Every address of the host's interfaces (getifaddrs(3)), sorted, without the unspecified
/// address. A wildcard listener answers on all of them, so the peer filter counts them as the
/// server's own (own-listener and own-address rules). Empty if the call fails.
pub fn interface_addresses() -> Vec<IpAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut p = head;
    while !p.is_null() {
        // SAFETY: `p` is a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*p };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says how long it is.
            let ip = unsafe {
                match (*ifa.ifa_addr).sa_family as libc::c_int {
                    libc::AF_INET => {
                        let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))))
                    }
                    libc::AF_INET6 => {
                        let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        Some(IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)))
                    }
                    _ => None,
                }
            };
            if let Some(ip) = ip.filter(|ip| !ip.is_unspecified()) {
                out.push(ip);
            }
        }
        p = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    out
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::ptr::read_unaligned;

    const HDR: usize = size_of::<libc::cmsghdr>();

    /// CMSG_ALIGN: control messages are aligned to `size_t`.
    const fn align(n: usize) -> usize {
        (n + size_of::<usize>() - 1) & !(size_of::<usize>() - 1)
    }

    /// The local address in a received control buffer (`ctrl` = the `msg_controllen` bytes the
    /// kernel filled): the first IP_PKTINFO or IPV6_PKTINFO. None when there is none, when it is
    /// truncated or malformed, or when the address cannot be a reply's source (unspecified,
    /// multicast, IPv4-mapped). Never reads outside `ctrl`.
    pub fn parse(ctrl: &[u8]) -> Option<IpAddr> {
        let mut off = 0;
        while ctrl.len().saturating_sub(off) >= HDR {
            let rest = &ctrl[off..];
            // SAFETY: `rest` holds at least HDR bytes; read_unaligned has no alignment need.
            let h: libc::cmsghdr = unsafe { read_unaligned(rest.as_ptr() as *const libc::cmsghdr) };
            let len = h.cmsg_len as usize;
            if len < align(HDR) || len > rest.len() {
                return None; // malformed: stop rather than guess
            }
            let data = &rest[align(HDR)..len];
            match (h.cmsg_level, h.cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    if data.len() < size_of::<libc::in_pktinfo>() {
                        return None;
                    }
                    // SAFETY: `data` holds a whole in_pktinfo; unaligned read.
                    let p: libc::in_pktinfo =
                        unsafe { read_unaligned(data.as_ptr() as *const libc::in_pktinfo) };
                    // ip(7): ipi_spec_dst is the packet's local address (for a broadcast, the
                    // interface's address); ipi_addr is the header's destination.
                    let ip = Ipv4Addr::from(u32::from_be(p.ipi_spec_dst.s_addr));
                    let usable = !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast());
                    return usable.then_some(IpAddr::V4(ip));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    if data.len() < size_of::<libc::in6_pktinfo>() {
                        return None;
                    }
                    // SAFETY: `data` holds a whole in6_pktinfo; unaligned read.
                    let p: libc::in6_pktinfo =
                        unsafe { read_unaligned(data.as_ptr() as *const libc::in6_pktinfo) };
                    let ip = Ipv6Addr::from(p.ipi6_addr.s6_addr);
                    let usable = !(ip.is_unspecified()
                        || ip.is_multicast()
                        || ip.to_ipv4_mapped().is_some());
                    return usable.then_some(IpAddr::V6(ip));
                }
                _ => {}
            }
            off += align(len);
        }
        None
    }

    /// Write the control message that makes a datagram leave from `src`; returns its length.
    pub fn build(src: IpAddr, buf: &mut CtrlBuf) -> usize {
        buf.0 = [0; CTRL_LEN];
        let (level, ty, data_len) = match src {
            IpAddr::V4(_) => (
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                size_of::<libc::in_pktinfo>(),
            ),
            IpAddr::V6(_) => (
                libc::IPPROTO_IPV6,
                libc::IPV6_PKTINFO,
                size_of::<libc::in6_pktinfo>(),
            ),
        };
        let space = align(HDR) + align(data_len);
        debug_assert!(space <= CTRL_LEN);
        let base = buf.0.as_mut_ptr();
        // SAFETY: CtrlBuf is 8-aligned and CTRL_LEN >= CMSG_SPACE of either pktinfo; all-zero
        // is valid for cmsghdr (musl has padding fields).
        unsafe {
            let h = base as *mut libc::cmsghdr;
            let mut hdr: libc::cmsghdr = std::mem::zeroed();
            hdr.cmsg_len = (align(HDR) + data_len) as _;
            hdr.cmsg_level = level;
            hdr.cmsg_type = ty;
            h.write(hdr);
            let data = base.add(align(HDR));
            match src {
                IpAddr::V4(a) => {
                    // ipi_ifindex 0: the route picks the interface; ipi_spec_dst is the source.
                    let p = libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: u32::from(a).to_be(),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    (data as *mut libc::in_pktinfo).write_unaligned(p);
                }
                IpAddr::V6(a) => {
                    let p = libc::in6_pktinfo {
                        ipi6_addr: libc::in6_addr {
                            s6_addr: a.octets(),
                        },
                        ipi6_ifindex: 0,
                    };
                    (data as *mut libc::in6_pktinfo).write_unaligned(p);
                }
            }
        }
        space
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod imp {
    use super::*;
    pub fn parse(_ctrl: &[u8]) -> Option<IpAddr> {
        None
    }
    pub fn build(_src: IpAddr, _buf: &mut CtrlBuf) -> usize {
        0
    }
}

pub use imp::{build, parse};

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(a: [u8; 4]) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(a))
    }

    #[test]
    fn build_then_parse_round_trips() {
        let mut b = CtrlBuf::default();
        for ip in [
            v4([127, 0, 0, 2]),
            v4([192, 0, 2, 7]),
            "2001:db8::5".parse().unwrap(),
            "fe80::1".parse().unwrap(),
        ] {
            let n = build(ip, &mut b);
            assert!(n > 0 && n <= CTRL_LEN);
            assert_eq!(parse(&b.0[..n]), Some(ip));
        }
    }

    /// Missing, truncated, oversized, unknown and unusable control messages: None, no panic.
    #[test]
    fn malformed_or_missing_control_messages_are_ignored() {
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[0u8; 7]), None);
        assert_eq!(parse(&[0u8; CTRL_LEN]), None, "cmsg_len 0");
        let mut b = CtrlBuf::default();
        let n = build(v4([10, 1, 2, 3]), &mut b);
        // Every truncation of a valid message.
        for cut in 0..n {
            if cut >= size_of::<libc::cmsghdr>() + size_of::<libc::in_pktinfo>() {
                continue; // whole data present (only the padding cut)
            }
            assert_eq!(parse(&b.0[..cut]), None, "cut at {cut}");
        }
        // cmsg_len larger than the buffer.
        let mut big = b;
        big.0[..size_of::<usize>()].copy_from_slice(&(1000usize).to_ne_bytes());
        assert_eq!(parse(&big.0), None);
        // cmsg_len claims less than an in_pktinfo.
        let mut short = b;
        short.0[..size_of::<usize>()]
            .copy_from_slice(&(size_of::<libc::cmsghdr>() + 4).to_ne_bytes());
        assert_eq!(parse(&short.0), None);
        // Unknown type, then nothing: None.
        let mut other = b;
        other.0[size_of::<usize>() + 4..size_of::<usize>() + 8]
            .copy_from_slice(&libc::IP_TTL.to_ne_bytes());
        assert_eq!(parse(&other.0[..n]), None);
        // Unusable addresses.
        for ip in [
            v4([0, 0, 0, 0]),
            v4([224, 0, 0, 1]),
            v4([255, 255, 255, 255]),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            "ff02::1".parse().unwrap(),
            "::ffff:10.0.0.1".parse().unwrap(),
        ] {
            let n = build(ip, &mut b);
            assert_eq!(parse(&b.0[..n]), None, "{ip}");
        }
        // Random bytes: whatever they say, no panic and no read outside the slice.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut r = [0u8; CTRL_LEN];
            for byte in r.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            // Small lengths make a plausible cmsg_len likely.
            r[..size_of::<usize>()].copy_from_slice(&((x as usize) % 80).to_ne_bytes());
            let _ = parse(&r[..(x >> 20) as usize % (CTRL_LEN + 1)]);
        }
    }

    #[test]
    fn interface_addresses_include_loopback() {
        let ips = interface_addresses();
        assert!(ips.contains(&v4([127, 0, 0, 1])), "{ips:?}");
        assert!(ips.iter().all(|ip| !ip.is_unspecified()));
    }

    /// A second message after an unrelated one is still found.
    #[test]
    fn pktinfo_after_another_message_is_found() {
        let mut b = CtrlBuf::default();
        let n = build(v4([10, 9, 8, 7]), &mut b);
        let mut two = [0u8; 2 * CTRL_LEN];
        two[..n].copy_from_slice(&b.0[..n]);
        two[size_of::<usize>() + 4..size_of::<usize>() + 8]
            .copy_from_slice(&libc::IP_TTL.to_ne_bytes());
        two[n..2 * n].copy_from_slice(&b.0[..n]);
        assert_eq!(parse(&two[..2 * n]), Some(v4([10, 9, 8, 7])));
    }
}
