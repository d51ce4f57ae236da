//! Socket creation: SO_REUSEPORT listener groups (one socket per shard) and relay sockets.
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use super::shard::SocketOptions;

/// Raise the soft open-file limit (RLIMIT_NOFILE) to the hard one, as coturn does: every
/// allocation holds a relay socket (two if dual) and every TCP/TLS client a connection, and a
/// shell's soft limit is often 1024. Returns (before, after).
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = r.rlim_cur;
    if r.rlim_cur < r.rlim_max {
        r.rlim_cur = r.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((before, r.rlim_cur))
}

/// Descriptor-table slots reserved at start (see `presize_fd_table`): 8 bytes of kernel
/// memory each plus two bitmaps, ~520 KiB in all.
const FD_TABLE_AT_START: u64 = 65536;

/// Grow the process's descriptor table once, at start, to min(soft RLIMIT_NOFILE, 65 536)
/// slots; returns the slots asked for. The kernel doubles the table as descriptors are opened,
/// and in a multi-threaded process each doubling waits for an RCU grace period inside the
/// call that needed it (expand_fdtable → synchronize_rcu: 6-7 ms each on the benchmark VM).
/// A shard whose socket(2) got descriptor 256, 512, ... 4096 stalled that long with every
/// answer it owed: ~30 ms in the first 5000 allocations of a fresh server, p99 allocation
/// latency ~20 ms instead of ~2 ms. Done before the shards start. The table never shrinks,
/// so past this size the doublings (and their stalls) resume, one per doubling.
pub fn presize_fd_table() -> io::Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit on a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let want = r.rlim_cur.min(FD_TABLE_AT_START);
    if want < 2 {
        return Ok(0);
    }
    // Any descriptor will do; an epoll instance needs no file system (/dev may be private).
    // SAFETY: epoll_create1 has no memory arguments.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // F_DUPFD takes the lowest free descriptor >= the argument (below the soft limit, so
    // allowed), growing the table to hold it; both are closed at once, the table stays.
    // SAFETY: fcntl and close on descriptors this function opened and nothing else uses.
    let (dup, err) = unsafe {
        let dup = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, (want - 1) as libc::c_int);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if dup >= 0 {
            libc::close(dup);
        }
        (dup, err)
    };
    if dup < 0 {
        return Err(err);
    }
    Ok(want)
}

fn new_udp(addr: SocketAddr) -> io::Result<Socket> {
    // Non-blocking from socket(2) on (SOCK_NONBLOCK) where available: two fcntl calls fewer
    // per relay socket, i.e. per allocation.
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    let ty = Type::DGRAM.nonblocking();
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    let ty = Type::DGRAM;
    let s = Socket::new(Domain::for_address(addr), ty, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Keep IPv6 sockets IPv6-only: an IPv4 listener is configured separately.
        s.set_only_v6(true)?;
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Buffers are a request: the kernel caps them at net.core.{r,w}mem_max. Failure is not fatal.
fn set_buffers(s: &Socket, recv: usize, send: usize) {
    if recv > 0 {
        let _ = s.set_recv_buffer_size(recv);
    }
    if send > 0 {
        let _ = s.set_send_buffer_size(send);
    }
}

/// Bind `n` UDP sockets to `addr` in one SO_REUSEPORT group, one per shard. The kernel hashes
/// each client's 4-tuple to one of them, so a client always reaches the same shard.
///
/// A plain bind is tried first: SO_REUSEPORT would otherwise silently share the port with
/// another process that also set it (a second server instance), splitting its traffic.
pub fn bind_listener_group(
    addr: SocketAddr,
    n: usize,
    recv_buf: usize,
    send_buf: usize,
) -> io::Result<Vec<UdpSocket>> {
    let mut addr = addr;
    if addr.port() != 0 {
        drop(UdpSocket::bind(addr)?);
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let s = new_udp(addr)?;
        s.set_reuse_port(true)?;
        set_buffers(&s, recv_buf, send_buf);
        if addr.ip().is_unspecified() {
            // Replies leave from the address each client used (see `pktinfo`).
            use std::os::fd::AsRawFd;
            super::pktinfo::enable(s.as_raw_fd(), addr.is_ipv6())?;
        }
        s.bind(&addr.into())?;
        if addr.port() == 0 {
            // Ephemeral port (tests): the rest of the group joins the port the first one got.
            addr = s
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("not an inet socket"))?;
        }
        out.push(s.into());
    }
    Ok(out)
}

/// Bind `n` TCP listeners to `addr` in one SO_REUSEPORT group: the kernel spreads incoming
/// connections over the shards. As for UDP, a plain bind first detects another server.
pub fn bind_tcp_listener_group(addr: SocketAddr, n: usize) -> io::Result<Vec<TcpListener>> {
    let mut addr = addr;
    if addr.port() != 0 {
        drop(TcpListener::bind(addr)?);
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let s = tcp_socket(addr)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        if addr.port() == 0 {
            addr = s
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("not an inet socket"))?;
        }
        out.push(s.into());
    }
    Ok(out)
}

/// RFC 6062: the TCP relayed transport address. SO_REUSEADDR and SO_REUSEPORT because Connect
/// opens outgoing connections from this same address (§5.2), which Linux only allows when both
/// sockets set them. Our port pool keeps other allocations off the port.
pub fn bind_tcp_relay_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = tcp_socket(addr)?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    Ok(s.into())
}

/// RFC 6062 §5.2: a non-blocking connect to `peer` from the relayed address `from`.
pub fn connect_from(from: SocketAddr, peer: SocketAddr) -> io::Result<std::net::TcpStream> {
    let s = tcp_socket(from)?;
    s.bind(&from.into())?;
    match s.connect(&peer.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(s.into())
}

fn tcp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// A relay socket on `addr`. No SO_REUSEPORT: a port held by anything else must fail, so the
/// engine picks another. DONT-FRAGMENT (RFC 8656 §14.8) maps to IP_MTU_DISCOVER = IP_PMTUDISC_DO.
pub fn bind_relay_socket(
    addr: SocketAddr,
    dont_fragment: bool,
    opts: SocketOptions,
) -> io::Result<UdpSocket> {
    let s = new_udp(addr)?;
    set_buffers(&s, opts.recv_buffer, opts.send_buffer);
    if dont_fragment {
        set_dont_fragment(&s, addr.is_ipv6())?;
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

#[cfg(target_os = "linux")]
fn set_dont_fragment(s: &Socket, v6: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (level, name, val) = if v6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    };
    // SAFETY: a valid fd and a c_int option value of the right size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            &val as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_dont_fragment(_s: &Socket, _v6: bool) -> io::Result<()> {
    Ok(())
}
