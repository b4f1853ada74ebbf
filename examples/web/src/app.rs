//! The parts list: a small web application on rekord (`www/index.html`). The list lives in
//! IndexedDB, survives reloads, and every tab that has the page open shows every other
//! tab's edits as they happen (the tabs share one database).

use std::cell::RefCell;
use std::rc::Rc;

use rekord::{Db, Key, Subscription, Tree};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{Document, Element, HtmlInputElement};

/// One part in stock.
#[rekord::record(tree = "parts")]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// What it is.
    pub name: String,
    /// How many are in stock.
    pub qty: u32,
}

/// The callback redrawing every animation frame.
type Frame = Closure<dyn FnMut()>;

struct App {
    db: Db,
    parts: Tree<Part>,
    events: Subscription,
    document: Document,
    /// Commits made in this tab and in others since the page opened.
    local: u32,
    remote: u32,
    status: String,
}

fn js(e: rekord::Error) -> JsValue {
    JsValue::from_str(&e.to_string())
}

fn element(document: &Document, id: &str) -> Result<Element, JsValue> {
    document
        .get_element_by_id(id)
        .ok_or_else(|| JsValue::from_str(&format!("the page has no #{id}")))
}

/// Text as HTML (names are the user's).
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl App {
    /// Draws the list from the database: every frame reads straight from it.
    fn render(&self) -> Result<(), JsValue> {
        let mut rows: Vec<(Key<Part>, String, u32)> = Vec::new();
        for r in self.parts.iter().map_err(js)? {
            let r = r.map_err(js)?;
            rows.push((r.key(), r.name.to_string(), r.qty.to_native()));
        }
        rows.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.id().cmp(&b.0.id())));
        let mut html = String::new();
        for (k, name, qty) in &rows {
            let id = k.id();
            html.push_str(&format!(
                "<tr><td>{}</td><td class=qty>{qty}</td><td>\
                 <button data-op=dec data-id={id} title=\"one less\">−</button>\
                 <button data-op=inc data-id={id} title=\"one more\">+</button>\
                 <button data-op=del data-id={id} title=\"remove\">✕</button></td></tr>",
                escape(name)
            ));
        }
        if rows.is_empty() {
            html.push_str("<tr><td colspan=3 class=empty>No parts yet: add one above.</td></tr>");
        }
        element(&self.document, "rows")?.set_inner_html(&html);
        let total: u32 = rows.iter().map(|r| r.2).sum();
        element(&self.document, "status")?.set_text_content(Some(&format!(
            "{} parts, {total} in stock · {} edits here, {} from other tabs · {}",
            rows.len(),
            self.local,
            self.remote,
            self.status
        )));
        Ok(())
    }

    fn key(id: &str) -> Option<Key<Part>> {
        id.parse().ok().map(|id| Key::new(id, 0))
    }

    fn click(&mut self, op: &str, id: &str) -> Result<(), JsValue> {
        let Some(k) = App::key(id) else {
            return Ok(());
        };
        match op {
            "inc" => self.parts.update(k, |p| p.qty += 1).map_err(js)?,
            "dec" => self
                .parts
                .update(k, |p| p.qty = p.qty.saturating_sub(1))
                .map_err(js)?,
            "del" => self.parts.remove(k).map_err(js)?,
            _ => {}
        }
        Ok(())
    }

    fn add(&mut self) -> Result<(), JsValue> {
        let input = |id| -> Result<HtmlInputElement, JsValue> {
            element(&self.document, id)?
                .dyn_into::<HtmlInputElement>()
                .map_err(|_| JsValue::from_str("not an input"))
        };
        let (name, qty) = (input("name")?, input("qty")?);
        let text = name.value();
        let text = text.trim();
        if text.is_empty() {
            return Ok(());
        }
        let n = qty.value().trim().parse().unwrap_or(1);
        self.parts
            .create(&Part {
                name: text.to_owned(),
                qty: n,
            })
            .map_err(js)?;
        name.set_value("");
        qty.set_value("1");
        let _ = name.focus();
        Ok(())
    }

    /// How many commits (of this tab or others) arrived since the last frame.
    fn drain_events(&mut self) -> u32 {
        let mut commits = std::collections::HashSet::new();
        for e in self.events.try_iter() {
            if let rekord::Event::Record(r) = e {
                commits.insert(r.commit);
            }
        }
        commits.len() as u32
    }
}

/// Runs the parts list in the page (`www/index.html`): opens (or joins) the database
/// `name` and draws into the page's `#rows` and `#status`.
#[wasm_bindgen]
pub async fn run_parts_app(name: String) -> Result<(), JsValue> {
    let window = web_sys::window().ok_or_else(|| JsValue::from_str("no window"))?;
    let document = window
        .document()
        .ok_or_else(|| JsValue::from_str("no document"))?;
    let db = Db::open_browser(&name).await.map_err(js)?;
    let parts = db.tree::<Part>().map_err(js)?;
    let events = db.subscribe();
    let app = Rc::new(RefCell::new(App {
        db,
        parts,
        events,
        document: document.clone(),
        local: 0,
        remote: 0,
        status: "stored".into(),
    }));
    app.borrow().render()?;

    // Buttons of the list: one listener for all.
    let a = app.clone();
    let on_click = Closure::<dyn FnMut(web_sys::Event)>::new(move |e: web_sys::Event| {
        let Some(target) = e.target().and_then(|t| t.dyn_into::<Element>().ok()) else {
            return;
        };
        let (Some(op), Some(id)) = (
            target.get_attribute("data-op"),
            target.get_attribute("data-id"),
        ) else {
            return;
        };
        let mut app = a.borrow_mut();
        match app.click(&op, &id) {
            Ok(()) => app.local += 1,
            Err(e) => app.status = format!("error: {}", e.as_string().unwrap_or_default()),
        }
    });
    element(&document, "rows")?
        .add_event_listener_with_callback("click", on_click.as_ref().unchecked_ref())?;
    on_click.forget();

    let a = app.clone();
    let on_add = Closure::<dyn FnMut(web_sys::Event)>::new(move |e: web_sys::Event| {
        e.prevent_default();
        let mut app = a.borrow_mut();
        match app.add() {
            Ok(()) => app.local += 1,
            Err(e) => app.status = format!("error: {}", e.as_string().unwrap_or_default()),
        }
    });
    element(&document, "add")?
        .add_event_listener_with_callback("submit", on_add.as_ref().unchecked_ref())?;
    on_add.forget();

    // Every frame: redraw if anything committed (here or in another tab).
    let frame: Rc<RefCell<Option<Frame>>> = Rc::new(RefCell::new(None));
    let again = frame.clone();
    let a = app.clone();
    let w = window.clone();
    let mut seen_local = 0;
    *frame.borrow_mut() = Some(Closure::new(move || {
        let mut app = a.borrow_mut();
        let commits = app.drain_events();
        if commits > 0 {
            // Commits beyond this tab's own clicks came from other tabs.
            app.remote += commits.saturating_sub(app.local - seen_local);
            seen_local = app.local;
            if let Err(e) = app.render() {
                app.status = format!("error: {}", e.as_string().unwrap_or_default());
            }
        }
        if let Some(f) = again.borrow().as_ref() {
            let _ = w.request_animation_frame(f.as_ref().unchecked_ref());
        }
    }));
    if let Some(f) = frame.borrow().as_ref() {
        window.request_animation_frame(f.as_ref().unchecked_ref())?;
    }
    // Kept for the page's lifetime.
    std::mem::forget(frame);

    // The status line says when everything is stored.
    let a = app.clone();
    wasm_bindgen_futures::spawn_local(async move {
        loop {
            let db = a.borrow().db.clone();
            let outcome = db.flush().await;
            {
                let mut app = a.borrow_mut();
                app.status = match outcome {
                    Ok(()) => "everything stored".into(),
                    Err(e) => format!("not stored: {e}"),
                };
                let _ = app.render();
            }
            sleep(1000).await;
        }
    });
    Ok(())
}

async fn sleep(ms: i32) {
    let p = js_sys::Promise::new(&mut |resolve, _| {
        if let Some(w) = web_sys::window() {
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(p).await;
}
