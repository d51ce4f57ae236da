//! One client's connection to the TURN server: a connected UDP socket, or a TCP or TLS stream
//! with STUN / ChannelData framing (RFC 8656 §12.5: over a stream, ChannelData is padded to a
//! multiple of 4 bytes). All sockets are non-blocking once connected; the callers poll.
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Udp,
    Tcp,
    /// TURN over TLS (`turns:`, RFC 8656 §3.1), TLS 1.2/1.3, ALPN "stun.turn" (RFC 7443).
    Tls,
}

/// The TLS client settings for `--transport tls`, set once by main before any connection.
pub static TLS: OnceLock<(Arc<ClientConfig>, ServerName<'static>)> = OnceLock::new();

/// Bytes buffered for a TCP send before further packets are dropped (counted as local drops).
const TCP_WBUF_LIMIT: usize = 1 << 20;

pub enum Conn {
    Udp(UdpSocket),
    Tcp(TcpConn),
}

/// A stream to the server: plain TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.sock,
        }
    }

    /// TLS records rustls holds that the socket has not taken yet.
    fn tls_pending(&self) -> bool {
        matches!(self, Stream::Tls(t) if t.conn.wants_write())
    }
}

/// TLS by hand rather than through `rustls::Stream`: its `write` may also read from the socket
/// (to finish pending I/O), which would take replies off the socket without the worker, who
/// reads only on epoll readiness, ever seeing them. Here writes only write, reads only read.
impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(b),
            Stream::Tls(t) => loop {
                match t.conn.reader().read(b) {
                    // Ok(0): close_notify; Err(UnexpectedEof): closed without it
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    r => return r,
                }
                // No plaintext buffered: take records off the socket (WouldBlock ends it).
                if t.conn.read_tls(&mut t.sock)? == 0 {
                    return Ok(0);
                }
                t.conn
                    .process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            },
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(b),
            Stream::Tls(t) => {
                // Accepted plaintext becomes records in rustls (up to its buffer limit; a short
                // count leaves the rest to the caller's buffer); push what the socket takes.
                let n = t.conn.writer().write(b)?;
                while t.conn.wants_write() {
                    match t.conn.write_tls(&mut t.sock) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                Ok(n)
            }
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write_vectored(bufs),
            // One record for frame + padding, not one each.
            Stream::Tls(_) => {
                let total: usize = bufs.iter().map(|b| b.len()).sum();
                let mut small = [0u8; 2048];
                let mut big = Vec::new();
                let joined: &mut [u8] = if total <= small.len() {
                    &mut small[..total]
                } else {
                    big.resize(total, 0);
                    &mut big
                };
                let mut at = 0;
                for b in bufs {
                    joined[at..at + b.len()].copy_from_slice(b);
                    at += b.len();
                }
                self.write(joined)
            }
        }
    }

    /// TLS: push rustls's pending records to the socket (WouldBlock if it cannot take them).
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(t) => {
                while t.conn.wants_write() {
                    t.conn.write_tls(&mut t.sock)?;
                }
                Ok(())
            }
        }
    }
}

pub struct TcpConn {
    s: Stream,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    wbuf: Vec<u8>,
    wpos: usize,
}

/// Set a socket buffer size; as root, past the sysctl cap (SO_*BUFFORCE), else capped.
pub fn set_buffers(fd: RawFd, bytes: usize) {
    if bytes == 0 {
        return;
    }
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        // SAFETY: setsockopt with a pointer to a c_int of the right size.
        unsafe {
            let p = &v as *const libc::c_int as *const libc::c_void;
            let l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            if libc::setsockopt(fd, libc::SOL_SOCKET, force, p, l) != 0 {
                libc::setsockopt(fd, libc::SOL_SOCKET, plain, p, l);
            }
        }
    }
}

/// Length of the first complete frame in a stream buffer, `Err` if the stream is not framed
/// as STUN / ChannelData (desynchronised).
fn frame_len(b: &[u8]) -> Result<Option<usize>, ()> {
    if b.len() < 4 {
        return Ok(None);
    }
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    let total = match b[0] {
        0..=3 => 20 + len,
        0x40..=0x7f => 4 + ((len + 3) & !3),
        _ => return Err(()),
    };
    Ok((b.len() >= total).then_some(total))
}

impl Conn {
    pub fn open(
        transport: Transport,
        server: SocketAddr,
        sock_buf: usize,
        timeout: Duration,
    ) -> io::Result<Conn> {
        match transport {
            Transport::Udp => {
                let bind: SocketAddr = if server.is_ipv4() {
                    "0.0.0.0:0".parse().expect("addr")
                } else {
                    "[::]:0".parse().expect("addr")
                };
                let s = UdpSocket::bind(bind)?;
                set_buffers(s.as_raw_fd(), sock_buf);
                s.connect(server)?;
                s.set_nonblocking(true)?;
                Ok(Conn::Udp(s))
            }
            Transport::Tcp | Transport::Tls => {
                let s = TcpStream::connect_timeout(&server, timeout).map_err(|e| {
                    if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock
                    {
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("TCP connect to {server}: no answer within {timeout:?}"),
                        )
                    } else {
                        io::Error::new(e.kind(), format!("TCP connect to {server}: {e}"))
                    }
                })?;
                set_buffers(s.as_raw_fd(), sock_buf);
                s.set_nodelay(true)?;
                let s = if transport == Transport::Tls {
                    Stream::Tls(Box::new(tls_handshake(s, server, timeout)?))
                } else {
                    Stream::Plain(s)
                };
                s.tcp().set_nonblocking(true)?;
                Ok(Conn::Tcp(TcpConn {
                    s,
                    rbuf: vec![0u8; 128 * 1024],
                    rstart: 0,
                    rend: 0,
                    wbuf: Vec::new(),
                    wpos: 0,
                }))
            }
        }
    }

    pub fn fd(&self) -> RawFd {
        match self {
            Conn::Udp(s) => s.as_raw_fd(),
            Conn::Tcp(t) => t.s.tcp().as_raw_fd(),
        }
    }

    /// Datagrams the kernel dropped at this UDP socket over its life (receive buffer full):
    /// loss that is the client's, not the server's. None for streams or when unknown.
    pub fn udp_drops(&self) -> Option<u64> {
        match self {
            Conn::Udp(s) => socket_drops(s.as_raw_fd()),
            Conn::Tcp(_) => None,
        }
    }

    pub fn is_stream(&self) -> bool {
        matches!(self, Conn::Tcp(_))
    }

    /// Send one frame. `Ok(true)` = sent (or queued on a stream), `Ok(false)` = dropped
    /// locally because the socket buffer is full.
    pub fn send(&mut self, frame: &[u8]) -> io::Result<bool> {
        match self {
            Conn::Udp(s) => match s.send(frame) {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                Err(e) => Err(e),
            },
            Conn::Tcp(t) => t.send(frame),
        }
    }

    /// For streams: try to write buffered bytes. True if bytes remain buffered.
    pub fn flush(&mut self) -> io::Result<bool> {
        match self {
            Conn::Udp(_) => Ok(false),
            Conn::Tcp(t) => t.flush_pending(),
        }
    }

    pub fn has_pending(&self) -> bool {
        match self {
            Conn::Udp(_) => false,
            Conn::Tcp(t) => t.wpos < t.wbuf.len() || t.s.tls_pending(),
        }
    }

    /// UDP: receive one datagram into `buf`; `Ok(None)` when none is waiting. A response is
    /// one datagram, so the control driver reads until one answers its transaction (at most
    /// 64 per readiness), not until EAGAIN.
    /// Streams: not used (`Ok(None)`).
    pub fn recv_one(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self {
            Conn::Udp(s) => match s.recv(buf) {
                Ok(len) => Ok(Some(len)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            },
            Conn::Tcp(_) => Ok(None),
        }
    }

    /// Read what is available and hand each frame to `f`. UDP: one datagram per call of
    /// `recv` (batched receiving lives in the worker); streams: every complete frame.
    /// Returns the number of frames; `Err` on a socket error or a closed/desynchronised stream.
    pub fn recv_frames(
        &mut self,
        scratch: &mut [u8],
        mut f: impl FnMut(&[u8]),
    ) -> io::Result<usize> {
        match self {
            Conn::Udp(s) => {
                let mut n = 0;
                loop {
                    match s.recv(scratch) {
                        Ok(len) => {
                            f(&scratch[..len]);
                            n += 1;
                            if n >= 256 {
                                return Ok(n);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(n),
                        Err(e) => return Err(e),
                    }
                }
            }
            Conn::Tcp(t) => t.recv_frames(f),
        }
    }
}

impl TcpConn {
    fn send(&mut self, frame: &[u8]) -> io::Result<bool> {
        // Stream framing: ChannelData padded to 4 bytes (§12.5). STUN is always a multiple of 4.
        let pad = if (0x40..=0x7f).contains(&frame[0]) {
            (4 - frame.len() % 4) % 4
        } else {
            0
        };
        if self.wpos < self.wbuf.len() {
            if self.wbuf.len() - self.wpos + frame.len() > TCP_WBUF_LIMIT {
                return Ok(false);
            }
            self.wbuf.extend_from_slice(frame);
            self.wbuf.extend_from_slice(&[0u8; 3][..pad]);
            self.flush_pending()?;
            return Ok(true);
        }
        let written = if pad == 0 {
            match self.s.write(frame) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            }
        } else {
            let bufs = [io::IoSlice::new(frame), io::IoSlice::new(&[0u8; 3][..pad])];
            match self.s.write_vectored(&bufs) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            }
        };
        let total = frame.len() + pad;
        if written < total {
            self.wbuf.clear();
            self.wpos = 0;
            if written < frame.len() {
                self.wbuf.extend_from_slice(&frame[written..]);
                self.wbuf.extend_from_slice(&[0u8; 3][..pad]);
            } else {
                self.wbuf.extend_from_slice(&[0u8; 3][..total - written]);
            }
        }
        Ok(true)
    }

    fn flush_pending(&mut self) -> io::Result<bool> {
        while self.wpos < self.wbuf.len() {
            match self.s.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "stream closed")),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        match self.s.flush() {
            Ok(()) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(e),
        }
    }

    fn recv_frames(&mut self, mut f: impl FnMut(&[u8])) -> io::Result<usize> {
        let mut n = 0;
        loop {
            if self.rend == self.rbuf.len() {
                // compact
                self.rbuf.copy_within(self.rstart..self.rend, 0);
                self.rend -= self.rstart;
                self.rstart = 0;
            }
            let got = match self.s.read(&mut self.rbuf[self.rend..]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "server closed the stream",
                    ))
                }
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            };
            self.rend += got;
            loop {
                match frame_len(&self.rbuf[self.rstart..self.rend]) {
                    Ok(Some(len)) => {
                        f(&self.rbuf[self.rstart..self.rstart + len]);
                        self.rstart += len;
                        n += 1;
                    }
                    Ok(None) => break,
                    Err(()) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "stream is not STUN/ChannelData framed",
                        ))
                    }
                }
            }
            if self.rstart == self.rend {
                self.rstart = 0;
                self.rend = 0;
            }
            if got == 0 {
                return Ok(n);
            }
        }
    }
}

/// The TLS handshake, blocking (bounded by `timeout`), before the socket turns non-blocking.
fn tls_handshake(
    s: TcpStream,
    server: SocketAddr,
    timeout: Duration,
) -> io::Result<StreamOwned<ClientConnection, TcpStream>> {
    let (cfg, name) = TLS
        .get()
        .ok_or_else(|| io::Error::other("TLS is not configured"))?;
    let mut conn = ClientConnection::new(cfg.clone(), name.clone())
        .map_err(|e| io::Error::other(format!("TLS to {server}: {e}")))?;
    let mut s = s;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut s).map_err(|e| {
            let what = if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                format!("no answer within {timeout:?}")
            } else {
                e.to_string()
            };
            io::Error::new(e.kind(), format!("TLS handshake with {server}: {what}"))
        })?;
    }
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    Ok(StreamOwned::new(conn, s))
}

/// `SO_MEMINFO`'s drop count of a socket (Linux >= 4.6).
pub fn socket_drops(fd: RawFd) -> Option<u64> {
    let mut m = [0u32; 16];
    let mut len = std::mem::size_of_val(&m) as libc::socklen_t;
    // SAFETY: `m` is writable for `len` bytes; the kernel writes at most that.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            m.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let i = libc::SK_MEMINFO_DROPS as usize;
    (r == 0 && len as usize > i * 4).then(|| u64::from(m[i]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_receive_drops_are_counted() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&rx)
            .set_recv_buffer_size(4096)
            .unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(Conn::Udp(rx.try_clone().unwrap()).udp_drops(), Some(0));
        for _ in 0..200 {
            tx.send_to(&[7u8; 200], rx.local_addr().unwrap()).unwrap();
        }
        let drops = Conn::Udp(rx).udp_drops().unwrap();
        assert!(drops > 100, "{drops} of 200 unread datagrams dropped");
    }

    #[test]
    fn stream_framing() {
        assert_eq!(frame_len(&[0x40, 0, 0]), Ok(None));
        assert_eq!(frame_len(&[0x40, 0, 0, 5, 1, 2, 3, 4, 5, 0, 0]), Ok(None));
        assert_eq!(
            frame_len(&[0x40, 0, 0, 5, 1, 2, 3, 4, 5, 0, 0, 0]),
            Ok(Some(12))
        );
        let mut stun = vec![0x01, 0x01, 0, 4];
        stun.extend_from_slice(&[0u8; 20]);
        assert_eq!(frame_len(&stun), Ok(Some(24)));
        assert_eq!(frame_len(&[0x80, 0, 0, 0]), Err(()));
    }
}
