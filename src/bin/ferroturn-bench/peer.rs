//! The built-in UDP echo peer (like coturn's turnutils_peer): every datagram goes back to its
//! sender, here the client's relayed address, so the server relays it back to the client.
//! One thread, recvmmsg + sendmmsg in batches of 64.
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::conn::set_buffers;
use crate::mmsg::Batch;

pub struct EchoPeer {
    pub addr: SocketAddr,
    pub echoed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoPeer {
    pub fn start(bind: SocketAddr, sock_buf: usize) -> io::Result<EchoPeer> {
        let s = UdpSocket::bind(bind)
            .map_err(|e| io::Error::new(e.kind(), format!("echo peer bind {bind}: {e}")))?;
        set_buffers(s.as_raw_fd(), sock_buf.max(4 << 20));
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = s.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicU64::new(0));
        let (stop2, echoed2) = (stop.clone(), echoed.clone());
        let thread = std::thread::Builder::new()
            .name("bench-peer".into())
            .spawn(move || {
                let mut b = Batch::new(64, 16 * 1024 + 64, true);
                let fd = s.as_raw_fd();
                let mut n_local = 0u64;
                while !stop2.load(Ordering::Relaxed) {
                    let n = match b.recv(fd, true) {
                        Ok(n) => n,
                        Err(e) => {
                            if e.kind() != io::ErrorKind::TimedOut
                                && e.kind() != io::ErrorKind::Interrupted
                                && e.kind() != io::ErrorKind::ConnectionRefused
                            {
                                eprintln!("ferroturn-bench: echo peer: {e}");
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            0
                        }
                    };
                    if n > 0 {
                        let _ = b.echo(fd, n);
                        n_local += n as u64;
                        if n_local >= 1024 {
                            echoed2.fetch_add(n_local, Ordering::Relaxed);
                            n_local = 0;
                        }
                    }
                }
                echoed2.fetch_add(n_local, Ordering::Relaxed);
            })?;
        Ok(EchoPeer {
            addr,
            echoed,
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.stop();
    }
}
