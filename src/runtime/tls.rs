//! TLS for `turns:` (RFC 8656 §3.1, RFC 7443 ALPN "stun.turn"), with certificate hot reload:
//! the certificate and key are re-read when either file changes on disk (checked every 250 ms:
//! modification and change time, inode, size) or on SIGHUP. New handshakes get the new pair;
//! established connections keep theirs. A file that does not load (half-written, wrong key) is
//! logged and the previous pair kept.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::crypto::ring::default_provider;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// RFC 7443: the ALPN protocol id for TURN.
pub const ALPN_STUN_TURN: &[u8] = b"stun.turn";

#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// [`Stamp`]s of (cert, key) when last loaded.
    loaded: Mutex<(Option<Stamp>, Option<Stamp>)>,
}

/// What says a file changed: its modification time alone misses a file replaced by one with a
/// preserved time (`cp -p`, `rsync -t`, an unpacked archive); the change time, inode and size
/// cannot be set back that way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime: Option<SystemTime>,
    ctime: (i64, i64),
    dev: u64,
    ino: u64,
    len: u64,
}

fn stamp(p: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some(Stamp {
        mtime: m.modified().ok(),
        ctime: (m.ctime(), m.ctime_nsec()),
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
    })
}

fn load_pair(
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| format!("cert {}: {e}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cert {}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "cert {}: no certificate in the file",
            cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("pkey {}: {e}", key_path.display()))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("pkey {}: {e}", key_path.display()))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| {
        format!(
            "pkey {} does not match cert {}: {e}",
            key_path.display(),
            cert_path.display()
        )
    })?;
    Ok(ck)
}

impl CertStore {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, String> {
        let provider = Arc::new(default_provider());
        let (cm, km) = (stamp(cert_path), stamp(key_path));
        let ck = load_pair(&provider, cert_path, key_path)?;
        Ok(Arc::new(CertStore {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(ck)),
            loaded: Mutex::new((cm, km)),
        }))
    }

    /// Re-read the pair now (SIGHUP). On error the current pair stays.
    pub fn reload(&self) -> Result<(), String> {
        let (cm, km) = (stamp(&self.cert_path), stamp(&self.key_path));
        let ck = load_pair(&self.provider, &self.cert_path, &self.key_path)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ck);
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = (cm, km);
        Ok(())
    }

    /// Reload if either file changed ([`Stamp`]) since the last load. `Ok(true)` when
    /// a new pair is in use. A failed load is not retried until the files change again.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = (stamp(&self.cert_path), stamp(&self.key_path));
        {
            let mut last = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            if *last == now {
                return Ok(false);
            }
            *last = now;
        }
        let ck = load_pair(&self.provider, &self.cert_path, &self.key_path)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ck);
        Ok(true)
    }

    pub fn paths(&self) -> (&Path, &Path) {
        (&self.cert_path, &self.key_path)
    }

    /// The rustls server configuration: TLS 1.2 and 1.3, ALPN "stun.turn", certificates from
    /// this store.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, String> {
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![ALPN_STUN_TURN.to_vec()];
        Ok(Arc::new(cfg))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}
