//! The GUI (`rekord-viewer gui`): trees with counts, a virtualized table of the selected tree
//! (one column per top-level field; only the visible rows are read and drawn, every frame),
//! sorting and filtering in the background, a RON editor with inline errors, the borrow and
//! lifecycle buttons, every revision of a record side by side, the schema versions, and
//! live updates from other processes and replicas.
//!
//! [`ViewerApp::show`] draws everything into a [`egui::Ui`]: eframe calls it for the real
//! window, `egui_kittest` for the headless tests.

use crate::filter::Filter;
use crate::render;
use eframe::egui;
use egui_extras::{Column, TableBuilder};
use rekord::schema::dynamic::Value;
use rekord::schema::{Type, TypeDef};
use rekord::{Db, DynRecord, DynTree, Event, EventKind, RawKey, Subscription, TreeInfo};
use std::cmp::Ordering as Cmp;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Keys read synchronously when a tree is opened: the first screen never waits for the
/// background index.
const FIRST_KEYS: usize = 1000;
/// Keys the background index publishes at a time.
const CHUNK: usize = 8192;

/// The viewer's state; see the module docs.
pub struct ViewerApp {
    db: Db,
    events: Subscription,
    waker: Option<std::thread::JoinHandle<()>>,
    trees: Vec<TreeInfo>,
    view: Option<TreeView>,
    status: Status,
    /// Close the window after taking a screenshot to this file (`--screenshot`).
    screenshot: Option<std::path::PathBuf>,
    frames: u64,
}

enum Status {
    None,
    Info(String),
    Error(String),
}

/// The selected tree: its table, index and editor.
struct TreeView {
    tree: DynTree,
    columns: Vec<String>,
    index: Index,
    sort: Option<(usize, bool)>,
    filter: String,
    /// The filter the index was built with.
    indexed_filter: String,
    selected: Option<RawKey>,
    editor: Editor,
    state_input: u32,
}

#[derive(Default)]
struct Editor {
    key: Option<RawKey>,
    text: String,
    original: String,
    /// The text last checked, and what the check said (`None`: valid).
    checked: Option<(String, Option<String>)>,
}

/// The keys of the table in display order, built by a background thread.
struct Index {
    state: Arc<Mutex<IndexState>>,
    cancel: Arc<AtomicBool>,
}

#[derive(Default)]
struct IndexState {
    keys: Vec<RawKey>,
    done: bool,
    scanned: u64,
    error: Option<String>,
}

impl Drop for Index {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding it (none is expected) leaves whole values only.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a sort compares values of a column.
#[derive(Debug, PartialEq)]
enum SortKey {
    Missing,
    Int(i128),
    Float(f64),
    Text(String),
}

impl SortKey {
    fn of(v: Option<&Value>) -> SortKey {
        let Some(v) = v else {
            return SortKey::Missing;
        };
        match v {
            Value::U8(x) => SortKey::Int(i128::from(*x)),
            Value::U16(x) => SortKey::Int(i128::from(*x)),
            Value::U32(x) => SortKey::Int(i128::from(*x)),
            Value::U64(x) => SortKey::Int(i128::from(*x)),
            Value::I8(x) => SortKey::Int(i128::from(*x)),
            Value::I16(x) => SortKey::Int(i128::from(*x)),
            Value::I32(x) => SortKey::Int(i128::from(*x)),
            Value::I64(x) => SortKey::Int(i128::from(*x)),
            Value::I128(x) => SortKey::Int(*x),
            Value::U128(x) => i128::try_from(*x).map_or(SortKey::Int(i128::MAX), SortKey::Int),
            Value::F32(x) => SortKey::Float(f64::from(*x)),
            Value::F64(x) => SortKey::Float(*x),
            Value::String(s) => SortKey::Text(s.clone()),
            other => SortKey::Text(render::one_line(other, 200)),
        }
    }

    fn cmp(&self, other: &SortKey) -> Cmp {
        use SortKey::*;
        match (self, other) {
            (Int(a), Int(b)) => a.cmp(b),
            (Float(a), Float(b)) => a.total_cmp(b),
            (Int(a), Float(b)) => (*a as f64).total_cmp(b),
            (Float(a), Int(b)) => a.total_cmp(&(*b as f64)),
            (Text(a), Text(b)) => a.cmp(b),
            (a, b) => a.rank().cmp(&b.rank()),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            SortKey::Missing => 0,
            SortKey::Int(_) | SortKey::Float(_) => 1,
            SortKey::Text(_) => 2,
        }
    }
}

/// A filter as typed in the GUI: `field=value` / `field~text` on a field of the tree, or
/// free text found anywhere in the record's one-line RON.
enum GuiFilter {
    None,
    Field(Filter),
    Text(String),
}

impl GuiFilter {
    fn parse(text: &str, columns: &[String]) -> GuiFilter {
        let text = text.trim();
        if text.is_empty() {
            return GuiFilter::None;
        }
        let field = text
            .split(['=', '~'])
            .next()
            .map(str::trim)
            .filter(|f| text.contains(['=', '~']) && columns.iter().any(|c| c == f));
        match field.and_then(|_| Filter::parse(text).ok()) {
            Some(f) => GuiFilter::Field(f),
            None => GuiFilter::Text(text.to_owned()),
        }
    }

    fn matches(&self, v: &Value) -> bool {
        match self {
            GuiFilter::None => true,
            GuiFilter::Field(f) => f.matches(v),
            GuiFilter::Text(t) => render::one_line(v, usize::MAX).contains(t.as_str()),
        }
    }
}

impl Index {
    /// Starts indexing `tree` in display order: by key (the first [`FIRST_KEYS`] at once,
    /// the rest in the background), or filtered and sorted (all in the background).
    fn start(
        tree: &DynTree,
        columns: &[String],
        sort: Option<(usize, bool)>,
        filter: &str,
        ctx: Option<egui::Context>,
    ) -> Index {
        let state = Arc::new(Mutex::new(IndexState::default()));
        let cancel = Arc::new(AtomicBool::new(false));
        let filter = GuiFilter::parse(filter, columns);
        let sort = sort.and_then(|(c, asc)| columns.get(c).map(|name| (name.clone(), asc)));
        let plain = sort.is_none() && matches!(filter, GuiFilter::None);
        let mut after = None;
        if plain {
            match tree.keys(..) {
                Ok(keys) => {
                    let mut s = locked(&state);
                    for k in keys.take(FIRST_KEYS) {
                        match k {
                            Ok(k) => s.keys.push(k),
                            Err(e) => s.error = Some(e.to_string()),
                        }
                    }
                    s.scanned = s.keys.len() as u64;
                    s.done = s.keys.len() < FIRST_KEYS || s.error.is_some();
                    after = s.keys.last().copied();
                }
                Err(e) => {
                    let mut s = locked(&state);
                    s.error = Some(e.to_string());
                    s.done = true;
                }
            }
        }
        if !locked(&state).done {
            let (tree, state2, cancel2) = (tree.clone(), state.clone(), cancel.clone());
            std::thread::spawn(move || {
                let r = if plain {
                    index_keys(&tree, after, &state2, &cancel2, ctx.as_ref())
                } else {
                    index_records(&tree, sort, &filter, &state2, &cancel2, ctx.as_ref())
                };
                let mut s = locked(&state2);
                if let Err(e) = r {
                    s.error = Some(e.to_string());
                }
                s.done = true;
                drop(s);
                if let Some(ctx) = ctx {
                    ctx.request_repaint();
                }
            });
        }
        Index { state, cancel }
    }
}

/// The keys after `after`, in key order, published a chunk at a time.
fn index_keys(
    tree: &DynTree,
    after: Option<RawKey>,
    state: &Mutex<IndexState>,
    cancel: &AtomicBool,
    ctx: Option<&egui::Context>,
) -> rekord::Result<()> {
    let from = after.map_or(0, |k| k.id);
    let mut chunk = Vec::with_capacity(CHUNK);
    for k in tree.keys(from..)? {
        let k = k?;
        if after.is_some_and(|a| k <= a) {
            continue;
        }
        chunk.push(k);
        if chunk.len() == CHUNK {
            if cancel.load(Ordering::Relaxed) {
                return Ok(());
            }
            let mut s = locked(state);
            s.scanned += chunk.len() as u64;
            s.keys.append(&mut chunk);
            drop(s);
            if let Some(ctx) = ctx {
                ctx.request_repaint();
            }
        }
    }
    let mut s = locked(state);
    s.scanned += chunk.len() as u64;
    s.keys.append(&mut chunk);
    Ok(())
}

/// Every record read: the ones passing `filter`, sorted by a field if asked.
fn index_records(
    tree: &DynTree,
    sort: Option<(String, bool)>,
    filter: &GuiFilter,
    state: &Mutex<IndexState>,
    cancel: &AtomicBool,
    ctx: Option<&egui::Context>,
) -> rekord::Result<()> {
    let mut sorted: Vec<(SortKey, RawKey)> = Vec::new();
    let mut chunk = Vec::new();
    let mut scanned = 0u64;
    for r in tree.iter()? {
        let r = r?;
        scanned += 1;
        if scanned.is_multiple_of(CHUNK as u64) {
            if cancel.load(Ordering::Relaxed) {
                return Ok(());
            }
            let mut s = locked(state);
            s.scanned = scanned;
            s.keys.append(&mut chunk);
            drop(s);
            if let Some(ctx) = ctx {
                ctx.request_repaint();
            }
        }
        if !filter.matches(&r.value) {
            continue;
        }
        match &sort {
            Some((field, _)) => {
                sorted.push((SortKey::of(render::field(&r.value, field)), r.key.raw()))
            }
            None => chunk.push(r.key.raw()),
        }
    }
    if let Some((_, ascending)) = sort {
        sorted.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        if !ascending {
            sorted.reverse();
        }
        chunk = sorted.into_iter().map(|(_, k)| k).collect();
    }
    let mut s = locked(state);
    s.scanned = scanned;
    s.keys.append(&mut chunk);
    Ok(())
}

/// The top-level field names of a tree's newest schema (one table column each).
fn columns_of(tree: &DynTree) -> Vec<String> {
    let schema = tree.schema();
    match &schema.root {
        Type::Named(name) => match schema.types.get(name) {
            Some(TypeDef::Struct(fields)) => fields.iter().map(|f| f.name.clone()).collect(),
            _ => vec!["value".into()],
        },
        _ => vec!["value".into()],
    }
}

impl ViewerApp {
    /// A viewer of `db`. Writes are offered only when it was opened writable.
    pub fn new(db: Db) -> ViewerApp {
        let events = db.subscribe();
        let trees = db.trees().unwrap_or_default();
        ViewerApp {
            db,
            events,
            waker: None,
            trees,
            view: None,
            status: Status::None,
            screenshot: None,
            frames: 0,
        }
    }

    /// Takes a screenshot of the window into `path` (PNG) after the first frames, then
    /// closes it (for the README's picture).
    pub fn screenshot_to(mut self, path: std::path::PathBuf) -> ViewerApp {
        self.screenshot = Some(path);
        self
    }

    /// Selects tree `name` (as a click on it does).
    pub fn select_tree(&mut self, name: &str, ctx: Option<&egui::Context>) {
        match self.db.dyn_tree(name) {
            Ok(tree) => {
                let columns = columns_of(&tree);
                let index = Index::start(&tree, &columns, None, "", ctx.cloned());
                self.view = Some(TreeView {
                    tree,
                    columns,
                    index,
                    sort: None,
                    filter: String::new(),
                    indexed_filter: String::new(),
                    selected: None,
                    editor: Editor::default(),
                    state_input: 0,
                });
                self.status = Status::None;
            }
            Err(e) => self.status = Status::Error(e.to_string()),
        }
    }

    /// Whether the background index of the selected tree is complete (tests wait for it).
    pub fn indexed(&self) -> bool {
        self.view
            .as_ref()
            .is_none_or(|v| locked(&v.index.state).done)
    }

    /// The keys the table shows, in order.
    pub fn rows(&self) -> Vec<RawKey> {
        self.view
            .as_ref()
            .map(|v| locked(&v.index.state).keys.clone())
            .unwrap_or_default()
    }

    /// The message of the status line (`None` if empty).
    pub fn status(&self) -> Option<&str> {
        match &self.status {
            Status::None => None,
            Status::Info(s) | Status::Error(s) => Some(s),
        }
    }

    /// Handles the changes committed since the last frame: counts, the table's rows, and
    /// the record in the editor (reloaded unless it has unsaved edits).
    fn follow_changes(&mut self, ctx: &egui::Context) {
        let mut trees_changed = false;
        let mut reindex = false;
        let mut reload = false;
        for event in self.events.try_iter() {
            let Event::Record(e) = event else {
                continue;
            };
            trees_changed = true;
            let Some(view) = &self.view else {
                continue;
            };
            if *e.tree != *view.tree.name() {
                continue;
            }
            let sorted_or_filtered = view.sort.is_some() || !view.indexed_filter.is_empty();
            if matches!(
                e.kind,
                EventKind::Created | EventKind::Removed | EventKind::RevisionCreated
            ) || sorted_or_filtered
            {
                reindex = true;
            }
            if view.editor.key.is_some_and(|k| k.id == e.key.id) {
                reload = true;
            }
        }
        if trees_changed {
            self.trees = self.db.trees().unwrap_or_default();
        }
        let Some(view) = &mut self.view else {
            return;
        };
        if reindex {
            view.index = Index::start(
                &view.tree,
                &view.columns,
                view.sort,
                &view.indexed_filter,
                Some(ctx.clone()),
            );
        }
        if reload
            && view.editor.text == view.editor.original
            && let Some(k) = view.editor.key
        {
            view.load(k);
        }
    }

    /// Draws the viewer (the whole window).
    pub fn show(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        self.frames += 1;
        if self.waker.is_none() {
            // Repaint when a change is committed (by this process, or synced from others).
            let events = self.db.subscribe();
            let ctx = ctx.clone();
            self.waker = Some(std::thread::spawn(move || {
                while events.recv_blocking().is_some() {
                    ctx.request_repaint();
                }
            }));
        }
        self.follow_changes(&ctx);
        self.take_screenshot(&ctx);

        let writable = !self.db.is_read_only();
        egui::Panel::left("trees").resizable(true).show(ui, |ui| {
            ui.heading("Trees");
            let mut clicked = None;
            for t in &self.trees {
                let selected = self.view.as_ref().is_some_and(|v| v.tree.name() == t.name);
                let text = format!("{} ({})", t.name, t.records);
                if ui.selectable_label(selected, text).clicked() {
                    clicked = Some(t.name.clone());
                }
            }
            if let Some(name) = clicked {
                self.select_tree(&name, Some(&ctx));
            }
            if self.trees.is_empty() {
                ui.label("(no trees)");
            }
            ui.separator();
            ui.label(if writable {
                "writable"
            } else {
                "read-only (--write to edit)"
            });
        });
        egui::Panel::bottom("status").show(ui, |ui| match &self.status {
            Status::None => {
                ui.label(" ");
            }
            Status::Info(s) => {
                ui.label(s);
            }
            Status::Error(s) => {
                ui.colored_label(ui.visuals().error_fg_color, s);
            }
        });
        let mut status = None;
        if let Some(view) = &mut self.view {
            egui::Panel::right("record")
                .resizable(true)
                .default_size(420.0)
                .show(ui, |ui| {
                    egui::ScrollArea::vertical().show(ui, |ui| {
                        status = view.record_panel(ui, &self.db, writable);
                    });
                });
            egui::CentralPanel::default().show(ui, |ui| {
                view.table(ui, &ctx);
            });
        } else {
            egui::CentralPanel::default().show(ui, |ui| {
                ui.label("Select a tree.");
            });
        }
        if let Some(s) = status {
            self.status = s;
        }
    }

    fn take_screenshot(&mut self, ctx: &egui::Context) {
        let Some(path) = &self.screenshot else {
            return;
        };
        // Let the table fill and the fonts settle first.
        if self.frames != 30 {
            ctx.request_repaint();
            return;
        }
        let (path, ctx2) = (path.clone(), ctx.clone());
        ctx.request_screenshot(move |image| {
            if let Err(e) = save_png(&path, &image) {
                eprintln!("rekord-viewer: cannot save the screenshot: {e}");
            }
            ctx2.send_viewport_cmd(egui::ViewportCommand::Close);
            ctx2.request_repaint();
        });
    }
}

fn save_png(path: &std::path::Path, image: &egui::ColorImage) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let [w, h] = image.size;
    let mut encoder = png::Encoder::new(
        std::io::BufWriter::new(file),
        u32::try_from(w).map_err(|e| e.to_string())?,
        u32::try_from(h).map_err(|e| e.to_string())?,
    );
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    let bytes: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_array()).collect();
    writer.write_image_data(&bytes).map_err(|e| e.to_string())
}

impl TreeView {
    /// Loads record `k` into the editor.
    fn load(&mut self, k: RawKey) {
        self.selected = Some(k);
        let text = match self.tree.get(k) {
            Ok(r) => {
                self.state_input = r.meta.state;
                r.to_ron()
            }
            Err(e) => format!("// {e}"),
        };
        self.editor = Editor {
            key: Some(k),
            original: text.clone(),
            text,
            checked: None,
        };
    }

    fn table(&mut self, ui: &mut egui::Ui, ctx: &egui::Context) {
        let (total, done, scanned, error) = {
            let s = locked(&self.index.state);
            (s.keys.len(), s.done, s.scanned, s.error.clone())
        };
        ui.horizontal(|ui| {
            let label = ui.label("Filter");
            let edit = ui
                .add(
                    egui::TextEdit::singleline(&mut self.filter)
                        .hint_text("field=value, field~text, or any text"),
                )
                .labelled_by(label.id);
            let apply = ui.button("Apply").clicked();
            if (edit.lost_focus() || apply) && self.filter != self.indexed_filter {
                self.indexed_filter = self.filter.clone();
                self.index = Index::start(
                    &self.tree,
                    &self.columns,
                    self.sort,
                    &self.filter,
                    Some(ctx.clone()),
                );
            }
            let count = self.tree.len().unwrap_or(0);
            if done {
                ui.label(format!("{total} shown of {count} revisions"));
            } else {
                ui.spinner();
                ui.label(format!("indexing: {scanned} of {count} read"));
            }
        });
        if let Some(e) = error {
            ui.colored_label(ui.visuals().error_fg_color, e);
        }
        let snapshot = match self.tree.snapshot() {
            Ok(s) => s,
            Err(e) => {
                ui.colored_label(ui.visuals().error_fg_color, e.to_string());
                return;
            }
        };
        let columns = self.columns.clone();
        let mut sort_clicked = None;
        let mut clicked_row = None;
        let row_height = ui.text_style_height(&egui::TextStyle::Body) + 4.0;
        let state = self.index.state.clone();
        TableBuilder::new(ui)
            .striped(true)
            .resizable(true)
            .sense(egui::Sense::click())
            .column(Column::initial(110.0).at_least(60.0))
            .column(Column::initial(110.0).at_least(60.0))
            .column(Column::initial(60.0).at_least(40.0))
            .columns(
                Column::initial(140.0).at_least(40.0).clip(true),
                columns.len(),
            )
            .header(row_height + 4.0, |mut header| {
                header.col(|ui| {
                    ui.strong("key");
                });
                header.col(|ui| {
                    ui.strong("status");
                });
                header.col(|ui| {
                    ui.strong("holder");
                });
                for (i, c) in columns.iter().enumerate() {
                    header.col(|ui| {
                        let arrow = match self.sort {
                            Some((s, true)) if s == i => " (asc)",
                            Some((s, false)) if s == i => " (desc)",
                            _ => "",
                        };
                        if ui.button(format!("{c}{arrow}")).clicked() {
                            sort_clicked = Some(i);
                        }
                    });
                }
            })
            .body(|body| {
                // Only the visible rows are read (one snapshot per frame) and drawn.
                body.rows(row_height, total, |mut row| {
                    let Some(k) = locked(&state).keys.get(row.index()).copied() else {
                        return;
                    };
                    row.set_selected(self.selected == Some(k));
                    // Cells are not selectable text: a click selects the row.
                    let cell = |ui: &mut egui::Ui, text: String| {
                        ui.add(egui::Label::new(text).selectable(false));
                    };
                    match row_texts(&snapshot, k, &columns) {
                        Ok(texts) => {
                            for text in texts {
                                row.col(|ui| cell(ui, text));
                            }
                        }
                        Err(e) => {
                            row.col(|ui| {
                                ui.colored_label(ui.visuals().error_fg_color, e.to_string());
                            });
                        }
                    }
                    if row.response().clicked() {
                        clicked_row = Some(k);
                    }
                });
            });
        if let Some(i) = sort_clicked {
            self.sort = match self.sort {
                Some((s, true)) if s == i => Some((i, false)),
                Some((s, false)) if s == i => None,
                _ => Some((i, true)),
            };
            self.index = Index::start(
                &self.tree,
                &self.columns,
                self.sort,
                &self.indexed_filter,
                Some(ctx.clone()),
            );
        }
        if let Some(k) = clicked_row {
            self.load(k);
        }
    }

    /// The record panel: the editor and the buttons; returns a new status line.
    fn record_panel(&mut self, ui: &mut egui::Ui, db: &Db, writable: bool) -> Option<Status> {
        let Some(k) = self.editor.key else {
            ui.label("Select a record.");
            self.schemas(ui);
            return None;
        };
        let record = self.tree.get(k);
        let mut status = None;
        match &record {
            Ok(r) => {
                ui.heading(format!("{}", r.key));
                ui.label(format!(
                    "{} · holder {} · schema v{}",
                    status_text(r),
                    r.meta.holder,
                    r.meta.version
                ));
            }
            Err(e) => {
                ui.colored_label(ui.visuals().error_fg_color, e.to_string());
            }
        }
        // Checked once per change of the text.
        if self
            .editor
            .checked
            .as_ref()
            .is_none_or(|(t, _)| *t != self.editor.text)
        {
            let problem = self.tree.parse(&self.editor.text).err().map(|e| match e {
                rekord::Error::InvalidRon { error, .. } => error.to_string(),
                other => other.to_string(),
            });
            self.editor.checked = Some((self.editor.text.clone(), problem));
        }
        let problem = self.editor.checked.as_ref().and_then(|(_, p)| p.clone());
        let label = ui.label("Record RON");
        ui.add(
            egui::TextEdit::multiline(&mut self.editor.text)
                .code_editor()
                .desired_rows(12)
                .desired_width(f32::INFINITY),
        )
        .labelled_by(label.id);
        match &problem {
            Some(p) => {
                ui.colored_label(ui.visuals().error_fg_color, p);
            }
            None => {
                ui.label("valid");
            }
        }
        let me = db.replica();
        let (draft, released, holder, latest) = match &record {
            Ok(r) => (
                !r.meta.released,
                r.meta.released,
                r.meta.holder,
                self.tree
                    .latest(k.id)
                    .ok()
                    .flatten()
                    .is_some_and(|l| l.key.raw() == k),
            ),
            Err(_) => (false, false, 0, false),
        };
        let changed = self.editor.text != self.editor.original;
        let mut reload = false;
        ui.horizontal(|ui| {
            let save = writable && changed && problem.is_none() && draft;
            if ui.add_enabled(save, egui::Button::new("Save")).clicked() {
                status = Some(outcome(
                    self.tree.replace_ron(k, &self.editor.text),
                    "saved",
                ));
                reload = true;
            }
            if ui
                .add_enabled(changed, egui::Button::new("Revert"))
                .clicked()
            {
                reload = true;
            }
        });
        ui.horizontal(|ui| {
            if ui
                .add_enabled(
                    writable && latest && holder != me,
                    egui::Button::new("Borrow"),
                )
                .clicked()
            {
                status = Some(outcome(self.tree.borrow(k), "borrowed"));
                reload = true;
            }
            if ui
                .add_enabled(
                    writable && latest && holder == me,
                    egui::Button::new("Return"),
                )
                .clicked()
            {
                status = Some(outcome(self.tree.return_borrow(k), "returned"));
                reload = true;
            }
            if ui
                .add_enabled(
                    writable && draft && holder == me,
                    egui::Button::new("Release"),
                )
                .clicked()
            {
                status = Some(outcome(self.tree.release(k), "released"));
                reload = true;
            }
            if ui
                .add_enabled(
                    writable && released && latest && holder == me,
                    egui::Button::new("New revision"),
                )
                .clicked()
            {
                match self.tree.new_revision(k) {
                    Ok(n) => {
                        status = Some(Status::Info(format!("new revision {n}")));
                        self.load(n.raw());
                    }
                    Err(e) => status = Some(Status::Error(e.to_string())),
                }
            }
        });
        ui.horizontal(|ui| {
            let label = ui.label("State");
            ui.add(egui::DragValue::new(&mut self.state_input))
                .labelled_by(label.id);
            if ui
                .add_enabled(
                    writable && released && holder == me,
                    egui::Button::new("Set state"),
                )
                .clicked()
            {
                status = Some(outcome(
                    self.tree.set_state(k, self.state_input),
                    "state set",
                ));
                reload = true;
            }
        });
        if reload {
            let selected = self.editor.key;
            if let Some(k) = selected
                && self.tree.get(k).is_ok()
            {
                self.load(k);
            }
        }
        ui.separator();
        egui::CollapsingHeader::new("Revisions")
            .default_open(true)
            .show(ui, |ui| self.revisions(ui, k.id));
        self.schemas(ui);
        status
    }

    /// Every revision of record `id` side by side, lines that differ from the revision
    /// before highlighted.
    fn revisions(&self, ui: &mut egui::Ui, id: u64) {
        let revisions = match self.tree.revisions(id) {
            Ok(r) => r,
            Err(e) => {
                ui.colored_label(ui.visuals().error_fg_color, e.to_string());
                return;
            }
        };
        egui::ScrollArea::horizontal()
            .id_salt("revisions")
            .show(ui, |ui| {
                ui.horizontal_top(|ui| {
                    let mut previous: Option<String> = None;
                    for r in &revisions {
                        let text = r.to_ron();
                        ui.vertical(|ui| {
                            ui.strong(format!("@{} {}", r.key.rev, status_text(r)));
                            let before: Vec<&str> = previous
                                .as_deref()
                                .map(|p| p.lines().collect())
                                .unwrap_or_default();
                            for line in text.lines() {
                                let rich = egui::RichText::new(line).monospace();
                                let rich = if previous.is_some() && !before.contains(&line) {
                                    rich.background_color(
                                        ui.visuals().warn_fg_color.gamma_multiply(0.25),
                                    )
                                } else {
                                    rich
                                };
                                ui.add(
                                    egui::Label::new(rich).wrap_mode(egui::TextWrapMode::Extend),
                                );
                            }
                        });
                        previous = Some(text);
                    }
                });
            });
    }

    fn schemas(&self, ui: &mut egui::Ui) {
        egui::CollapsingHeader::new("Schemas").show(ui, |ui| match self.tree.schemas() {
            Ok(schemas) => {
                let mut previous = None;
                for s in &schemas {
                    if let Some(p) = previous {
                        for change in rekord::schema::describe_changes(p, s) {
                            ui.label(format!("· {change}"));
                        }
                    }
                    ui.label(egui::RichText::new(render::schema_text(s)).monospace());
                    previous = Some(s);
                }
            }
            Err(e) => {
                ui.colored_label(ui.visuals().error_fg_color, e.to_string());
            }
        });
    }
}

/// The texts of one table row: key, status, holder, then one cell per column (what a frame
/// reads and formats per visible row; the benchmark measures it).
pub fn row_texts(
    snapshot: &rekord::DynSnapshot,
    k: RawKey,
    columns: &[String],
) -> rekord::Result<Vec<String>> {
    let r = snapshot.get(k)?;
    let mut out = Vec::with_capacity(columns.len() + 3);
    out.push(format!("{}@{}", k.id, k.rev));
    out.push(status_text(&r));
    out.push(r.meta.holder.to_string());
    for c in columns {
        let v = render::field(&r.value, c).unwrap_or(&r.value);
        out.push(render::cell(v, 60));
    }
    Ok(out)
}

/// The table's columns for `tree`: its top-level fields.
pub fn table_columns(tree: &DynTree) -> Vec<String> {
    columns_of(tree)
}

fn status_text(r: &DynRecord) -> String {
    if r.meta.released {
        format!("released ({})", r.meta.state)
    } else {
        "draft".into()
    }
}

fn outcome(r: rekord::Result<()>, what: &str) -> Status {
    match r {
        Ok(()) => Status::Info(what.into()),
        Err(e) => Status::Error(e.to_string()),
    }
}

impl eframe::App for ViewerApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.show(ui);
    }
}

/// Opens the window on `db` (blocks until it is closed).
pub fn run(
    db: Db,
    tree: Option<String>,
    key: Option<RawKey>,
    screenshot: Option<std::path::PathBuf>,
) -> Result<(), crate::ViewerError> {
    let title = "rekord-viewer";
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title(title)
            .with_inner_size([1280.0, 760.0]),
        ..Default::default()
    };
    let mut app = ViewerApp::new(db);
    if let Some(path) = screenshot {
        app = app.screenshot_to(path);
    }
    if let Some(first) = tree.or_else(|| app.trees.first().map(|t| t.name.clone())) {
        app.select_tree(&first, None);
        if let (Some(k), Some(view)) = (key, &mut app.view) {
            view.load(k);
        }
    }
    eframe::run_native(title, options, Box::new(|_cc| Ok(Box::new(app))))
        .map_err(|e| crate::ViewerError::Usage(format!("cannot open a window: {e}")))
}
