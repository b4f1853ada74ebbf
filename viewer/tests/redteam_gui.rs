//! Red team: the GUI (headless) on damaged databases. The files come from
//! `REDTEAM_DAMAGED=DIR cargo test -p rekord --test redteam_untyped viewer_on_damaged_databases`
//! (skipped when REDTEAM_DAMAGED is not set), plus a database with tricky values made here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use eframe::egui;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use rekord::Db;
use rekord_viewer::gui::ViewerApp;
use std::time::{Duration, Instant};

fn harness(app: ViewerApp) -> Harness<'static, ViewerApp> {
    Harness::builder()
        .with_size([1200.0, 700.0])
        .build_ui_state(|ui, app: &mut ViewerApp| app.show(ui), app)
}

fn drive(h: &mut Harness<'_, ViewerApp>, labels: &[&str]) -> Vec<String> {
    let mut seen = vec![];
    let start = Instant::now();
    while !h.state().indexed() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
        h.step();
    }
    for _ in 0..5 {
        h.step();
    }
    seen.push(format!(
        "rows {} status {:?}",
        h.state().rows().len(),
        h.state().status()
    ));
    for l in labels {
        if let Some(n) = h.query_by_label(l) {
            n.click();
            for _ in 0..5 {
                h.step();
            }
            seen.push(format!("clicked {l}: status {:?}", h.state().status()));
        }
    }
    seen
}

#[test]
fn gui_on_damaged_databases() {
    let Ok(dir) = std::env::var("REDTEAM_DAMAGED") else {
        eprintln!("REDTEAM_DAMAGED not set; skipped");
        return;
    };
    let mut panics = vec![];
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let copy = tempfile::NamedTempFile::new().unwrap();
        std::fs::copy(&path, copy.path()).unwrap();
        for write in [false, true] {
            let db = if write {
                Db::open(copy.path())
            } else {
                Db::open_read_only(copy.path())
            };
            let Ok(db) = db else {
                println!("{name} write={write}: does not open");
                continue;
            };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut app = ViewerApp::new(db.clone());
                app.select_tree("parts", None);
                let mut h = harness(app);
                h.step();
                drive(
                    &mut h,
                    &[
                        "p0",
                        "p1",
                        "p2",
                        "qty",
                        "name",
                        "Revisions",
                        "Schema",
                        "Borrow",
                        "Release",
                    ],
                )
            }));
            match r {
                Ok(seen) => println!("{name} write={write}: {}", seen.join("; ")),
                Err(e) => {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    panics.push(format!("{name} write={write}: {msg}"));
                }
            }
        }
    }
    assert!(panics.is_empty(), "GUI panicked:\n{}", panics.join("\n"));
}

#[rekord::record(tree = "odd", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Odd {
    pub c: char,
    pub s: String,
}

/// Records whose one-line rendering is mangled (a `'"'` char): the table, filter and editor.
#[test]
fn gui_on_quote_chars() {
    let db = Db::memory().unwrap();
    let t = db.tree::<Odd>().unwrap();
    for (c, s) in [
        ('"', "a  b"),
        ('\n', "x"),
        ('\\', "y\"z"),
        ('"', &"long ".repeat(40)),
    ] {
        t.create(&Odd { c, s: s.into() }).unwrap();
    }
    let mut app = ViewerApp::new(db.clone());
    app.select_tree("odd", None);
    let mut h = harness(app);
    h.step();
    let seen = drive(&mut h, &["a  b", "a b", "x", "c"]);
    println!("{}", seen.join("\n"));
    h.get_by_label("Filter").focus();
    h.step();
    h.get_by_label("Filter").type_text("s=a  b");
    h.get_by_label("Apply").click();
    let start = Instant::now();
    while !h.state().indexed() && start.elapsed() < Duration::from_secs(10) {
        h.step();
    }
    h.step();
    println!("filter s=a  b: {} rows", h.state().rows().len());
    let _ = egui::Key::A;
}
