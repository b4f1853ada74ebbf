//! An immediate-mode GUI (egui) that reads the records it shows straight from the database
//! on every frame, the way rekord is meant to be used from a GUI: no view model, no copies.
//!
//! The table asks the tree for its visible rows each frame with `Tree::with` (zero-copy
//! archived access, served from the hot-record cache after the first frames); edits take the
//! record's borrow from the server, change it, and give it back; a peer replica on another
//! thread keeps changing the inventory through the same server, and its changes show up at
//! once (the subscription wakes the window).
//!
//! ```sh
//! cargo run --example inventory_gui                   # the window
//! cargo run --example inventory_gui -- --headless 300 # 300 frames without a window (CI)
//! ```
//!
//! Both print the median cost of drawing the table's visible rows per frame.

use eframe::egui;
use egui_extras::{Column, TableBuilder};
use rekord::proto::handshake::Trees;
use rekord::{Db, Event, EventKind, Key, SyncConfig, Tree};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A part in the inventory.
#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// What it is.
    pub name: String,
    /// How many are in stock.
    pub qty: u32,
    /// Where it is stored.
    pub bin: String,
}

const APP: &str = "rekord";
const LIMIT: Duration = Duration::from_secs(10);

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The window's state: the tree handle and the keys in display order. Record data is never
/// copied out: every frame reads what it shows.
struct Inventory {
    db: Db,
    parts: Tree<Part>,
    keys: Vec<Key<Part>>,
    events: rekord::Subscription,
    selected: Option<Key<Part>>,
    message: String,
    /// Cost of drawing the visible rows, last frames (microseconds).
    row_costs: Vec<u64>,
    /// Changes made by the peer seen so far.
    remote_changes: u64,
}

impl Inventory {
    fn new(db: Db) -> Res<Inventory> {
        let parts = db.tree::<Part>()?;
        let events = db.subscribe();
        let keys = parts.keys()?;
        Ok(Inventory {
            db,
            parts,
            keys,
            events,
            selected: None,
            message: String::new(),
            row_costs: Vec::new(),
            remote_changes: 0,
        })
    }

    /// The median cost of drawing the visible rows (microseconds).
    fn median_row_cost(&self) -> u64 {
        let mut c = self.row_costs.clone();
        c.sort_unstable();
        c.get(c.len() / 2).copied().unwrap_or(0)
    }

    fn ui(&mut self, ui: &mut egui::Ui) {
        // Changes committed since the last frame: new or removed records change the key
        // list; anything else is simply read again when drawn.
        let me = self.db.replica();
        let mut rekey = false;
        for e in self.events.try_iter() {
            if let Event::Record(r) = e {
                if r.origin != me {
                    self.remote_changes += 1;
                }
                rekey |= matches!(r.kind, EventKind::Created | EventKind::Removed);
            }
        }
        if rekey {
            self.keys = self.parts.keys().unwrap_or_default();
        }
        ui.heading(format!(
            "{} parts · {} changes from the peer · rows drawn in {} µs (median)",
            self.keys.len(),
            self.remote_changes,
            self.median_row_cost()
        ));
        ui.horizontal(|ui| {
            let selected = self.selected;
            let held = selected.is_some_and(|k| {
                self.parts
                    .latest(k.id())
                    .ok()
                    .flatten()
                    .and_then(|l| self.parts.meta(l).ok())
                    .is_some_and(|m| m.holder == me)
            });
            if ui
                .add_enabled(selected.is_some() && !held, egui::Button::new("Borrow"))
                .clicked()
                && let Some(k) = selected
            {
                self.message = match self.parts.borrow(k) {
                    Ok(()) => "borrowed".into(),
                    Err(e) => e.to_string(),
                };
            }
            if ui.add_enabled(held, egui::Button::new("+1")).clicked()
                && let Some(k) = selected
            {
                self.message = match self.parts.update(k, |p| p.qty += 1) {
                    Ok(()) => "updated".into(),
                    Err(e) => e.to_string(),
                };
            }
            if ui.add_enabled(held, egui::Button::new("Return")).clicked()
                && let Some(k) = selected
            {
                self.message = match self.parts.return_borrow(k) {
                    Ok(()) => "returned".into(),
                    Err(e) => e.to_string(),
                };
            }
            ui.label(&self.message);
        });
        let row_height = ui.text_style_height(&egui::TextStyle::Body) + 4.0;
        let mut clicked = None;
        let start = Instant::now();
        TableBuilder::new(ui)
            .striped(true)
            .sense(egui::Sense::click())
            .column(Column::initial(80.0))
            .column(Column::initial(220.0))
            .column(Column::initial(80.0))
            .column(Column::initial(80.0))
            .column(Column::remainder())
            .header(row_height, |mut h| {
                for title in ["id", "name", "qty", "bin", "holder"] {
                    h.col(|ui| {
                        ui.strong(title);
                    });
                }
            })
            .body(|body| {
                body.rows(row_height, self.keys.len(), |mut row| {
                    let key = self.keys[row.index()];
                    row.set_selected(self.selected == Some(key));
                    let holder = self.parts.meta(key).map(|m| m.holder).unwrap_or(0);
                    // Zero-copy: the archived record, read in place every frame.
                    let shown = self.parts.with(key, |p| {
                        row.col(|ui| {
                            ui.label(key.id().to_string());
                        });
                        row.col(|ui| {
                            ui.label(p.name.as_str());
                        });
                        row.col(|ui| {
                            ui.label(p.qty.to_native().to_string());
                        });
                        row.col(|ui| {
                            ui.label(p.bin.as_str());
                        });
                    });
                    if shown.is_ok() {
                        row.col(|ui| {
                            ui.label(match holder {
                                0 => "-".to_owned(),
                                h if h == me => "me".to_owned(),
                                h => format!("replica {h}"),
                            });
                        });
                    }
                    if row.response().clicked() {
                        clicked = Some(key);
                    }
                });
            });
        self.row_costs.push(start.elapsed().as_micros() as u64);
        if self.row_costs.len() > 240 {
            self.row_costs.remove(0);
        }
        if clicked.is_some() {
            self.selected = clicked;
        }
    }
}

impl eframe::App for Inventory {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        egui::CentralPanel::default().show(ui, |ui| self.ui(ui));
    }
}

/// The peer: another replica that keeps the inventory moving (creates parts, and borrows,
/// changes and returns the ones nobody holds).
fn peer(db: Db, stop: Arc<AtomicBool>) -> Res<u64> {
    let parts = db.tree::<Part>()?;
    let mut changes = 0u64;
    let mut n = 0u32;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        if n.is_multiple_of(4) {
            parts.create(&Part {
                name: format!("spring {n}"),
                qty: n,
                bin: format!("C{}", n % 9),
            })?;
        } else {
            let keys = parts.keys()?;
            if let Some(k) = keys.get(n as usize % keys.len().max(1))
                && parts.meta(*k)?.holder == 0
                && parts.borrow(*k).is_ok()
            {
                parts.update(*k, |p| p.qty = p.qty.wrapping_add(3) % 1000)?;
                parts.return_borrow(*k)?;
            }
        }
        changes += 1;
        std::thread::sleep(Duration::from_millis(40));
    }
    db.wait_pushed(LIMIT)?;
    Ok(changes)
}

fn main() -> Res<()> {
    let headless: Option<u32> = match std::env::args().nth(1).as_deref() {
        Some("--headless") => Some(
            std::env::args()
                .nth(2)
                .map(|n| n.parse())
                .transpose()?
                .unwrap_or(300),
        ),
        _ => None,
    };
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let config = rekord_server::Config {
        listen: "127.0.0.1:0".parse()?,
        data: dir.path().join("server"),
        app: APP.into(),
        ..Default::default()
    };
    let server = rt.block_on(async { rekord_server::Server::bind(config) })?;
    let addr = server.local_addr()?;
    let token = server.store().issue("demo", Trees::All, Trees::All)?;
    let (end, ended) = tokio::sync::oneshot::channel::<()>();
    let serving = rt.spawn(server.serve(async {
        let _ = ended.await;
    }));
    let open = |name: &str| -> Res<Db> {
        let db = Db::open_synced(
            dir.path().join(format!("{name}.rekord")),
            SyncConfig::new(addr, APP, token.as_str()),
        )?;
        db.wait_caught_up(LIMIT)?;
        Ok(db)
    };
    let (mine, theirs) = (open("gui")?, open("peer")?);
    // A starting inventory, made by this replica (it returns every borrow: the peer may
    // change them too).
    let parts = mine.tree::<Part>()?;
    let names = [
        "bolt M6",
        "nut M6",
        "washer M6",
        "screw M4",
        "rivet 3mm",
        "pin 2mm",
    ];
    for i in 0..500u32 {
        let k = parts.create(&Part {
            name: names[i as usize % names.len()].into(),
            qty: i * 7 % 1000,
            bin: format!("A{}", i % 12),
        })?;
        parts.return_borrow(k)?;
    }
    mine.wait_pushed(LIMIT)?;

    let stop = Arc::new(AtomicBool::new(false));
    let peer_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || peer(theirs, stop).map_err(|e| e.to_string()))
    };
    let mut app = Inventory::new(mine.clone())?;
    match headless {
        Some(frames) => {
            // The same UI code through egui, without a window: what CI runs.
            let ctx = egui::Context::default();
            let input = || egui::RawInput {
                screen_rect: Some(egui::Rect::from_min_size(
                    egui::Pos2::ZERO,
                    egui::vec2(1280.0, 720.0),
                )),
                ..Default::default()
            };
            let start = Instant::now();
            let mut frame = 0;
            // At least `frames` frames, and until the peer's changes were seen.
            while frame < frames || app.remote_changes == 0 {
                let mut out = ctx.run_ui(input(), |ui| {
                    egui::CentralPanel::default().show(ui, |ui| app.ui(ui));
                });
                // No renderer: the font atlas updates are dropped on purpose.
                out.textures_delta.clear();
                frame += 1;
                std::thread::sleep(Duration::from_millis(2));
                if start.elapsed() > LIMIT * 2 {
                    return Err("the peer's changes never arrived".into());
                }
            }
            println!(
                "{frame} frames: {} parts, {} changes from the peer seen live, visible rows drawn in {} µs per frame (median)",
                app.keys.len(),
                app.remote_changes,
                app.median_row_cost()
            );
        }
        None => {
            eframe::run_native(
                "rekord inventory",
                eframe::NativeOptions::default(),
                Box::new(move |_cc| Ok(Box::new(app))),
            )?;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let changes = peer_thread
        .join()
        .map_err(|_| "the peer thread panicked")??;
    println!("the peer made {changes} changes");
    drop(mine);
    let _ = end.send(());
    rt.block_on(serving)??;
    Ok(())
}
