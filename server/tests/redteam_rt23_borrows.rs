//! Red team rt23: borrows of a browser tab (headless Chromium) at the seams of a crash or
//! reload right after the grant, a server kill and restart while the tab and a native
//! replica edit the same record, and a token revoked while the tab is connected.
//!
//! Found:
//! - `rt23_borrow_granted_before_the_first_flush_then_the_tab_dies` (and, about one run in
//!   six on a loaded machine, `rt23_freeze_right_after_a_borrow_grant`): a tab that died
//!   before its first flush took its client identity with it; the borrow the server granted
//!   to that identity stayed lent to a replica that exists nowhere. Fixed: the leading tab
//!   stores the database before it connects (`open_browser_synced_with`); passes.
//! - `rt23_a_tab_reconnects_after_a_fifteen_second_outage` (and
//!   `rt23_tab_holds_across_a_kill_and_restart_while_native_tries`, whose outage lasts over
//!   10 s): a tab whose server was down for 15 s did not reconnect within 60 s of the
//!   server's return; a reload connects at once. The sessions the client abandoned at its
//!   timeout were never closed (`net/browser.rs` `open_page` dropped the `WebTransport`
//!   object), and each attempt was cancelled at the client's 3 s timeout while Chromium
//!   still held its handshake back (Chromium throttles a page's WebTransport handshakes
//!   after failed ones, and counts a cancelled one as failed): no attempt ever started.
//!   Fixed: abandoned sessions are closed, and a browser's attempt may wait up to 100 s to
//!   open (`BROWSER_OPEN_WAIT` in `sync/client.rs`); the tab reconnects 4-9 s after the
//!   server's return (two runs), the kill-and-restart case passes. (`RT23_OUTAGE_MS` sets
//!   another length of outage.)
//!
//! Diagnosis knobs of `rt23_tab_reloaded_while_the_server_is_down_reconnects`:
//! `RT23_DOWN_MS` (how long the server stays down after the reload; 15000 failed before the fix),
//! `RT23_NO_RELOAD=1`, `RT23_WAIT_S`, `RT23_BORROW=1|2`, `RT23_WRITE_DURING=<ms>`; of
//! `rt23_tab_holds_across_a_kill_and_restart_while_native_tries`: `RT23_NO_NATIVE=1`
//! (native does not try to borrow during the outage: the outage stays short and it passes).
//!
//! ```text
//! mkdir -p target/chrome-tmp
//! TMPDIR=$PWD/target/chrome-tmp cargo test -p rekord-server --test redteam_rt23_borrows -- --ignored --nocapture --test-threads 1
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/process.rs"]
mod process;
#[path = "common/tabs.rs"]
mod tabs;

use rekord::Key;
use std::time::{Duration, Instant};
use tabs::*;

/// Native creates part `name` (qty) and gives its borrow back; its id.
fn native_free_part(s: &Setup, name: &str, qty: u32) -> u64 {
    let k = s
        .parts
        .create(&Part {
            name: name.into(),
            qty,
        })
        .unwrap();
    s.parts.return_borrow(k).unwrap();
    s._native.wait_pushed(LIMIT).unwrap();
    k.id()
}

/// `(name, qty, holder)` of part `id` in tab `t`.
fn tab_part(s: &mut Setup, t: usize, id: u64) -> Option<(String, u32, u32)> {
    let g = s.tabs.get(t, id)?;
    let mut it = g.rsplitn(3, ' ');
    let holder = it.next()?.parse().ok()?;
    let qty = it.next()?.parse().ok()?;
    let name = it.next()?.to_owned();
    Some((name, qty, holder))
}

fn native_part(s: &Setup, id: u64) -> Option<(String, u32, u32)> {
    let k = Key::<Part>::new(id, 0);
    let p = s.parts.get(k).ok()?;
    let h = s.parts.meta(k).ok()?.holder;
    Some((p.name, p.qty, h))
}

/// Native tries to borrow `id` until it gets it or `secs` pass; the last error otherwise.
fn native_borrow(s: &Setup, id: u64, secs: u64) -> Result<Duration, String> {
    let k = Key::<Part>::new(id, 0);
    let start = Instant::now();
    loop {
        match s.parts.borrow(k) {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) => {
                if start.elapsed() > Duration::from_secs(secs) {
                    return Err(e.to_string());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// JS: borrow `id` and set its quantity; "ok" or the error.
fn borrow_update_js(id: u64, qty: u32) -> String {
    format!(
        "try {{ await window.db.borrow({id}); window.db.update({id}, {qty}); return 'ok'; }} catch (e) {{ return 'err ' + String(e && e.message || e); }}"
    )
}

/// JS: set the quantity (the tab must hold it); "ok" or the error.
fn update_js(id: u64, qty: u32) -> String {
    format!(
        "try {{ window.db.update({id}, {qty}); return 'ok'; }} catch (e) {{ return 'err ' + String(e && e.message || e); }}"
    )
}

/// The tab borrows a part and changes it; at once (no flush) it is crashed (`crash`) or
/// reloaded. A tab opens the database again. The part must be either this replica's (in
/// the tab and at the server: the tab can change it, native cannot borrow it) or free (the
/// tab can borrow it again): never held by the server for a replica that does not know it.
/// In the end the tab gives it back and native gets it with the tab's last quantity.
fn grant_then_exit(crash: bool, flush: bool) -> Vec<String> {
    grant_then_exit_with(crash, flush, false)
}

fn grant_then_exit_with(crash: bool, flush: bool, freeze: bool) -> Vec<String> {
    let mut s = setup();
    let name = "rt23b";
    let mut bad = vec![];
    let id = native_free_part(&s, "lent", 1);
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab online", online);
    assert!(eventually("the tab to have the part free", || {
        tab_part(&mut s, 0, id).is_some_and(|p| p.2 == 0)
    }));
    let me = s.tabs.status(0)["replica"].as_u64().unwrap() as u32;
    if freeze {
        // Borrow, change, and freeze the tab right after (nothing of it stored), then close.
        let js = format!(
            "await window.db.borrow({id}); window.db.update({id}, 2); setTimeout(() => {{ while (true) {{}} }}, 0); return 'ok';"
        );
        let r = s.tabs.ok(0, &js);
        assert_eq!(r, "ok", "the tab could not borrow");
        s.tabs.op("close_tab", 0);
    } else {
        let r = s.tabs.ok(0, &borrow_update_js(id, 2));
        assert_eq!(r, "ok", "the tab could not borrow");
    }
    if flush {
        s.tabs.ok(0, "await window.db.flush(); return null;");
    }
    let t = if freeze {
        s.tabs.op("new", 1);
        1
    } else if crash {
        s.tabs.op("crash", 0);
        s.tabs.op("new", 1);
        1
    } else {
        s.tabs.op("reload", 0);
        0
    };
    s.tabs.open(t, name);
    let st = s
        .tabs
        .wait_status(t, "reopened tab online", |st| st["online"] == true);
    eprintln!("reopened: {st}; part in tab {:?}", tab_part(&mut s, t, id));
    // Let the server's view reach native.
    let _ = s._native.wait_caught_up(LIMIT);
    std::thread::sleep(Duration::from_millis(500));
    let _ = s._native.wait_caught_up(LIMIT);
    let in_tab = tab_part(&mut s, t, id);
    let at_native = native_part(&s, id);
    eprintln!("after reopen: tab {in_tab:?}, native {at_native:?}, me {me}");
    // What the tab can do now.
    let upd = s.tabs.ok(t, &update_js(id, 3));
    let upd = upd.as_str().unwrap().to_owned();
    let mut last_qty = 3;
    if upd != "ok" {
        eprintln!("update after reopen: {upd}");
        let again = s.tabs.ok(t, &borrow_update_js(id, 4));
        last_qty = 4;
        if again != "ok" {
            bad.push(format!(
                "after the {}, the tab can neither change the part ({upd}) nor borrow it again ({again}); tab {in_tab:?}, native {at_native:?}",
                if crash { "crash" } else { "reload" }
            ));
        }
    }
    // Native must not get it while the tab holds it.
    if let Ok(d) = native_borrow(&s, id, 1) {
        bad.push(format!(
            "native borrowed the part after {d:?} while the tab believed it held it"
        ));
    }
    let r = s
        .tabs
        .ok(t, &format!("try {{ window.db.give_back({id}); await window.db.flush(); return 'ok'; }} catch (e) {{ return 'err ' + String(e && e.message || e); }}"));
    if r != "ok" {
        bad.push(format!("the tab could not give the part back: {r}"));
    }
    match native_borrow(&s, id, 30) {
        Ok(d) => eprintln!("native borrowed after {d:?}"),
        Err(e) => bad.push(format!(
            "native never got the part: {e}; tab {:?}, native {:?}",
            tab_part(&mut s, t, id),
            native_part(&s, id)
        )),
    }
    let ok = eventually("native to have the tab's last quantity", || {
        native_part(&s, id).is_some_and(|p| p.1 == last_qty)
    });
    if !ok {
        bad.push(format!(
            "native has {:?}, the tab's last quantity was {last_qty}",
            native_part(&s, id)
        ));
    }
    let st = s.tabs.status(t);
    if st["rejected"] != 0 {
        bad.push(format!("the tab had writes rejected: {st}"));
    }
    server_log(&s);
    bad
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn rt23_crash_right_after_a_borrow_grant() {
    let bad = grant_then_exit(true, false);
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn rt23_reload_right_after_a_borrow_grant() {
    let bad = grant_then_exit(false, false);
    assert!(bad.is_empty(), "{bad:#?}");
}

/// The tab freezes right after the grant and the change (nothing stored after them) and is
/// closed; a new tab opens the database.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn rt23_freeze_right_after_a_borrow_grant() {
    let bad = grant_then_exit_with(true, false, true);
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn rt23_crash_right_after_a_flushed_borrow_grant() {
    let bad = grant_then_exit(true, true);
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Native holds a part, changes its name and quantity while the server is down and gives
/// it back (all in its outbox); the server restarts; the tab borrows it as soon as it can
/// and changes only the quantity at once. Native's name must survive (the tab's change must
/// be based on native's version), and both must end equal.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn rt23_tab_borrows_right_after_natives_offline_edit_arrives() {
    let mut s = setup();
    let name = "rt23c";
    let mut bad = vec![];
    let k = s
        .parts
        .create(&Part {
            name: "orig".into(),
            qty: 1,
        })
        .unwrap();
    s._native.wait_pushed(LIMIT).unwrap();
    let id = k.id();
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab online", online);
    assert!(eventually("the tab to have the part", || {
        tab_part(&mut s, 0, id).is_some()
    }));
    s.server.take().unwrap().kill();
    s.parts
        .update(k, |p| {
            p.name = "renamed by native".into();
            p.qty = 10;
        })
        .unwrap();
    s.parts.return_borrow(k).unwrap();
    // The tab cannot get it while the server is down.
    let r = s.tabs.ok(0, &borrow_update_js(id, 20));
    eprintln!("tab borrow while down: {r}");
    if r == "ok" {
        bad.push("the tab borrowed while the server was down".into());
    }
    s.restart();
    // The tab tries at once, over and over, and changes the quantity as soon as it has it.
    let js = format!(
        r#"const t0 = Date.now(); const errs = [];
        while (Date.now() - t0 < 30000) {{
            try {{ await window.db.borrow({id}); window.db.update({id}, 20); return 'ok ' + errs.length + ' ' + errs.slice(-2).join(' | '); }}
            catch (e) {{ errs.push(String(e && e.message || e)); await new Promise((r) => setTimeout(r, 5)); }}
        }}
        return 'timeout ' + errs.slice(-3).join(' | ');"#
    );
    let r = s.tabs.ok(0, &js);
    eprintln!("tab borrow after restart: {r}");
    if !r.as_str().unwrap().starts_with("ok") {
        bad.push(format!("the tab never borrowed: {r}"));
    }
    s.tabs.ok(
        0,
        &format!("window.db.give_back({id}); await window.db.flush(); return null;"),
    );
    s.tabs.wait_status(0, "tab settled", online);
    let _ = s._native.wait_pushed(LIMIT);
    let ok = eventually("native and tab to agree on the part", || {
        let n = native_part(&s, id);
        n.as_ref()
            .is_some_and(|n| n.0 == "renamed by native" && n.1 == 20 && n.2 == 0)
    });
    let t = tab_part(&mut s, 0, id);
    let n = native_part(&s, id);
    eprintln!("end: tab {t:?}, native {n:?}");
    if !ok || t != n {
        bad.push(format!(
            "expected (\"renamed by native\", 20, 0) everywhere: tab {t:?}, native {n:?}"
        ));
    }
    let st = s.tabs.status(0);
    if st["rejected"] != 0 {
        bad.push(format!("the tab had writes rejected: {st}"));
    }
    server_log(&s);
    assert!(bad.is_empty(), "{bad:#?}");
}

/// The tab borrows a part; the server is killed at once; the tab changes it offline, flushes
/// and is reloaded; native tries to borrow it throughout the outage and right after the
/// restart (it must fail while the tab holds it); the server comes back; the tab gives it
/// back; native gets it with the tab's quantity.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn rt23_tab_holds_across_a_kill_and_restart_while_native_tries() {
    let mut s = setup();
    let name = "rt23d";
    let mut bad = vec![];
    let id = native_free_part(&s, "shared", 1);
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab online", online);
    assert!(eventually("the tab to have the part free", || {
        tab_part(&mut s, 0, id).is_some_and(|p| p.2 == 0)
    }));
    let r = s.tabs.ok(0, &borrow_update_js(id, 2));
    assert_eq!(r, "ok");
    s.server.take().unwrap().kill();
    for q in 3..8 {
        let r = s.tabs.ok(0, &update_js(id, q));
        assert_eq!(r, "ok", "offline update {q}");
    }
    s.tabs.ok(0, "await window.db.flush(); return null;");
    s.tabs.op("reload", 0);
    s.tabs.open(0, name);
    // RT23_NO_NATIVE=1 (diagnosis): native does not try to borrow around the restart.
    let no_native = std::env::var("RT23_NO_NATIVE").is_ok();
    if no_native {
        std::thread::sleep(Duration::from_secs(1));
    } else if native_borrow(&s, id, 1).is_ok() {
        bad.push("native borrowed while the server was down".into());
    }
    s.restart();
    if no_native {
        std::thread::sleep(Duration::from_secs(5));
    }
    // Native races the tab's reconnection.
    if no_native {
    } else if let Ok(d) = native_borrow(&s, id, 5) {
        bad.push(format!(
            "native borrowed {d:?} after the restart while the tab held the part (native has {:?})",
            native_part(&s, id)
        ));
    }
    let r = s.tabs.ok(0, &update_js(id, 8));
    if r != "ok" {
        bad.push(format!("the tab lost its borrow across the restart: {r}"));
    }
    s.tabs.ok(
        0,
        &format!("try {{ window.db.give_back({id}); }} catch (e) {{}} await window.db.flush(); return null;"),
    );
    let start = Instant::now();
    let mut st = s.tabs.status(0);
    while !online(&st) && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(500));
        st = s.tabs.status(0);
    }
    eprintln!("tab after {:?}: {st}", start.elapsed());
    if !online(&st) {
        bad.push(format!(
            "the reloaded tab never reconnected after the restart: {st}"
        ));
        let log = std::fs::read_to_string(s.data.with_extension("log")).unwrap_or_default();
        eprintln!("SERVER LOG (last 40 lines):");
        for l in log
            .lines()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            eprintln!("  {l}");
        }
        // Diagnosis: does a fresh page (the tab reloaded once more) connect?
        s.tabs.op("reload", 0);
        s.tabs.open(0, name);
        let start = Instant::now();
        let mut st = s.tabs.status(0);
        while !online(&st) && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(500));
            st = s.tabs.status(0);
        }
        eprintln!("after a second reload, {:?}: {st}", start.elapsed());
        if !online(&st) {
            bad.push(format!(
                "even reloaded again the tab does not connect: {st}"
            ));
        }
    }
    match native_borrow(&s, id, 30) {
        Ok(_) => {}
        Err(e) => bad.push(format!("native never got the part: {e}")),
    }
    let ok = eventually("native to have qty 8", || {
        native_part(&s, id).is_some_and(|p| p.1 == 8)
    });
    if !ok {
        bad.push(format!(
            "native has {:?}, expected qty 8",
            native_part(&s, id)
        ));
    }
    let st = s.tabs.status(0);
    if st["rejected"] != 0 {
        bad.push(format!("the tab had writes rejected: {st}"));
    }
    server_log(&s);
    assert!(bad.is_empty(), "{bad:#?}");
}

/// The tab connects with its own token; the token is revoked while the tab is connected.
/// What the open session may still do is measured (documented: existing sessions are not
/// cut off); after a restart the tab must be refused with a clear reason, keep its writes,
/// and, given a new token of the same name (a reload with the new configuration), send them
/// all exactly once.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn rt23_token_revoked_while_the_tab_is_connected() {
    let mut s = setup();
    let name = "rt23r";
    let mut bad = vec![];
    let tok = process::issue(&s.data, "tabtok", &["--read-all", "--write-all"]);
    s.tabs.token = tok;
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab online", online);
    let mut made = s.tabs.burst(0, "before", 3);
    s.tabs.wait_status(0, "pushed", online);
    let id = native_free_part(&s, "to borrow", 1);
    process::revoke(&s.data, "tabtok");
    // The still-open session.
    let after = s.tabs.burst(0, "after revoke", 3);
    let arrived = native_lacks(&s, &after, 5).is_empty();
    let b = s.tabs.ok(0, &borrow_update_js(id, 5));
    eprintln!(
        "after the revoke, the open session: writes arrived {arrived}, borrow+update {b}, status {}",
        s.tabs.status(0)
    );
    made.extend(after);
    // A restart ends the session: the tab must be refused, say why, and keep its writes.
    s.restart();
    let offline = s.tabs.burst(0, "refused", 3);
    made.extend(offline.iter().cloned());
    s.tabs.ok(0, "await window.db.flush(); return null;");
    let start = Instant::now();
    let mut st = s.tabs.status(0);
    while st["refused"].is_null() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
        st = s.tabs.status(0);
    }
    eprintln!("after restart: {st}");
    if st["refused"].is_null() {
        bad.push(format!("the tab was never told its token is refused: {st}"));
    }
    if st["outbox"].as_u64().unwrap_or(0) == 0 {
        bad.push(format!("the tab's outbox is empty while refused: {st}"));
    }
    if native_lacks(&s, &offline, 3).is_empty() {
        bad.push("writes of a refused tab reached native".into());
    }
    // A new token with the same name; the page reloads with it.
    let tok2 = process::issue(&s.data, "tabtok", &["--read-all", "--write-all"]);
    s.tabs.token = tok2;
    s.tabs.op("reload", 0);
    s.tabs.open(0, name);
    let st = s
        .tabs
        .wait_status(0, "tab online with the new token", online);
    eprintln!("with the new token: {st}");
    let lack = native_lacks(&s, &made, 20);
    if !lack.is_empty() {
        bad.push(format!("writes missing at native: {lack:?}"));
    }
    if st["rejected"] != 0 {
        bad.push(format!("the tab had writes rejected: {st}"));
    }
    // Exactly once: native's parts are the tab's and its own two.
    let n = native_parts(&s.parts).len();
    if n != made.len() + 1 {
        bad.push(format!("native has {n} parts, expected {}", made.len() + 1));
    }
    server_log(&s);
    assert!(bad.is_empty(), "{bad:#?}");
}

/// The orphaned borrow made deterministic: the tab opens a new database, IndexedDB refuses
/// every write from right after the open (as if the tab died before its first flush), the
/// tab borrows a part and changes it, and freezes; it is closed and a new tab opens the
/// database. What the new tab opens must be able to give the part back (or the server must
/// not keep it lent to an identity nobody has).
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn rt23_borrow_granted_before_the_first_flush_then_the_tab_dies() {
    let mut s = setup();
    let name = "rt23o";
    let mut bad = vec![];
    let id = native_free_part(&s, "lent", 1);
    let js = format!(
        r#"{open}
        window.__put = IDBObjectStore.prototype.put;
        IDBObjectStore.prototype.put = function (...a) {{
            throw new DOMException('red team: storage refused', 'QuotaExceededError');
        }};
        const t0 = Date.now();
        while (true) {{
            try {{ await window.db.borrow({id}); break; }}
            catch (e) {{ if (Date.now() - t0 > 20000) return 'err ' + String(e && e.message || e); await new Promise((r) => setTimeout(r, 20)); }}
        }}
        window.db.update({id}, 2);
        const st = window.db.status();
        setTimeout(() => {{ while (true) {{}} }}, 0);
        return st;"#,
        open = s.tabs.open_js(name)
    );
    let st = s.tabs.ok(0, &js);
    eprintln!("tab 0 before it froze: {st}");
    let me: serde_json::Value = serde_json::from_str(st.as_str().unwrap()).unwrap();
    let me = me["replica"].as_u64().unwrap() as u32;
    s.tabs.op("close_tab", 0);
    s.tabs.op("new", 1);
    s.tabs.open(1, name);
    let st = s.tabs.wait_status(1, "tab 1 online", online);
    let _ = s._native.wait_caught_up(LIMIT);
    let in_tab = tab_part(&mut s, 1, id);
    eprintln!(
        "tab 1: {st}; part {in_tab:?}; native {:?}; tab 0 was replica {me}",
        native_part(&s, id)
    );
    let now = st["replica"].as_u64().unwrap() as u32;
    let upd = s.tabs.ok(1, &update_js(id, 3));
    let again = if upd == "ok" {
        upd.clone()
    } else {
        s.tabs.ok(1, &borrow_update_js(id, 3))
    };
    if again != "ok" {
        bad.push(format!(
            "the reopened database (replica {now}, tab 0 was replica {me}) can neither change the part nor borrow it: {upd} / {again}; tab has {in_tab:?}"
        ));
    }
    match native_borrow(&s, id, 5) {
        Ok(_) if again == "ok" => bad.push("native borrowed while the tab holds the part".into()),
        Ok(_) => {}
        Err(e) if again != "ok" => bad.push(format!(
            "nobody can ever get the part back (held by replica {me}, which no longer exists anywhere) short of `borrow force-return`: native: {e}"
        )),
        Err(_) => {}
    }
    server_log(&s);
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Diagnosis: the tab is reloaded while the server is down (it opens offline), the server
/// comes back: the tab must reconnect.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn rt23_tab_reloaded_while_the_server_is_down_reconnects() {
    let mut s = setup();
    let name = "rt23e";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab online", online);
    let mut made = s.tabs.burst(0, "before", 2);
    s.tabs.wait_status(0, "pushed", online);
    // RT23_BORROW=1: the tab holds a borrowed part (RT23_BORROW=2: and changes it offline).
    let borrow: u32 = std::env::var("RT23_BORROW").map_or(0, |v| v.parse().unwrap());
    let mut lent = None;
    if borrow > 0 {
        let id = native_free_part(&s, "lent", 1);
        assert!(eventually("the tab to have the part free", || {
            tab_part(&mut s, 0, id).is_some_and(|p| p.2 == 0)
        }));
        assert_eq!(s.tabs.ok(0, &borrow_update_js(id, 2)), "ok");
        s.tabs.wait_status(0, "borrow pushed", online);
        lent = Some(id);
    }
    s.server.take().unwrap().kill();
    made.extend(s.tabs.burst(0, "offline", 2));
    if let (Some(id), 2) = (lent, borrow) {
        assert_eq!(s.tabs.ok(0, &update_js(id, 3)), "ok");
    }
    s.tabs.ok(0, "await window.db.flush(); return null;");
    // RT23_NO_RELOAD=1: the tab stays as it is (no reload while the server is down).
    if std::env::var("RT23_NO_RELOAD").is_err() {
        s.tabs.op("reload", 0);
        s.tabs.open(0, name);
    }
    // RT23_DOWN_MS: how long the reloaded tab stays open before the server returns.
    let down: u64 = std::env::var("RT23_DOWN_MS").map_or(1500, |v| v.parse().unwrap());
    std::thread::sleep(Duration::from_millis(down));
    eprintln!("reloaded, server down: {}", s.tabs.status(0));
    s.restart();
    // RT23_WRITE_DURING=<ms>: the tab writes (one create every 50 ms) for that long right
    // after the server is back, while it reconnects.
    let during: u64 = std::env::var("RT23_WRITE_DURING").map_or(0, |v| v.parse().unwrap());
    if during > 0 {
        let js = format!(
            "const out = []; const t0 = Date.now(); let i = 0; while (Date.now() - t0 < {during}) {{ const id = window.db.create('during ' + i, i); if (id >= 0) out.push(id + ':' + i); i++; await new Promise((r) => setTimeout(r, 50)); }} return out.join(',');"
        );
        let v = s.tabs.ok(0, &js);
        for x in v.as_str().unwrap().split(',').filter(|x| !x.is_empty()) {
            let (id, i) = x.split_once(':').unwrap();
            let i: u32 = i.parse().unwrap();
            made.push((id.parse::<f64>().unwrap() as u64, format!("during {i}"), i));
        }
    }
    let t0 = Instant::now();
    let _ = s._native.wait_caught_up(LIMIT);
    eprintln!(
        "native caught up after {:?}: {:?}",
        t0.elapsed(),
        s._native.sync_status()
    );
    // RT23_WAIT_S: how long the tab gets to reconnect (default 60 s).
    let wait: u64 = std::env::var("RT23_WAIT_S").map_or(60, |v| v.parse().unwrap());
    let start = Instant::now();
    let mut st = s.tabs.status(0);
    while !online(&st) && start.elapsed() < Duration::from_secs(wait) {
        std::thread::sleep(Duration::from_millis(500));
        st = s.tabs.status(0);
    }
    eprintln!("tab after {:?}: {st}", start.elapsed());
    let lack = native_lacks(&s, &made, 45);
    server_log(&s);
    assert!(online(&st), "the reloaded tab never reconnected: {st}");
    assert!(lack.is_empty(), "{lack:?}");
}

/// JS run before the database opens: counts the page's WebTransport sessions (made, ready,
/// failed, closed by the page) in `window.__wt`.
const COUNT_WT: &str = r#"window.__wt = { made: 0, ready: 0, failed: 0, closed: 0, slowest_ready_ms: 0 };
    const WT = window.WebTransport;
    window.WebTransport = class extends WT {
        constructor(u, o) {
            super(u, o);
            const s = window.__wt; const t0 = Date.now(); s.made++;
            this.ready.then(() => { s.ready++; s.slowest_ready_ms = Math.max(s.slowest_ready_ms, Date.now() - t0); }, () => { s.failed++; });
        }
        close(i) { window.__wt.closed++; return super.close(i); }
    };
    return null;"#;

/// An open tab (no reload) whose server is down for `down_ms`: once the server is back it
/// must reconnect and send its outbox. The page's WebTransport sessions are counted.
fn outage(down_ms: u64) -> Vec<String> {
    let mut s = setup();
    let name = "rt23f";
    let mut bad = vec![];
    s.tabs.ok(0, COUNT_WT);
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab online", online);
    let mut made = s.tabs.burst(0, "before", 2);
    s.tabs.wait_status(0, "pushed", online);
    s.server.take().unwrap().kill();
    made.extend(s.tabs.burst(0, "offline", 2));
    std::thread::sleep(Duration::from_millis(down_ms));
    let wt = s.tabs.ok(0, "return JSON.stringify(window.__wt);");
    eprintln!("down {down_ms} ms: {} ; sessions {wt}", s.tabs.status(0));
    s.restart();
    let start = Instant::now();
    let mut st = s.tabs.status(0);
    while !online(&st) && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(500));
        st = s.tabs.status(0);
    }
    let wt = s.tabs.ok(0, "return JSON.stringify(window.__wt);");
    eprintln!(
        "{:?} after the restart: {st} ; sessions {wt}",
        start.elapsed()
    );
    if !online(&st) {
        bad.push(format!(
            "after {down_ms} ms down, the tab did not reconnect within 60 s of the server's return: {st}; its WebTransport sessions: {wt}"
        ));
    } else {
        let lack = native_lacks(&s, &made, 45);
        if !lack.is_empty() {
            bad.push(format!("writes missing at native: {lack:?}"));
        }
    }
    bad
}

/// Control: 2 s down.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn rt23_control_a_tab_reconnects_after_a_short_outage() {
    let bad = outage(2000);
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn rt23_a_tab_reconnects_after_a_fifteen_second_outage() {
    // RT23_OUTAGE_MS: another length of outage.
    let ms = std::env::var("RT23_OUTAGE_MS").map_or(15000, |v| v.parse().unwrap());
    let bad = outage(ms);
    assert!(bad.is_empty(), "{bad:#?}");
}
