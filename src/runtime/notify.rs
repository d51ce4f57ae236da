//! systemd's notification protocol (sd_notify(3)) without libsystemd: one datagram per state
//! change to the socket named by $NOTIFY_SOCKET. A no-op when not started by systemd.
use std::os::unix::net::UnixDatagram;

/// Send `state` (e.g. "READY=1", "STATUS=..."); errors are ignored (the service still runs).
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        // Abstract namespace socket (Linux): leading NUL instead of '@'.
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            if let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name) {
                let _ = sock.send_to_addr(state.as_bytes(), &addr);
            }
        }
    } else {
        let _ = sock.send_to(state.as_bytes(), std::path::Path::new(&path));
    }
}

/// The watchdog period systemd asked for (WATCHDOG_USEC), if any and meant for this process.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    // Ping at half the period, as sd_watchdog_enabled(3) recommends; never a zero period (a
    // WATCHDOG_USEC of 0 or 1 would make the ping timer panic).
    Some(std::time::Duration::from_micros((usec / 2).max(1000)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_notify_socket() {
        let dir = std::env::temp_dir().join(format!("ferroturn-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        // The variable is process-wide; this is the only test that sets it.
        std::env::set_var("NOTIFY_SOCKET", &path);
        notify("READY=1\nSTATUS=serving");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut b = [0u8; 64];
        let n = rx.recv(&mut b).unwrap();
        assert_eq!(&b[..n], b"READY=1\nSTATUS=serving");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
