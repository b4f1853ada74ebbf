//! WebTransport from a browser page or worker: the page's own `WebTransport` object carries
//! the session's stream, so a browser replica speaks to the same server, on the same port,
//! as native replicas (which use rekord's own QUIC ALPN).
//!
//! The browser verifies the server: with certificate hashes (`serverCertificateHashes`; the
//! server's rotating WebTransport certificate, `rekord-server identity` prints the hashes),
//! or through the web's public CAs when no hash is given. The server's identity is then
//! checked through the pinned UUID in the hello, as natively. Every TLS failure reaches the
//! page as the same opaque "Opening handshake failed": the error says what to check.

use js_sys::{Object, Reflect, Uint8Array};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{ReadableStreamDefaultReader, WritableStreamDefaultWriter};

use super::wire::{ConnWire, RecvWire, SendWire, WireFuture};
use super::{ConnectOptions, NetError, Pin, Proved, Session, WebTarget, Wire};
use crate::proto::FrameReader;
use crate::proto::handshake::ClientConfig;

#[wasm_bindgen]
extern "C" {
    /// The browser's `WebTransport` (web-sys has it only behind an unstable flag).
    #[wasm_bindgen(js_name = WebTransport)]
    #[derive(Debug, Clone)]
    type JsWebTransport;

    #[wasm_bindgen(constructor, catch, js_class = "WebTransport")]
    fn new(url: &str, options: &JsValue) -> Result<JsWebTransport, JsValue>;

    #[wasm_bindgen(method, getter)]
    fn ready(this: &JsWebTransport) -> js_sys::Promise;

    #[wasm_bindgen(method, getter)]
    fn closed(this: &JsWebTransport) -> js_sys::Promise;

    #[wasm_bindgen(method, js_name = createBidirectionalStream)]
    fn create_bidirectional_stream(this: &JsWebTransport) -> js_sys::Promise;

    #[wasm_bindgen(method, catch)]
    fn close(this: &JsWebTransport, info: &JsValue) -> Result<(), JsValue>;
}

/// A JavaScript error as text.
fn text(e: &JsValue) -> String {
    if let Some(e) = e.dyn_ref::<js_sys::Error>() {
        return String::from(e.message());
    }
    e.as_string().unwrap_or_else(|| format!("{e:?}"))
}

fn unreachable(target: &WebTarget, reason: String) -> NetError {
    NetError::Unreachable {
        url: target.url.clone(),
        reason: format!(
            "{reason} (a browser says no more: check that the server runs, that the \
             certificate hash is current (`rekord-server identity`), and that the server \
             allows this page's origin (`web.origins`); the browser console and the server \
             log say which)"
        ),
    }
}

/// Hex SHA-256 to bytes.
fn hash_bytes(hex: &str) -> Option<Vec<u8>> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Connects to the server over the page's WebTransport and runs the handshake, bounded by
/// `options.timeout`.
pub async fn connect_browser(
    target: &WebTarget,
    cfg: &ClientConfig,
    pin: Option<&Pin>,
    options: ConnectOptions,
) -> Result<Session, NetError> {
    let mut cfg = cfg.clone();
    if let Some(pin) = pin {
        cfg.pinned = Some(pin.server);
    }
    let timeout = options.timeout;
    let establish = async {
        let wire = open_browser(target, pin, options).await?;
        Session::start_on(wire, &cfg, timeout).await
    };
    match crate::rt::timeout(timeout, establish).await {
        Some(result) => result,
        None => Err(NetError::Timeout {
            what: "connecting and the handshake",
            after: timeout,
        }),
    }
}

/// The page's WebTransport session to `target` (the browser checks the certificate against
/// the target's hashes, or through the web's CAs), with its stream open; the server proves
/// its long-term identity (`pin`'s UUID) in the session. Bounded by `options.timeout`.
pub(super) async fn open_browser(
    target: &WebTarget,
    pin: Option<&Pin>,
    options: ConnectOptions,
) -> Result<Wire, NetError> {
    match crate::rt::timeout(options.timeout, open_page(target, pin)).await {
        Some(result) => result,
        None => Err(NetError::Timeout {
            what: "connecting",
            after: options.timeout,
        }),
    }
}

async fn open_page(target: &WebTarget, pin: Option<&Pin>) -> Result<Wire, NetError> {
    // The browser checked the WebTransport certificate, not the long-term one native
    // clients pin: the pin to keep is the one given, else none yet.
    let keep = pin.map(|p| p.cert.clone()).unwrap_or_default();
    let options = Object::new();
    if !target.cert_hashes.is_empty() {
        let hashes = js_sys::Array::new();
        for hex in &target.cert_hashes {
            let bytes = hash_bytes(hex).ok_or_else(|| {
                unreachable(target, format!("`{hex}` is not a SHA-256 hash in hex"))
            })?;
            let entry = Object::new();
            let set = |o: &Object, k: &str, v: &JsValue| Reflect::set(o, &k.into(), v).is_ok();
            set(&entry, "algorithm", &"sha-256".into());
            set(&entry, "value", &Uint8Array::from(bytes.as_slice()).into());
            hashes.push(&entry);
        }
        let _ = Reflect::set(&options, &"serverCertificateHashes".into(), &hashes);
    }
    let transport = JsWebTransport::new(&target.url, &options)
        .map_err(|e| unreachable(target, format!("no WebTransport session: {}", text(&e))))?;
    // Closed unless handed over: a session given up on (the attempt timed out, or failed
    // past this point) must not stay open in the browser. Chromium keeps an abandoned
    // handshake going, and later attempts to the same server wait behind those (a tab
    // then never reconnected after an outage of a few seconds).
    let mut abandon = Abandon(Some(transport.clone()));
    // A failed session also rejects `closed`: awaited here, so it is no unhandled rejection.
    let closed = JsFuture::from(transport.closed());
    wasm_bindgen_futures::spawn_local(async move {
        let _ = closed.await;
    });
    JsFuture::from(transport.ready())
        .await
        .map_err(|e| unreachable(target, text(&e)))?;
    let stream = JsFuture::from(transport.create_bidirectional_stream())
        .await
        .map_err(|e| NetError::Closed(text(&e)))?;
    let part =
        |name: &str| Reflect::get(&stream, &name.into()).map_err(|e| NetError::Closed(text(&e)));
    let readable: web_sys::ReadableStream = part("readable")?.unchecked_into();
    let writable: web_sys::WritableStream = part("writable")?.unchecked_into();
    let reader: ReadableStreamDefaultReader = readable.get_reader().unchecked_into();
    let writer = writable
        .get_writer()
        .map_err(|e| NetError::Closed(text(&e)))?;
    abandon.0 = None;
    Ok(Wire {
        conn: Box::new(BrowserConn {
            transport,
            url: target.url.clone(),
        }),
        send: Box::new(BrowserSend(writer)),
        recv: Box::new(BrowserRecv {
            reader,
            pending: None,
        }),
        proved: Proved {
            cert: keep,
            proof: super::Proof::Announced { presented: None },
        },
    })
}

/// Closes a WebTransport session being opened if the attempt ends without handing it
/// over (also when the attempt's future is dropped at its timeout).
struct Abandon(Option<JsWebTransport>);

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(transport) = self.0.take() {
            let _ = transport.close(&JsValue::UNDEFINED);
        }
    }
}

/// The page's WebTransport session.
#[derive(Debug)]
struct BrowserConn {
    transport: JsWebTransport,
    url: String,
}

/// A session no one holds any more is closed (as a QUIC connection is once its last
/// handle is dropped); closing one already closed does nothing.
impl Drop for BrowserConn {
    fn drop(&mut self) {
        let _ = self.transport.close(&JsValue::UNDEFINED);
    }
}

impl ConnWire for BrowserConn {
    fn close(&self, code: u32, reason: &[u8]) {
        let info = Object::new();
        let _ = Reflect::set(&info, &"closeCode".into(), &code.into());
        let reason = String::from_utf8_lossy(reason);
        let _ = Reflect::set(&info, &"reason".into(), &reason.as_ref().into());
        let _ = self.transport.close(&info);
    }

    fn closed(&self) -> WireFuture<'_, ()> {
        let closed = JsFuture::from(self.transport.closed());
        Box::pin(async move {
            let _ = closed.await;
        })
    }

    fn remote(&self) -> String {
        self.url.clone()
    }
}

#[derive(Debug)]
struct BrowserSend(WritableStreamDefaultWriter);

impl SendWire for BrowserSend {
    fn write_all<'a>(&'a mut self, bytes: &'a [u8]) -> WireFuture<'a, Result<(), String>> {
        let chunk = Uint8Array::from(bytes);
        let written = JsFuture::from(self.0.write_with_chunk(&chunk));
        Box::pin(async move { written.await.map(|_| ()).map_err(|e| text(&e)) })
    }

    fn finish(&mut self) {
        // Awaited beside: a stream the session's end errored rejects the close, which must
        // not be an unhandled rejection.
        let closed = JsFuture::from(self.0.close());
        wasm_bindgen_futures::spawn_local(async move {
            let _ = closed.await;
        });
    }
}

/// The receiving half: a read in flight is kept across cancellations (the browser's read
/// promise delivers its chunk once; dropping it would lose the chunk).
#[derive(Debug)]
struct BrowserRecv {
    reader: ReadableStreamDefaultReader,
    pending: Option<JsFuture>,
}

impl RecvWire for BrowserRecv {
    fn read_into<'a>(
        &'a mut self,
        reader: &'a mut FrameReader,
    ) -> WireFuture<'a, Result<Option<usize>, String>> {
        Box::pin(async move {
            let read = match &mut self.pending {
                Some(read) => read,
                None => self.pending.insert(JsFuture::from(self.reader.read())),
            };
            let result = read.await;
            self.pending = None;
            let result = result.map_err(|e| text(&e))?;
            let done = Reflect::get(&result, &"done".into())
                .ok()
                .and_then(|d| d.as_bool())
                .unwrap_or(true);
            if done {
                return Ok(None);
            }
            let value = Reflect::get(&result, &"value".into()).map_err(|e| text(&e))?;
            let chunk: Uint8Array = value.unchecked_into();
            let bytes = chunk.to_vec();
            reader.push(&bytes);
            Ok(Some(bytes.len()))
        })
    }
}
