//! Red team: a certificate from a public CA for WebTransport (`[web] certificate`/`key`,
//! `run --web-certificate/--web-key`): which certificate each ALPN gets, rotation and
//! renewal, what `identity` and `rotate-web-certificate` print, an expired certificate, key
//! formats and damaged inputs. (Its browser half is in `browser_sync.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/process.rs"]
mod process;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use process::{ServerProcess, identity, token};
use rekord::net::{ConnectOptions, PinnedVerifier, WebTarget};
use rekord::proto::handshake::ClientConfig;
use rekord_server::Web;

fn client(token: &str) -> ClientConfig {
    ClientConfig {
        app: process::APP.into(),
        client: *uuid::Uuid::new_v4().as_bytes(),
        token: token.into(),
        pinned: None,
        cursor: 0,
        trees: vec![],
        replica: 0,
        history: Vec::new(),
        last_entry: 0,
    }
}

/// A CA-issued chain for 127.0.0.1 (leaf then CA), its key, and the leaf's fingerprint.
/// `expired`: the leaf's validity ended in 2020.
fn ca_issued(dir: &Path, name: &str, expired: bool) -> (PathBuf, PathBuf, String) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "rekord red team CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    }
    let leaf = params.signed_by(&key, &ca).unwrap();
    let (chain, key_path) = (
        dir.join(format!("{name}-fullchain.pem")),
        dir.join(format!("{name}-privkey.pem")),
    );
    std::fs::write(&chain, leaf.pem() + &ca.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (chain, key_path, rekord::net::fingerprint(leaf.der()))
}

fn public_args<'a>(chain: &'a Path, key: &'a Path) -> Vec<&'a str> {
    vec![
        "--web-certificate",
        chain.to_str().unwrap(),
        "--web-key",
        key.to_str().unwrap(),
    ]
}

/// The fingerprint of the certificate the server at `addr` presents to a TLS client
/// offering `alpns` (the handshake may fail afterwards; the certificate is seen first).
fn presented_for(addr: SocketAddr, alpns: &[&[u8]]) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let verifier = Arc::new(PinnedVerifier::new(None));
        let provider = Arc::new(quinn::rustls::crypto::ring::default_provider());
        let mut tls = quinn::rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&quinn::rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        let connecting = endpoint.connect(addr, "127.0.0.1").unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), connecting).await;
        verifier.presented().unwrap_or_default()
    })
}

fn h3(addr: SocketAddr) -> String {
    presented_for(addr, &[web_transport_quinn::ALPN.as_bytes()])
}

fn cli(data: &Path, args: &[&str]) -> String {
    let out = Command::new(process::BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn web(cert: &Path, key: &Path) -> Web {
    Web {
        certificate: Some(cert.into()),
        key: Some(key.into()),
        ..Web::default()
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let st = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
}

// ---------------------------------------------------------------------------------------

/// Which certificate goes to whom: rekord's ALPN (and a client offering both) gets the
/// long-term certificate, `h3` alone the public one.
#[test]
fn alpn_picks_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (_, fingerprint, _) = identity(&data);
    let (chain, key, leaf) = ca_issued(dir.path(), "a", false);
    let server = ServerProcess::start_with(
        &data,
        "127.0.0.1:0",
        None,
        "info",
        &public_args(&chain, &key),
    );
    assert_eq!(
        presented_for(server.addr, &[rekord::net::ALPN]),
        fingerprint
    );
    assert_eq!(
        presented_for(
            server.addr,
            &[web_transport_quinn::ALPN.as_bytes(), rekord::net::ALPN]
        ),
        fingerprint
    );
    assert_eq!(
        presented_for(
            server.addr,
            &[rekord::net::ALPN, web_transport_quinn::ALPN.as_bytes()]
        ),
        fingerprint
    );
    assert_eq!(h3(server.addr), leaf);
    // No ALPN at all: refused before any certificate (empty: none seen).
    let none = presented_for(server.addr, &[]);
    assert!(none.is_empty() || none == fingerprint, "{none}");
}

/// The rotation machinery (admin command) keeps the public certificate presented and the
/// announcement empty (`identity` asks the running server what it announces).
#[test]
fn a_forced_rotation_keeps_the_public_certificate_and_announces_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let _ = identity(&data);
    let (chain, key, leaf) = ca_issued(dir.path(), "a", false);
    let server = ServerProcess::start_with(
        &data,
        "127.0.0.1:0",
        None,
        "info",
        &public_args(&chain, &key),
    );
    assert_eq!(h3(server.addr), leaf);
    let _ = cli(&data, &["rotate-web-certificate"]);
    assert_eq!(h3(server.addr), leaf, "still the public certificate");
    let ident = cli(&data, &["identity"]);
    assert!(!ident.contains("web-hash"), "announces nothing: {ident}");
}

/// `rotate-web-certificate` on a server presenting a public certificate prints no `web-hash`
/// line (a page given one would be refused by the browser), but `web-certificate PATH`.
/// (It printed the rotating hashes, found by the red team.)
#[test]
fn rotate_command_prints_only_what_is_presented() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let _ = identity(&data);
    let (chain, key, leaf) = ca_issued(dir.path(), "a", false);
    let server = ServerProcess::start_with(
        &data,
        "127.0.0.1:0",
        None,
        "info",
        &public_args(&chain, &key),
    );
    let out = cli(&data, &["rotate-web-certificate"]);
    let printed: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("web-hash "))
        .collect();
    assert_eq!(h3(server.addr), leaf);
    assert!(
        printed.is_empty(),
        "prints hashes the server neither presents nor announces: {out}"
    );
}

/// A renewed certificate (certbot replaces the files every ~60 days) is presented without a
/// restart: the hourly rotation check and `rotate-web-certificate` read the files again.
/// (They were read once at start, found by the red team.)
#[test]
fn a_renewed_certificate_is_presented_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let _ = identity(&data);
    let (chain, key, leaf) = ca_issued(dir.path(), "a", false);
    let server = ServerProcess::start_with(
        &data,
        "127.0.0.1:0",
        None,
        "info",
        &public_args(&chain, &key),
    );
    assert_eq!(h3(server.addr), leaf);
    // Renewal: new files in place of the old ones.
    let (chain2, key2, renewed) = ca_issued(dir.path(), "b", false);
    std::fs::copy(&chain2, &chain).unwrap();
    std::fs::copy(&key2, &key).unwrap();
    let _ = cli(&data, &["rotate-web-certificate"]);
    assert_eq!(
        h3(server.addr),
        renewed,
        "the renewed certificate is presented (after the admin command at least)"
    );
}

/// `identity` of a server started with `--web-certificate` on the command line only: it
/// should not print hashes a browser would then be refused with, and it should say the
/// server presents a public certificate. Stopped: it prints the rotating hashes (it cannot
/// know the flags). Running: it prints no web line at all.
#[test]
fn identity_with_a_command_line_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let _ = identity(&data);
    let (chain, key, _) = ca_issued(dir.path(), "a", false);
    let server = ServerProcess::start_with(
        &data,
        "127.0.0.1:0",
        None,
        "info",
        &public_args(&chain, &key),
    );
    let running = cli(&data, &["identity"]);
    drop(server);
    let stopped = cli(&data, &["identity"]);
    eprintln!("running:\n{running}\nstopped:\n{stopped}");
    assert!(
        running.contains("web-certificate"),
        "a running server with a public certificate says so: {running}"
    );
}

/// The native WebTransport client (feature `web-transport`) accepts the rotating
/// certificate by its hash only: a `WebTarget::webpki` is refused at once, with a message
/// that points at rekord's own ALPN (which native replicas use anyway).
#[test]
fn native_webtransport_says_a_public_certificate_server_is_reached_natively() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let _ = identity(&data);
    let tok = token(&data);
    let (chain, key, _) = ca_issued(dir.path(), "a", false);
    let server = ServerProcess::start_with(
        &data,
        "127.0.0.1:0",
        None,
        "info",
        &public_args(&chain, &key),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("https://127.0.0.1:{}/rekord", server.addr.port());
    let opts = ConnectOptions::default().timeout(Duration::from_secs(5));
    let webpki = rt
        .block_on(rekord::net::connect_web(
            &WebTarget::webpki(url),
            &client(&tok),
            None,
            opts,
        ))
        .map(drop);
    let e = webpki.unwrap_err().to_string();
    assert!(e.contains("ALPN"), "{e}");
}

/// An expired public certificate: the server starts (fine) but should warn; browsers will
/// refuse every session.
#[test]
fn an_expired_public_certificate_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let _ = identity(&data);
    let (chain, key, leaf) = ca_issued(dir.path(), "old", true);
    let log = dir.path().join("server.log");
    let server = ServerProcess::start_with(
        &data,
        "127.0.0.1:0",
        Some(&log),
        "info",
        &public_args(&chain, &key),
    );
    assert_eq!(h3(server.addr), leaf, "presented although expired");
    std::thread::sleep(Duration::from_millis(300));
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.to_lowercase().contains("expire"),
        "no warning about the expired certificate:\n{text}"
    );
}

/// Key formats and damaged inputs, through `Web::public_certificate`. The keys are made with
/// the `openssl` command (`.ci/run` installs it; without it this test says so and checks
/// nothing).
#[test]
fn key_formats_and_bad_chains() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIPPED: no openssl command to make RSA, PKCS#1 and SEC1 keys with");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // RSA, PKCS#8 and PKCS#1.
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "rsa8.key",
            "-out",
            "rsa.crt",
            "-subj",
            "/CN=127.0.0.1",
            "-days",
            "2",
        ],
    );
    openssl(
        d,
        &["rsa", "-in", "rsa8.key", "-traditional", "-out", "rsa1.key"],
    );
    // EC, SEC1.
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ec1.key",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-key",
            "ec1.key",
            "-out",
            "ec.crt",
            "-subj",
            "/CN=127.0.0.1",
            "-days",
            "2",
        ],
    );
    // Ed25519 (no browser accepts it for TLS).
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "ed25519",
            "-nodes",
            "-keyout",
            "ed.key",
            "-out",
            "ed.crt",
            "-subj",
            "/CN=127.0.0.1",
            "-days",
            "2",
        ],
    );
    let ok = |c: &str, k: &str| web(&d.join(c), &d.join(k)).public_certificate();
    for (c, k) in [
        ("rsa.crt", "rsa8.key"),
        ("rsa.crt", "rsa1.key"),
        ("ec.crt", "ec1.key"),
    ] {
        assert!(ok(c, k).unwrap().is_some(), "{c} {k}");
    }
    eprintln!("ed25519: {:?}", ok("ed.crt", "ed.key").map(|c| c.is_some()));
    // The chain in the wrong order (CA first): the key does not match the first one.
    let (chain, key, _) = ca_issued(d, "x", false);
    let text = std::fs::read_to_string(&chain).unwrap();
    let split = text.find("-----END CERTIFICATE-----").unwrap() + 26;
    let (leaf, ca) = text.split_at(split);
    let reversed = d.join("reversed.pem");
    std::fs::write(&reversed, format!("{}\n{}", ca.trim(), leaf)).unwrap();
    let e = web(&reversed, &key)
        .public_certificate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not belong"), "{e}");
    // A key file holding a certificate, a directory, an encrypted key.
    let e = web(&chain, &chain)
        .public_certificate()
        .unwrap_err()
        .to_string();
    eprintln!("certificate as key: {e}");
    let e = web(&chain, d).public_certificate().unwrap_err().to_string();
    eprintln!("directory as key: {e}");
    openssl(
        d,
        &[
            "pkcs8", "-topk8", "-in", "rsa8.key", "-out", "enc.key", "-passout", "pass:x",
        ],
    );
    let e = ok("rsa.crt", "enc.key").unwrap_err().to_string();
    eprintln!("encrypted key: {e}");
    // The key first in the certificate file (a combined PEM) and the chain after.
    let combined = d.join("combined.pem");
    std::fs::write(&combined, std::fs::read_to_string(&key).unwrap() + &text).unwrap();
    eprintln!(
        "combined pem: {:?}",
        web(&combined, &combined)
            .public_certificate()
            .map(|c| c.is_some())
    );
}

/// A configuration file with a certificate but no key: `run` refuses; `identity` still
/// prints `web-certificate` (not checked). And `run --web-certificate` overriding a config
/// `certificate` but keeping... (clap requires both flags).
#[test]
fn config_file_certificate_without_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (chain, _, _) = ca_issued(dir.path(), "a", false);
    let conf = dir.path().join("rekord.toml");
    std::fs::write(
        &conf,
        format!(
            "data = {:?}\n[web]\ncertificate = {:?}\n",
            data.to_str().unwrap(),
            chain.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = Command::new(process::BIN)
        .arg("--config")
        .arg(&conf)
        .arg("identity")
        .output()
        .unwrap();
    eprintln!(
        "identity: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(process::BIN)
        .arg("--config")
        .arg(&conf)
        .args(["run", "--listen", "127.0.0.1:0", "--app", process::APP])
        .output()
        .unwrap();
    eprintln!("run: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success());
}
