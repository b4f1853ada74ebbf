//! The note behind `Error::StoreLost` (kept in `localStorage`), from its red team: deletes
//! where `localStorage` is out of reach, the site's own deletes, imports, odd names, a
//! takeover after the store was deleted under the leader.
//!
//! Run: `cargo test -p rekord --target wasm32-unknown-unknown --test browser_witness`
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rekord::{Db, Error};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[path = "common/browser.rs"]
mod web;
use web::*;

#[rekord::record(tree = "parts")]
#[derive(Debug, Clone, PartialEq)]
struct Part {
    name: String,
    qty: u32,
}

async fn settle(name: &str) {
    drop(Db::open_browser(name).await.unwrap());
    drop(Db::open_browser(name).await.unwrap());
}

async fn stored_db(name: &str, n: u32) {
    let db = Db::open_browser(name).await.unwrap();
    let parts = db.tree::<Part>().unwrap();
    for i in 0..n {
        parts
            .create(&Part {
                name: "x".into(),
                qty: i,
            })
            .unwrap();
    }
    db.flush().await.unwrap();
    drop(parts);
    drop(db);
    settle(name).await;
}

fn note_of(name: &str) -> Option<String> {
    web_sys::window()
        .unwrap()
        .local_storage()
        .unwrap()
        .unwrap()
        .get_item(&format!("rekord:stored:{name}"))
        .unwrap()
}

/// Makes `localStorage` throw, as it does in a sandboxed frame or with storage blocked
/// (`Reflect.get(globalThis, "localStorage")` then fails, like in a worker where it is
/// missing); `false` puts it back.
fn block_local_storage(on: bool) {
    js_sys::eval(if on {
        "globalThis.__rt_ls = Object.getOwnPropertyDescriptor(globalThis, 'localStorage');
         Object.defineProperty(globalThis, 'localStorage', { configurable: true,
           get() { throw new DOMException('blocked', 'SecurityError'); } });"
    } else {
        "Object.defineProperty(globalThis, 'localStorage', globalThis.__rt_ls);"
    })
    .unwrap();
}

/// A database deleted on purpose (`Db::delete_browser`) where `localStorage` cannot be
/// reached (a worker, a sandboxed frame, storage blocked) keeps the note written by a page;
/// the mark the delete leaves in IndexedDB tells the next open it is no loss. (Found by the
/// red team: the next open said the browser had lost it.)
#[wasm_bindgen_test]
async fn a_delete_where_local_storage_is_out_of_reach_is_no_loss() {
    let name = fresh("rt-del-nols");
    stored_db(&name, 5).await;
    assert!(note_of(&name).is_some(), "noted after a flush");
    block_local_storage(true);
    let deleted = Db::delete_browser(&name).await;
    block_local_storage(false);
    deleted.unwrap();
    match Db::open_browser(&name).await {
        Ok(db) => {
            assert!(db.tree::<Part>().unwrap().keys().unwrap().is_empty());
        }
        Err(Error::StoreLost { .. }) => {
            panic!(
                "a database deleted on purpose is reported lost (note left: {:?})",
                note_of(&name)
            )
        }
        Err(e) => panic!("{e}"),
    }
}

/// The application (or a library on the same origin) deletes the IndexedDB database itself,
/// e.g. a "log out" that deletes every IndexedDB database of the origin: the next open
/// refuses it as lost (README), until `Db::delete_browser`.
#[wasm_bindgen_test]
async fn deleted_by_the_application_outside_rekord() {
    let name = fresh("rt-app-del");
    stored_db(&name, 3).await;
    let f: web_sys::IdbFactory = js_sys::Reflect::get(&js_sys::global(), &"indexedDB".into())
        .unwrap()
        .into();
    let req = f.delete_database(&format!("rekord:{name}")).unwrap();
    wait(&req).await;
    let r = Db::open_browser(&name).await;
    console_log!(
        "after the application's own deleteDatabase: {:?}",
        r.as_ref().map(|_| "opened").map_err(|e| e.to_string())
    );
    assert!(matches!(r, Err(Error::StoreLost { .. })));
    Db::delete_browser(&name).await.unwrap();
}

/// Import, delete, import again: no note left over, no false loss.
#[wasm_bindgen_test]
async fn import_delete_open() {
    let src = fresh("rt-imp-src");
    stored_db(&src, 4).await;
    let db = Db::open_browser(&src).await.unwrap();
    let image = db.export_image().unwrap();
    drop(db);
    settle(&src).await;
    let name = format!("{} odd:/?#%\u{e9}\u{1f600} name", fresh("rt-imp"));
    Db::import_browser_image(&name, image.clone())
        .await
        .unwrap();
    assert!(note_of(&name).is_some(), "import notes it");
    Db::delete_browser(&name).await.unwrap();
    assert!(note_of(&name).is_none(), "delete forgets it");
    let db = Db::open_browser(&name).await.unwrap();
    assert!(db.tree::<Part>().unwrap().keys().unwrap().is_empty());
    drop(db);
    settle(&name).await;
    Db::delete_browser(&name).await.unwrap();
    Db::import_browser_image(&name, image).await.unwrap();
    let db = Db::open_browser(&name).await.unwrap();
    assert_eq!(db.tree::<Part>().unwrap().keys().unwrap().len(), 4);
    drop(db);
    settle(&name).await;
    Db::delete_browser(&name).await.unwrap();
    Db::delete_browser(&src).await.unwrap();
}

/// The leader and a follower in this page; the IndexedDB database is deleted under them
/// (from outside); the leader goes, the follower takes over (start_flusher) and stores its
/// copy: the database must open with its data afterwards, not as lost.
#[wasm_bindgen_test]
async fn follower_takes_over_after_the_store_was_deleted() {
    let name = fresh("rt-takeover");
    let leader = Db::open_browser(&name).await.unwrap();
    let follower = Db::open_browser(&name).await.unwrap();
    let parts = leader.tree::<Part>().unwrap();
    for i in 0..3 {
        parts
            .create(&Part {
                name: "y".into(),
                qty: i,
            })
            .unwrap();
    }
    drop(parts);
    leader.flush().await.unwrap();
    assert!(note_of(&name).is_some());
    let ok = eventually(5000, || {
        follower.tree::<Part>().unwrap().keys().unwrap().len() == 3
    })
    .await;
    assert!(ok, "the follower sees the leader's parts");
    let f: web_sys::IdbFactory = js_sys::Reflect::get(&js_sys::global(), &"indexedDB".into())
        .unwrap()
        .into();
    let req = f.delete_database(&format!("rekord:{name}")).unwrap();
    wait(&req).await;
    drop(leader);
    // The follower leads once the leader's flusher gave up its last flush; a write of its
    // own is stored then (its flush waits for the takeover).
    follower
        .tree::<Part>()
        .unwrap()
        .create(&Part {
            name: "z".into(),
            qty: 9,
        })
        .unwrap();
    let flushed = timeout(60_000, follower.flush()).await;
    console_log!(
        "follower flush: {:?}",
        flushed
            .as_ref()
            .map(|r| r.as_ref().map_err(|e| e.to_string()))
    );
    let flushed = timeout(60_000, async {
        loop {
            if follower.flush().await.is_ok()
                && follower
                    .browser_stats()
                    .is_some_and(|s| s.unflushed_bytes == 0)
            {
                return;
            }
            sleep(200).await;
        }
    })
    .await;
    console_log!("follower flush after takeover: {}", flushed.is_some());
    drop(follower);
    sleep(500).await;
    let mut r = Db::open_browser(&name).await;
    if let Err(Error::Browser { message, .. }) = &r {
        // The leader's close told once that its last flush failed (the store was deleted).
        console_log!("first open after the takeover: {message}");
        r = Db::open_browser(&name).await;
    }
    match r {
        Ok(db) => {
            let n = db.tree::<Part>().unwrap().keys().unwrap().len();
            drop(db);
            assert_eq!(n, 4, "the follower's copy was stored");
        }
        Err(e) => panic!("after a takeover: {e}"),
    }
    settle(&name).await;
    Db::delete_browser(&name).await.unwrap();
}
