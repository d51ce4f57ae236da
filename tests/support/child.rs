//! The `ferroturn` binary as a child process on loopback: start it on a free port, collect
//! its stdout/stderr lines, send it signals, stop it (SIGTERM, then kill) on drop. Every wait
//! is bounded.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Ferroturn {
    child: Child,
    pub addr: SocketAddr,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

fn collect(r: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = lines.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines() {
            match l {
                Ok(l) => out.lock().unwrap().push(l),
                Err(_) => break,
            }
        }
    });
    lines
}

/// A UDP port that was free a moment ago (bind :0, release). The caller retries on a lost race.
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

impl Ferroturn {
    /// Start `ferroturn ARGS -L 127.0.0.1 -p <free port>` and wait (at most 10 s) until it
    /// logs that it started (a line containing `ready_marker`). Retries a lost port race.
    pub fn start(args: &[&str], ready_marker: &str) -> Ferroturn {
        Self::start_inner(args, None, &|out: &[String]| {
            out.iter().any(|l| l.contains(ready_marker))
        })
    }

    /// [`Ferroturn::start`] with a readiness check of the caller's (e.g. a log file).
    pub fn start_with(args: &[&str], ready: impl Fn() -> bool) -> Ferroturn {
        Self::start_inner(args, None, &|_: &[String]| ready())
    }

    /// [`Ferroturn::start`] with the soft open-file limit set to `soft_nofile` in the child.
    pub fn start_nofile(args: &[&str], ready_marker: &str, soft_nofile: u64) -> Ferroturn {
        Self::start_inner(args, Some(soft_nofile), &|out: &[String]| {
            out.iter().any(|l| l.contains(ready_marker))
        })
    }

    fn start_inner(
        args: &[&str],
        soft_nofile: Option<u64>,
        ready: &dyn Fn(&[String]) -> bool,
    ) -> Ferroturn {
        for _ in 0..10 {
            let port = free_port();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferroturn"));
            cmd.args(args)
                .args(["-L", "127.0.0.1", "-p", &port.to_string()])
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if let Some(n) = soft_nofile {
                use std::os::unix::process::CommandExt;
                // SAFETY: only getrlimit/setrlimit (async-signal-safe) between fork and exec.
                unsafe {
                    cmd.pre_exec(move || {
                        let mut r = libc::rlimit {
                            rlim_cur: 0,
                            rlim_max: 0,
                        };
                        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        r.rlim_cur = n.min(r.rlim_max);
                        if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
            let mut child = cmd.spawn().expect("spawn ferroturn");
            let stdout = collect(child.stdout.take().expect("stdout"));
            let stderr = collect(child.stderr.take().expect("stderr"));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if ready(&stdout.lock().unwrap()) {
                    return Ferroturn {
                        child,
                        addr: SocketAddr::from(([127, 0, 0, 1], port)),
                        stdout,
                        stderr,
                    };
                }
                if let Some(status) = child.try_wait().expect("try_wait") {
                    let err = stderr.lock().unwrap().join("\n");
                    if err.contains("in use") {
                        break; // lost the port race: next attempt
                    }
                    panic!("ferroturn exited with {status} before starting: {err}");
                }
                assert!(
                    Instant::now() < deadline,
                    "ferroturn did not start within 10 s; stdout: {:?}",
                    stdout.lock().unwrap()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("no free port after 10 attempts");
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Send `sig` to this child (by its PID).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's PID, which we have not reaped yet.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// Wait (bounded) until a stdout line satisfies `pred`; returns it.
    pub fn wait_line(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let end = Instant::now() + limit;
        loop {
            if let Some(l) = self.stdout.lock().unwrap().iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait (at most 10 s) for the exit; returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        self.signal(libc::SIGTERM);
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(100));
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("ferroturn did not stop within 10 s of SIGTERM");
    }
}

impl Drop for Ferroturn {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
