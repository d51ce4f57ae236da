//! `proc-user` / `proc-group` (coturn's names): give up root once every listening socket is
//! bound and the TLS files have been read. For setups without systemd; the systemd unit runs
//! as a dynamic user from the start and needs none of this.
use std::ffi::CString;
use std::fmt;

/// Why the privilege drop failed (startup is aborted: running as root by accident is worse
/// than not running).
#[derive(Debug)]
pub struct DropError(String);

impl fmt::Display for DropError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(msg: String) -> DropError {
    DropError(msg)
}

/// (uid, primary gid) of a user name or numeric id.
fn lookup_user(name: &str) -> Result<(libc::uid_t, libc::gid_t), DropError> {
    let c = CString::new(name).map_err(|_| err(format!("proc-user {name:?}: bad name")))?;
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; `buf` outlives every use of `pw`.
    let rc =
        unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc == 0 && !out.is_null() {
        return Ok((pw.pw_uid, pw.pw_gid));
    }
    if let Ok(uid) = name.parse::<libc::uid_t>() {
        // A numeric id without a passwd entry: its group is the same number.
        return Ok((uid, uid as libc::gid_t));
    }
    Err(err(format!("proc-user {name:?}: no such user")))
}

fn lookup_group(name: &str) -> Result<libc::gid_t, DropError> {
    let c = CString::new(name).map_err(|_| err(format!("proc-group {name:?}: bad name")))?;
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in lookup_user.
    let rc =
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc == 0 && !out.is_null() {
        return Ok(gr.gr_gid);
    }
    name.parse::<libc::gid_t>()
        .map_err(|_| err(format!("proc-group {name:?}: no such group")))
}

/// Switch to `user` / `group`: supplementary groups cleared, then the group, then the user
/// (in that order: after setuid there is no right left to change groups). glibc applies each
/// call to every thread of the process. Returns the (uid, gid) now in effect.
pub fn drop_privileges(
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Option<(u32, u32)>, DropError> {
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let (uid, user_gid) = match user {
        Some(u) => {
            let (uid, gid) = lookup_user(u)?;
            (Some(uid), Some(gid))
        }
        None => (None, None),
    };
    let gid = match group {
        Some(g) => Some(lookup_group(g)?),
        None => user_gid,
    };
    // SAFETY: plain system calls on integers.
    unsafe {
        if let Some(gid) = gid {
            if libc::setgroups(0, std::ptr::null()) != 0 {
                return Err(err(format!(
                    "setgroups: {}",
                    std::io::Error::last_os_error()
                )));
            }
            if libc::setgid(gid) != 0 {
                return Err(err(format!(
                    "setgid({gid}): {}",
                    std::io::Error::last_os_error()
                )));
            }
        }
        if let Some(uid) = uid {
            if libc::setuid(uid) != 0 {
                return Err(err(format!(
                    "setuid({uid}): {}",
                    std::io::Error::last_os_error()
                )));
            }
            // A dropped root must not be able to come back.
            if uid != 0 && libc::setuid(0) == 0 {
                return Err(err("setuid(0) still works after the drop".to_owned()));
            }
        }
        Ok(Some((libc::getuid(), libc::getgid())))
    }
}

/// Running as root without `proc-user`: allowed (some setups need it), but worth a warning.
pub fn running_as_root() -> bool {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() == 0 }
}
