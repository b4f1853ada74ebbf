//! Helpers of the browser tests (wasm-bindgen-test in headless Chromium): time, names and
//! raw IndexedDB access to what rekord stores.
#![allow(dead_code)]

use std::future::Future;
use std::pin::pin;
use std::task::Poll;

use wasm_bindgen::{JsCast, JsValue};

/// A database name no other test (or earlier run in the same profile) uses.
pub fn fresh(prefix: &str) -> String {
    format!("{prefix}-{}", js_sys::Math::random().to_bits())
}

pub async fn sleep(ms: i32) {
    let p = js_sys::Promise::new(&mut |resolve, _| {
        web_sys::window()
            .unwrap()
            .set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms)
            .unwrap();
    });
    wasm_bindgen_futures::JsFuture::from(p).await.unwrap();
}

/// `Some(output)` if `f` finishes within `ms`.
pub async fn timeout<F: Future>(ms: i32, f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    let mut t = pin!(sleep(ms));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = f.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        if t.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// Polls `ok` every few milliseconds for up to `ms`.
pub async fn eventually(ms: i32, mut ok: impl FnMut() -> bool) -> bool {
    for _ in 0..ms / 5 {
        if ok() {
            return true;
        }
        sleep(5).await;
    }
    ok()
}

/// A raw IndexedDB connection to rekord's database `name`.
pub async fn idb(name: &str) -> web_sys::IdbDatabase {
    let f: web_sys::IdbFactory = js_sys::Reflect::get(&js_sys::global(), &"indexedDB".into())
        .unwrap()
        .unchecked_into();
    let req = f.open(&format!("rekord:{name}")).unwrap();
    wait(req.unchecked_ref()).await.unchecked_into()
}

/// The result of an IndexedDB request.
pub async fn wait(req: &web_sys::IdbRequest) -> JsValue {
    let p = js_sys::Promise::new(&mut |resolve, reject| {
        let r = req.clone();
        let ok = wasm_bindgen::closure::Closure::once_into_js(move |_: web_sys::Event| {
            resolve.call1(&JsValue::NULL, &r.result().unwrap()).unwrap();
        });
        let err = wasm_bindgen::closure::Closure::once_into_js(move |_: web_sys::Event| {
            reject.call0(&JsValue::NULL).unwrap();
        });
        req.set_onsuccess(Some(ok.unchecked_ref()));
        req.set_onerror(Some(err.unchecked_ref()));
    });
    wasm_bindgen_futures::JsFuture::from(p).await.unwrap()
}

/// The stored value `key` of `store` (`blocks` or `meta`), as bytes.
pub async fn raw_get(name: &str, store: &str, key: &JsValue) -> Option<Vec<u8>> {
    let db = idb(name).await;
    let t = db.transaction_with_str(store).unwrap();
    let v = wait(&t.object_store(store).unwrap().get(key).unwrap()).await;
    db.close();
    (!v.is_undefined()).then(|| js_sys::Uint8Array::new(&v).to_vec())
}

/// Stores `v` (any value) under `key` of `store`.
pub async fn raw_put_value(name: &str, store: &str, key: &JsValue, v: &JsValue) {
    let db = idb(name).await;
    let t = db
        .transaction_with_str_and_mode(store, web_sys::IdbTransactionMode::Readwrite)
        .unwrap();
    wait(&t.object_store(store).unwrap().put_with_key(v, key).unwrap()).await;
    db.close();
}

/// Stores `bytes` under `key` of `store`.
pub async fn raw_put(name: &str, store: &str, key: &JsValue, bytes: &[u8]) {
    raw_put_value(name, store, key, &js_sys::Uint8Array::from(bytes).into()).await;
}

/// Deletes `key` of `store`.
pub async fn raw_delete(name: &str, store: &str, key: &JsValue) {
    let db = idb(name).await;
    let t = db
        .transaction_with_str_and_mode(store, web_sys::IdbTransactionMode::Readwrite)
        .unwrap();
    wait(&t.object_store(store).unwrap().delete(key).unwrap()).await;
    db.close();
}
