//! The GUI, headless (egui_kittest): driven by its labels like a person would, checking what
//! it shows and what reached the database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use eframe::egui;
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT as _, Queryable as _};
use rekord::{Db, Key};
use rekord_viewer::gui::ViewerApp;
use std::time::{Duration, Instant};

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
}

#[rekord::record(tree = "notes", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub text: String,
}

fn harness(app: ViewerApp) -> Harness<'static, ViewerApp> {
    Harness::builder()
        .with_size([1200.0, 700.0])
        .build_ui_state(|ui, app: &mut ViewerApp| app.show(ui), app)
}

/// Steps until the background index is done (bounded).
fn settle(h: &mut Harness<'_, ViewerApp>) {
    let start = Instant::now();
    while !h.state().indexed() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "indexing never ended"
        );
        std::thread::sleep(Duration::from_millis(5));
        h.step();
    }
    h.run_ok();
}

fn disabled(h: &Harness<'_, ViewerApp>, label: &str) -> bool {
    h.get_by_label(label).accesskit_node().is_disabled()
}

fn app_db() -> (Db, Vec<Key<Part>>) {
    let db = Db::memory().unwrap();
    let parts = db.tree::<Part>().unwrap();
    let keys = (0..30)
        .map(|i| {
            parts
                .create(&Part {
                    name: format!("part-{i:02}"),
                    qty: 100 - i,
                })
                .unwrap()
        })
        .collect();
    db.tree::<Note>()
        .unwrap()
        .create(&Note { text: "hi".into() })
        .unwrap();
    (db, keys)
}

#[test]
fn browse_sort_filter_and_edit() {
    let (db, keys) = app_db();
    let mut h = harness(ViewerApp::new(db.clone()));
    h.run_ok();
    // Trees with their counts; a click opens one.
    h.get_by_label("notes (1)");
    h.get_by_label("parts (30)").click();
    settle(&mut h);
    assert_eq!(h.state().rows().len(), 30);
    h.get_by_label("part-00");
    h.get_by_label("100");

    // Sort by qty (ascending): the smallest quantity first.
    h.get_by_label("qty").click();
    settle(&mut h);
    assert_eq!(h.state().rows()[0], keys[29].raw());
    h.get_by_label("qty (asc)").click();
    settle(&mut h);
    assert_eq!(h.state().rows()[0], keys[0].raw());

    // Filter on a field, then on free text.
    h.get_by_label("Filter").focus();
    h.run_ok();
    h.get_by_label("Filter").type_text("qty=95");
    h.get_by_label("Apply").click();
    settle(&mut h);
    assert_eq!(h.state().rows(), [keys[5].raw()]);
    h.get_by_label("Filter").focus();
    h.run_ok();
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    h.get_by_label("Filter").type_text("part-1");
    h.get_by_label("Apply").click();
    settle(&mut h);
    assert_eq!(h.state().rows().len(), 10);

    // Select a record; edit it in the RON editor; invalid text disables Save and says why.
    h.get_by_label("part-12").click();
    h.run_ok();
    let editor = h.get_by_label("Record RON");
    editor.focus();
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    h.get_by_label("Record RON")
        .type_text("(name: \"part-12\", qty: -5)");
    h.run_ok();
    assert!(disabled(&h, "Save"));
    h.get_by_label_contains("does not fit");
    h.get_by_label("Record RON").focus();
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    h.get_by_label("Record RON")
        .type_text("(name: \"renamed\", qty: 5)");
    h.run_ok();
    h.get_by_label("valid");
    assert!(!disabled(&h, "Save"));
    h.get_by_label("Save").click();
    h.run_ok();
    let parts = db.tree::<Part>().unwrap();
    assert_eq!(parts.get(keys[12]).unwrap().name, "renamed");
}

/// A read-only database shows everything and offers no change.
#[test]
fn a_read_only_database_offers_no_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.rekord");
    drop(app_db_file(&path));
    let db = Db::open_read_only(&path).unwrap();
    let mut h = harness(ViewerApp::new(db));
    h.run_ok();
    h.get_by_label("read-only (--write to edit)");
    h.get_by_label("parts (3)").click();
    settle(&mut h);
    h.get_by_label("nut").click();
    h.run_ok();
    for button in ["Borrow", "Return", "Release", "New revision", "Set state"] {
        assert!(disabled(&h, button), "{button}");
    }
    h.get_by_label("Record RON").focus();
    h.get_by_label("Record RON").type_text(" ");
    h.run_ok();
    assert!(disabled(&h, "Save"));
}

#[test]
fn edits_reach_the_database_and_follow_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.rekord");
    let keys = {
        let (db, keys) = app_db_file(&path);
        drop(db);
        keys
    };
    let db = Db::open(&path).unwrap();
    let mut h = harness(ViewerApp::new(db.clone()));
    h.run_ok();
    h.get_by_label("parts (3)").click();
    settle(&mut h);
    h.get_by_label("bolt").click();
    h.run_ok();
    h.get_by_label("Record RON").focus();
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    h.get_by_label("Record RON")
        .type_text("(name: \"bolt\", qty: 77)");
    h.run_ok();
    h.get_by_label("Save").click();
    h.run_ok();
    let parts = db.tree::<Part>().unwrap();
    assert_eq!(parts.get(keys[0]).unwrap().qty, 77);
    assert_eq!(h.state().status(), Some("saved"));

    // Release, then a new revision; Save is refused on a released revision.
    h.get_by_label("Release").click();
    h.run_ok();
    assert!(parts.meta(keys[0]).unwrap().released);
    assert!(disabled(&h, "Save"));
    h.get_by_label("New revision").click();
    h.run_ok();
    assert_eq!(parts.latest(keys[0].id()).unwrap().unwrap().rev(), 1);
    // Both revisions side by side.
    h.get_by_label_contains("@0 released");
    h.get_by_label_contains("@1 draft");

    // Return the borrow: editing buttons follow.
    h.get_by_label("Return").click();
    h.run_ok();
    assert_eq!(parts.meta(keys[0].with_rev(1)).unwrap().holder, 0);
    assert!(disabled(&h, "Release"));
    h.get_by_label("Borrow").click();
    h.run_ok();
    assert_ne!(parts.meta(keys[0].with_rev(1)).unwrap().holder, 0);

    // A change committed elsewhere shows up without reloading.
    parts
        .create(&Part {
            name: "fresh".into(),
            qty: 1,
        })
        .unwrap();
    let start = Instant::now();
    while !h.state().rows().iter().any(|k| k.id > keys[2].id()) {
        assert!(start.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(5));
        h.step();
    }
    settle(&mut h);
    h.get_by_label("fresh");
    h.get_by_label("parts (5)");
}

fn app_db_file(path: &std::path::Path) -> (Db, Vec<Key<Part>>) {
    let db = Db::open(path).unwrap();
    let parts = db.tree::<Part>().unwrap();
    let keys = ["bolt", "nut", "washer"]
        .iter()
        .map(|n| {
            parts
                .create(&Part {
                    name: (*n).into(),
                    qty: 1,
                })
                .unwrap()
        })
        .collect();
    (db, keys)
}
