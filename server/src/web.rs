//! WebTransport: browsers reach the server on the same UDP port as native clients.
//!
//! A browser cannot open a raw QUIC connection, but it speaks WebTransport (HTTP/3 over
//! QUIC). The server's one QUIC endpoint offers two ALPNs: rekord's own
//! ([`rekord::net::ALPN`]) and `h3`. A connection that negotiated `h3` becomes a WebTransport
//! session (`accept`): its `Origin` is checked against [`Web::origins`], and its first
//! bidirectional stream then carries exactly the frames a native connection's stream
//! carries, under the same handshake and the same rules.
//!
//! **Certificates.** Chromium accepts a self-signed server certificate only through
//! `serverCertificateHashes`, and only an ECDSA P-256 certificate valid for less than 14
//! days. So `h3` connections present a *WebTransport certificate* ([`WebCerts`]) of
//! [`CERT_DAYS`] days that the server rotates, while `rekord/1` connections keep presenting
//! the long-term identity native clients pin (rustls picks by ALPN: `Resolver`). See
//! `docs/browser-trust.md` for how a browser replica learns the hashes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quinn::rustls;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::ServerError;
use crate::identity::Identity;

/// How long a WebTransport certificate is valid (Chromium takes at most 14 days).
pub const CERT_DAYS: u64 = 10;

/// The next certificate is made when the current one has this many days left.
pub const NEXT_AT_DAYS_LEFT: u64 = 5;

/// The next certificate becomes the one presented when the current one has this many days
/// left (a replica that learned both hashes keeps connecting across the switch).
pub const SWITCH_AT_DAYS_LEFT: u64 = 2;

/// How often the serving server checks whether a rotation is due.
pub const ROTATION_CHECK: Duration = Duration::from_secs(3600);

const DAY: u64 = 24 * 3600;

/// The `[web]` table of the configuration: who may open WebTransport sessions, and
/// optionally a certificate from a public certificate authority to present to them.
///
/// ```toml
/// [web]
/// origins = ["https://app.example.com", "http://127.0.0.1:8080"]
/// # Optional: browsers then validate the server by WebPKI, with no certificate hashes.
/// certificate = "/etc/letsencrypt/live/sync.example.com/fullchain.pem"
/// key = "/etc/letsencrypt/live/sync.example.com/privkey.pem"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Web {
    /// The page origins (`scheme://host[:port]`, as browsers send them in `Origin`) whose
    /// pages may open WebTransport sessions. Empty (the default): browsers are refused, and
    /// the log says which origin to add. `"*"` allows every origin (tokens still apply). A
    /// session without an `Origin` header does not come from a browser page and is not
    /// checked (it could claim any origin anyway).
    pub origins: Vec<String>,
    /// A certificate chain from a public certificate authority (PEM, the server's
    /// certificate first), presented to WebTransport connections instead of the rotating
    /// self-signed certificate: browsers validate it by WebPKI, and the server announces
    /// no certificate hashes. The server's identity is still proven by its long-term key
    /// (the signed announcement and the UUID), so a CA-issued impostor is refused.
    pub certificate: Option<PathBuf>,
    /// The private key of [`Web::certificate`] (PEM: PKCS#8, SEC1 or PKCS#1).
    pub key: Option<PathBuf>,
}

/// Logs when the public certificate `der` (from `path`) has expired, or expires within two
/// weeks: browsers refuse an expired one, and a renewal is read only at the hourly check
/// or `rotate-web-certificate`.
fn warn_expiry(path: &Path, der: &[u8]) {
    use x509_cert::der::Decode as _;
    let Ok(cert) = x509_cert::Certificate::from_der(der) else {
        tracing::warn!(certificate = %path.display(), "cannot read the public certificate's validity");
        return;
    };
    let not_after = cert
        .tbs_certificate
        .validity
        .not_after
        .to_unix_duration()
        .as_secs();
    let now = unix_now();
    if not_after <= now {
        tracing::error!(
            certificate = %path.display(),
            "the public WebTransport certificate has expired: browsers refuse every session; renew it (read again hourly and by rotate-web-certificate)"
        );
    } else if not_after - now < 14 * DAY {
        tracing::warn!(
            certificate = %path.display(),
            days_left = (not_after - now) / DAY,
            "the public WebTransport certificate expires soon; renew it (read again hourly and by rotate-web-certificate)"
        );
    }
}

impl Web {
    /// The public certificate and its key ([`Web::certificate`]), loaded and checked; `None`
    /// when none is configured.
    pub fn public_certificate(&self) -> Result<Option<Arc<CertifiedKey>>, ServerError> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let (Some(cert), Some(key)) = (&self.certificate, &self.key) else {
            return Ok(None);
        };
        let bad = |path: &Path, what: String| {
            ServerError::Config(format!(
                "web.certificate/web.key: {}: {what}",
                path.display()
            ))
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| bad(cert, format!("not a readable PEM certificate chain ({e})")))?;
        if chain.is_empty() {
            return Err(bad(cert, "no certificate in it".into()));
        }
        let private = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| bad(key, format!("not a readable PEM private key ({e})")))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&private)
            .map_err(|e| bad(key, format!("unusable key: {e}")))?;
        warn_expiry(cert, &chain[0]);
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|e| {
            bad(
                key,
                format!("the key does not belong to the certificate ({e})"),
            )
        })?;
        Ok(Some(Arc::new(certified)))
    }

    /// Checks the origins' shape (`scheme://host[:port]`, no path, or `*`), and that a
    /// certificate comes with its key.
    pub fn validate(&self) -> Result<(), ServerError> {
        if self.certificate.is_some() != self.key.is_some() {
            return Err(ServerError::Config(
                "web.certificate and web.key go together: give both, or neither".into(),
            ));
        }
        for origin in &self.origins {
            if origin == "*" {
                continue;
            }
            let Some((scheme, rest)) = origin.split_once("://") else {
                return Err(ServerError::Config(format!(
                    "web.origins: `{origin}` is not an origin like `https://app.example.com`"
                )));
            };
            if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains('/') {
                return Err(ServerError::Config(format!(
                    "web.origins: `{origin}` is not an origin like `https://app.example.com` \
                     (http or https, a host, an optional port, no path)"
                )));
            }
        }
        Ok(())
    }

    /// Whether a session whose request carries `origin` may go on.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(origin) => {
                let origin = normal_origin(origin);
                self.origins
                    .iter()
                    .any(|o| o == "*" || normal_origin(o) == origin)
            }
        }
    }
}

/// An origin as browsers send it: lower case, no trailing slash, no default port
/// (`https://app.example:443` is sent as `https://app.example`).
fn normal_origin(origin: &str) -> String {
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    for (scheme, port) in [("https://", ":443"), ("http://", ":80")] {
        if origin.starts_with(scheme)
            && let Some(bare) = origin.strip_suffix(port)
        {
            return bare.to_owned();
        }
    }
    origin
}

/// One WebTransport certificate: ECDSA P-256, self-signed, valid [`CERT_DAYS`] days.
#[derive(Clone)]
pub struct WebCert {
    /// The certificate (DER).
    pub cert_der: Vec<u8>,
    key_der: Vec<u8>,
    /// When it expires (seconds since the Unix epoch).
    pub not_after: u64,
}

impl std::fmt::Debug for WebCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebCert")
            .field("hash", &self.hash())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl WebCert {
    /// Makes a certificate valid from an hour before `now` (clock skew) for [`CERT_DAYS`]
    /// days in all.
    fn make(now: u64) -> Result<Self, ServerError> {
        let fail = |e: rcgen::Error| {
            ServerError::Identity(format!("cannot create a WebTransport certificate: {e}"))
        };
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
        let mut params = rcgen::CertificateParams::new(vec![
            rekord::net::SERVER_NAME.into(),
            "127.0.0.1".into(),
            "::1".into(),
            "localhost".into(),
        ])
        .map_err(fail)?;
        let from = now.saturating_sub(3600);
        let until = from + CERT_DAYS * DAY;
        params.not_before = datetime(from)?;
        params.not_after = datetime(until)?;
        let cert = params.self_signed(&key).map_err(fail)?;
        Ok(Self {
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
            not_after: until,
        })
    }

    /// The SHA-256 of the certificate, as hex: what a page names in
    /// `serverCertificateHashes`.
    pub fn hash(&self) -> String {
        rekord::net::fingerprint(&self.cert_der)
    }

    fn certified(&self) -> Result<Arc<CertifiedKey>, ServerError> {
        certified(&self.cert_der, &self.key_der)
    }

    fn load(dir: &Path, slot: &str) -> Result<Option<Self>, ServerError> {
        let [cert, key, until] = slot_files(dir, slot);
        // `until` is written last: without it the slot is incomplete (a crash while it was
        // written) and is made again.
        if !until.exists() || !cert.exists() || !key.exists() {
            return Ok(None);
        }
        crate::datadir::owner_only(&key)?;
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| ServerError::Io {
                path: p.clone(),
                source: e,
            })
        };
        let not_after = String::from_utf8_lossy(&read(&until)?)
            .trim()
            .parse::<u64>();
        let Ok(not_after) = not_after else {
            return Ok(None);
        };
        let loaded = Self {
            cert_der: read(&cert)?,
            key_der: read(&key)?,
            not_after,
        };
        // A key that is not the certificate's (a mixed-up directory, a crash between the
        // files of a rotation) would fail every handshake: made again instead.
        let usable = loaded.certified().is_ok_and(|key| key.keys_match().is_ok());
        if !usable {
            tracing::warn!(
                slot,
                "a WebTransport certificate and its key do not match; not using them"
            );
            return Ok(None);
        }
        Ok(Some(loaded))
    }

    fn store(&self, dir: &Path, slot: &str) -> Result<(), ServerError> {
        let [cert, key, until] = slot_files(dir, slot);
        crate::identity::write_file(&key, &self.key_der, true)?;
        crate::identity::write_file(&cert, &self.cert_der, false)?;
        crate::identity::write_file(&until, format!("{}\n", self.not_after).as_bytes(), false)
    }
}

/// Removes a slot's files (those that exist).
fn remove_slot(dir: &Path, slot: &str) -> Result<(), ServerError> {
    for path in slot_files(dir, slot) {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ServerError::Io { path, source: e }),
        }
    }
    Ok(())
}

fn slot_files(dir: &Path, slot: &str) -> [PathBuf; 3] {
    [
        dir.join(format!("web-{slot}.der")),
        dir.join(format!("web-{slot}.key")),
        dir.join(format!("web-{slot}.until")),
    ]
}

fn datetime(unix: u64) -> Result<time::OffsetDateTime, ServerError> {
    let secs = i64::try_from(unix).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| ServerError::Identity(format!("a certificate date out of range: {e}")))
}

fn certified(cert_der: &[u8], key_der: &[u8]) -> Result<Arc<CertifiedKey>, ServerError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec()));
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| ServerError::Tls(format!("unusable key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(cert_der.to_vec())],
        signing,
    )))
}

/// Seconds since the Unix epoch now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The server's WebTransport certificates in its data directory: the one presented now and,
/// in the last [`NEXT_AT_DAYS_LEFT`] days of its life, the next one.
#[derive(Debug, Clone)]
pub struct WebCerts {
    dir: PathBuf,
    /// The certificate `h3` connections are presented.
    pub current: WebCert,
    /// The one that takes over when `current` has [`SWITCH_AT_DAYS_LEFT`] days left.
    pub next: Option<WebCert>,
}

impl WebCerts {
    /// Loads the certificates from `dir` (which must exist), making and storing what is
    /// missing or due ([`WebCerts::rotate`]).
    pub fn load_or_create(dir: &Path, now: u64) -> Result<Self, ServerError> {
        let latest = now + CERT_DAYS * DAY;
        // A next certificate that expired, or that expires later than any made now could,
        // is never announced nor presented.
        let next =
            WebCert::load(dir, "next")?.filter(|n| n.not_after > now && n.not_after <= latest);
        let (current, next) = match (WebCert::load(dir, "current")?, next) {
            (Some(c), next) => (c, next),
            // No usable current certificate beside a valid next one (a crash inside a
            // switch, which writes the next one over the current slot; a removed current
            // slot): the switch completes, so replicas that learned the next one (it was
            // announced) keep connecting.
            (None, Some(next)) => {
                tracing::warn!(
                    "the current WebTransport certificate is missing or damaged; presenting \
                     the next one, which replicas learned"
                );
                next.store(dir, "current")?;
                remove_slot(dir, "next")?;
                (next, None)
            }
            (None, None) => {
                let c = WebCert::make(now)?;
                c.store(dir, "current")?;
                (c, None)
            }
        };
        let mut certs = Self {
            dir: dir.to_path_buf(),
            current,
            next,
        };
        certs.rotate(now)?;
        Ok(certs)
    }

    /// The certificates stored in `dir`, as they are (`None` if there is no usable current
    /// one): what `rekord-server identity` prints while a server may be running, which
    /// alone rotates them.
    pub fn load(dir: &Path) -> Result<Option<Self>, ServerError> {
        let Some(current) = WebCert::load(dir, "current")? else {
            return Ok(None);
        };
        Ok(Some(Self {
            dir: dir.to_path_buf(),
            current,
            next: WebCert::load(dir, "next")?,
        }))
    }

    /// Applies the rotation policy at time `now`: makes the next certificate in the current
    /// one's last [`NEXT_AT_DAYS_LEFT`] days, and presents it from the last
    /// [`SWITCH_AT_DAYS_LEFT`] days on (an expired current one is replaced at once).
    /// Whether the presented certificate changed.
    pub fn rotate(&mut self, now: u64) -> Result<bool, ServerError> {
        // A certificate that expires later than any made now could (made while the clock
        // was ahead) is not valid yet for a browser either: replaced at once.
        let latest = now + CERT_DAYS * DAY;
        if self.current.not_after > latest {
            self.next = None;
            self.switch(now)?;
            return Ok(true);
        }
        if self
            .next
            .as_ref()
            .is_some_and(|n| n.not_after > latest || n.not_after <= now)
        {
            self.next = None;
        }
        let left = self.current.not_after.saturating_sub(now);
        if left > NEXT_AT_DAYS_LEFT * DAY {
            return Ok(false);
        }
        if self.next.is_none() {
            // One another process made meanwhile (never two nexts).
            self.next = WebCert::load(&self.dir, "next")?.filter(|n| n.not_after <= latest);
        }
        if self.next.is_none() {
            let next = WebCert::make(now)?;
            next.store(&self.dir, "next")?;
            self.next = Some(next);
        }
        if left > SWITCH_AT_DAYS_LEFT * DAY {
            return Ok(false);
        }
        self.switch(now)?;
        Ok(true)
    }

    /// Makes the next certificate now if there is none (it is announced from then on, and
    /// presented at the next switch).
    pub fn prepare_next(&mut self, now: u64) -> Result<(), ServerError> {
        if self.next.is_none() {
            let next = WebCert::make(now)?;
            next.store(&self.dir, "next")?;
            self.next = Some(next);
        }
        Ok(())
    }

    /// Presents the next certificate now (made if there is none), whatever the current
    /// one's age (a suspected key leak).
    pub fn force_rotate(&mut self, now: u64) -> Result<(), ServerError> {
        self.prepare_next(now)?;
        self.switch(now)
    }

    fn switch(&mut self, now: u64) -> Result<(), ServerError> {
        let latest = now + CERT_DAYS * DAY;
        let next = match self.next.take() {
            Some(next) if next.not_after > now && next.not_after <= latest => next,
            _ => WebCert::make(now)?,
        };
        // Written over the current slot (its `until` last), then the next slot goes: a crash
        // in between leaves the new current one and a next equal to it, which is harmless.
        next.store(&self.dir, "current")?;
        remove_slot(&self.dir, "next")?;
        self.current = next;
        Ok(())
    }

    /// The certificates as announced to replicas: the current one first.
    pub fn announced(&self) -> Vec<rekord::proto::WebCertificate> {
        use sha2::Digest as _;
        std::iter::once(&self.current)
            .chain(self.next.as_ref())
            .map(|c| rekord::proto::WebCertificate {
                hash: sha2::Sha256::digest(&c.cert_der).into(),
                not_after: c.not_after,
            })
            .collect()
    }

    /// The hashes a page should name in `serverCertificateHashes`: the current
    /// certificate's, then the next one's if it exists.
    pub fn hashes(&self) -> Vec<String> {
        std::iter::once(&self.current)
            .chain(self.next.as_ref())
            .map(WebCert::hash)
            .collect()
    }
}

/// Picks the certificate of a TLS handshake by ALPN: the WebTransport certificate for a
/// client that offers `h3` and not rekord's own ALPN, the long-term identity otherwise.
#[derive(Debug)]
pub(crate) struct Resolver {
    native: Arc<CertifiedKey>,
    web: RwLock<Arc<CertifiedKey>>,
    /// The configured public certificate ([`Web::certificate`]): presented to `h3`
    /// connections instead of `web`.
    public: RwLock<Option<Arc<CertifiedKey>>>,
}

impl Resolver {
    pub(crate) fn new(
        identity: &Identity,
        web: &WebCerts,
        public: Option<Arc<CertifiedKey>>,
    ) -> Result<Self, ServerError> {
        Ok(Self {
            native: certified(&identity.cert_der, &identity.key_der)?,
            web: RwLock::new(web.current.certified()?),
            public: RwLock::new(public),
        })
    }

    /// Reads the public certificate's files again (a renewal replaced them) and presents
    /// what they hold from now on; a failure leaves the one presented now, and is logged.
    pub(crate) fn reload_public(&self, config: &Web) {
        if config.certificate.is_none() {
            return;
        }
        match config.public_certificate() {
            Ok(Some(key)) => {
                let changed = {
                    let g = match self.public.read() {
                        Ok(g) => g,
                        Err(poisoned) => poisoned.into_inner(),
                    };
                    g.as_ref().is_none_or(|old| old.cert != key.cert)
                };
                if changed {
                    tracing::warn!(
                        certificate = ?config.certificate,
                        "presenting the renewed public WebTransport certificate"
                    );
                    match self.public.write() {
                        Ok(mut g) => *g = Some(key),
                        Err(poisoned) => *poisoned.into_inner() = Some(key),
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(
                error = %e,
                "cannot read the public WebTransport certificate again; the one presented stays"
            ),
        }
    }

    /// Presents `web`'s current certificate to new `h3` connections from now on.
    pub(crate) fn present(&self, web: &WebCerts) -> Result<(), ServerError> {
        let key = web.current.certified()?;
        match self.web.write() {
            Ok(mut g) => *g = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
        Ok(())
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let (mut h3, mut native) = (false, false);
        for alpn in hello.alpn().into_iter().flatten() {
            h3 |= alpn == web_transport_quinn::ALPN.as_bytes();
            native |= alpn == rekord::net::ALPN;
        }
        if h3 && !native {
            let public = match self.public.read() {
                Ok(g) => g.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            };
            if let Some(public) = public {
                return Some(public);
            }
            let key = match self.web.read() {
                Ok(g) => g.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            };
            return Some(key);
        }
        Some(self.native.clone())
    }
}

/// Whether `conn` negotiated `h3` (a WebTransport client) rather than rekord's ALPN.
pub(crate) fn is_web(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .is_some_and(|p| p == web_transport_quinn::ALPN.as_bytes())
}

/// Why a WebTransport connection did not become a session.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The connection failed or broke the HTTP/3 handshake.
    Failed(String),
    /// The page's origin is not in [`Web::origins`] (answered 403).
    Origin(String),
}

/// Turns an `h3` connection into a WebTransport session: the HTTP/3 settings and the
/// `CONNECT` request, whose `Origin` must be allowed (else 403). The caller bounds the time.
pub(crate) async fn accept(
    conn: quinn::Connection,
    web: &Web,
) -> Result<web_transport_quinn::Session, Refused> {
    let request = web_transport_quinn::Request::accept(conn)
        .await
        .map_err(|e| Refused::Failed(e.to_string()))?;
    let origin = request
        .headers
        .get("origin")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if !web.allows(origin.as_deref()) {
        let origin = origin.unwrap_or_default();
        let _ = request
            .reject(web_transport_quinn::http::StatusCode::FORBIDDEN)
            .await;
        return Err(Refused::Origin(origin));
    }
    request
        .ok()
        .await
        .map_err(|e| Refused::Failed(e.to_string()))
}
