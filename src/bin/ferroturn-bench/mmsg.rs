//! Batched datagram I/O: recvmmsg / sendmmsg over fixed slot buffers (one system call for
//! up to `n` datagrams). The structures hold raw pointers into their own heap buffers, so
//! they are built inside the thread that uses them and never resized.
use std::io;
use std::os::fd::RawFd;

pub struct Batch {
    slot: usize,
    n: usize,
    bufs: Vec<u8>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    hdrs: Vec<libc::mmsghdr>,
    with_names: bool,
}

impl Batch {
    pub fn new(n: usize, slot: usize, with_names: bool) -> Batch {
        let mut b = Batch {
            slot,
            n,
            bufs: vec![0u8; n * slot],
            // SAFETY: iovec, sockaddr_storage and mmsghdr are plain C structs; all-zero is valid.
            iovs: vec![unsafe { std::mem::zeroed() }; n],
            names: vec![unsafe { std::mem::zeroed() }; n],
            hdrs: vec![unsafe { std::mem::zeroed() }; n],
            with_names,
        };
        for i in 0..n {
            b.iovs[i].iov_base = b.bufs[i * slot..].as_mut_ptr() as *mut libc::c_void;
            b.iovs[i].iov_len = slot;
            let h = &mut b.hdrs[i].msg_hdr;
            h.msg_iov = &mut b.iovs[i];
            h.msg_iovlen = 1;
            if with_names {
                h.msg_name = &mut b.names[i] as *mut _ as *mut libc::c_void;
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            }
        }
        b
    }

    pub fn capacity(&self) -> usize {
        self.n
    }

    /// Receive up to `capacity()` datagrams without blocking (Ok(0) = nothing there), or
    /// waiting for the first one when `block` (the socket's SO_RCVTIMEO applies).
    pub fn recv(&mut self, fd: RawFd, block: bool) -> io::Result<usize> {
        for i in 0..self.n {
            self.iovs[i].iov_len = self.slot;
            if self.with_names {
                self.hdrs[i].msg_hdr.msg_namelen =
                    std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            }
        }
        let flags = if block {
            libc::MSG_WAITFORONE
        } else {
            libc::MSG_DONTWAIT
        };
        // SAFETY: hdrs/iovs/names point into buffers owned by self, sized as declared.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.n as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(r as usize)
    }

    /// Datagram `i` of the last `recv`.
    pub fn get(&self, i: usize) -> &[u8] {
        let len = (self.hdrs[i].msg_len as usize).min(self.slot);
        &self.bufs[i * self.slot..i * self.slot + len]
    }

    /// Slot `i` for filling before `send`.
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.bufs[i * self.slot..(i + 1) * self.slot]
    }

    /// Send slots `0..count` with the given lengths (to their stored names when the batch has
    /// names: as received, i.e. an echo). Returns how many went out (the rest hit a full
    /// socket buffer or an error).
    pub fn send(&mut self, fd: RawFd, lens: &[usize]) -> io::Result<usize> {
        let count = lens.len().min(self.n);
        for (i, &l) in lens.iter().enumerate().take(count) {
            self.iovs[i].iov_len = l.min(self.slot);
        }
        self.send_prepared(fd, 0, count)
    }

    /// Echo datagrams `0..count` of the last `recv` back to their senders.
    pub fn echo(&mut self, fd: RawFd, count: usize) -> io::Result<usize> {
        for i in 0..count {
            self.iovs[i].iov_len = self.hdrs[i].msg_len as usize;
        }
        self.send_prepared(fd, 0, count)
    }

    /// sendmmsg over `from..count`; a datagram the kernel refuses (e.g. ICMP-refused
    /// destination) is skipped, a full buffer stops the batch. Returns how many went out.
    fn send_prepared(&mut self, fd: RawFd, mut from: usize, count: usize) -> io::Result<usize> {
        let mut sent = 0;
        while from < count {
            // SAFETY: as in recv.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[from..].as_mut_ptr(),
                    (count - from) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                sent += r as usize;
                from += r as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            if r == 0 || e.kind() == io::ErrorKind::WouldBlock {
                break;
            }
            from += 1;
        }
        Ok(sent)
    }
}
