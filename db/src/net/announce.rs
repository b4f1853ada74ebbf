//! Checking a server's signed WebTransport certificate announcement
//! ([`Request::WebCertificates`](crate::proto::Request::WebCertificates)): over WebTransport
//! a replica sees only the server's short-lived WebTransport certificate, so the server
//! proves its long-term identity (the certificate native replicas pin) by signing the
//! announcement, over a nonce of the replica's, with the long-term key.

use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use x509_cert::der::{Decode as _, Encode as _};

use crate::proto::{Id, WebCertificates};

/// Checks `announced` from server `server` for `nonce`: the long-term certificate is the
/// one with fingerprint `expected` (any, on first contact: `None`), and its key signed the
/// announcement. The long-term certificate's fingerprint, or why the check failed.
pub fn verify_web_certificates(
    announced: &WebCertificates,
    server: &Id,
    nonce: &[u8; 32],
    expected: Option<&str>,
) -> Result<String, String> {
    let fingerprint = super::fingerprint(&announced.cert);
    if let Some(expected) = expected
        && expected != fingerprint
    {
        return Err(format!(
            "its long-term certificate is not the pinned one (pinned fingerprint {expected}, \
             announced {fingerprint})"
        ));
    }
    let cert = x509_cert::Certificate::from_der(&announced.cert)
        .map_err(|e| format!("its long-term certificate does not parse: {e}"))?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| format!("its long-term key does not encode: {e}"))?;
    let key = VerifyingKey::from_public_key_der(&spki)
        .map_err(|e| format!("its long-term key is not an ECDSA P-256 key: {e}"))?;
    let signature = Signature::from_der(&announced.signature)
        .map_err(|e| format!("the signature does not parse: {e}"))?;
    let signed = WebCertificates::signed(server, nonce, &announced.certificates);
    key.verify(&signed, &signature)
        .map_err(|_| "the signature does not verify with its long-term key".to_owned())?;
    Ok(fingerprint)
}
