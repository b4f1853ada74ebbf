//! The command line: what to open, and the commands.

use crate::ViewerError;
use crate::filter::Filter;
use crate::render;
use clap::{Args, Parser, Subcommand};
use rekord::{Db, DynRecord, DynTree, Event, EventKind, RawKey, SyncConfig};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Browse and edit any rekord database as RON, without the application's code.
#[derive(Debug, Parser)]
#[command(name = "rekord-viewer", version)]
pub struct Cli {
    /// Where the database is.
    #[command(flatten)]
    pub source: Source,
    /// Allow changes (a database file is opened read-only otherwise).
    #[arg(long, global = true)]
    pub write: bool,
    /// Print JSON (one document per command; one line per event for `follow`).
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A database file, or a server to connect to as a synced replica.
#[derive(Debug, Args)]
pub struct Source {
    /// The database file (an application's own rekord file).
    #[arg(long, global = true, conflicts_with = "server")]
    pub db: Option<PathBuf>,
    /// A rekord server (host:port): the viewer becomes a replica of its database.
    #[arg(long, global = true, requires = "token")]
    pub server: Option<std::net::SocketAddr>,
    /// The token to connect with (as `rekord-server token issue` printed it).
    #[arg(long, global = true, env = "REKORD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The application name the server serves.
    #[arg(long, global = true, default_value = "rekord")]
    pub app: String,
    /// Pin the server: its id and certificate fingerprint, as `rekord-server identity`
    /// prints them (`UUID:FINGERPRINT`).
    #[arg(long, global = true)]
    pub pin: Option<String>,
    /// Keep the replica in this file (default: in memory, caught up on every start).
    #[arg(long, global = true)]
    pub replica: Option<PathBuf>,
    /// How long to wait for the server (seconds).
    #[arg(long, global = true, default_value_t = 30)]
    pub wait: u64,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Lists the trees: name, records (all revisions), schema versions.
    Trees,
    /// Prints a tree's schemas (every version), or what changed between two versions.
    Schema {
        /// The tree.
        tree: String,
        /// Two versions to compare (old new).
        #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
        diff: Option<Vec<u32>>,
    },
    /// Lists records: key, released/draft and state, holder, and a one-line summary.
    Ls {
        /// The tree.
        tree: String,
        /// At most this many rows.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Start at this record id.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Only records whose top-level field equals a value (`qty=3`, `name="bolt"`) or
        /// contains text (`name~bol`); repeat to require several.
        #[arg(long = "where", value_name = "FIELD=VALUE")]
        filters: Vec<String>,
        /// Every revision (default: the latest of each record).
        #[arg(long)]
        all: bool,
    },
    /// Prints a record as RON (KEY is ID for the latest revision, or ID@REV).
    Get {
        /// The tree.
        tree: String,
        /// The record.
        key: String,
        /// Every revision of the record.
        #[arg(long)]
        all: bool,
    },
    /// Creates a record from RON text (needs --write).
    Create {
        /// The tree.
        tree: String,
        /// The record as RON, e.g. `(name: "bolt", qty: 3)`.
        ron: String,
    },
    /// Edits a draft in $EDITOR (reopened with the error when the edit is refused), or
    /// replaces it with --ron (needs --write). On a server, the record is borrowed for the
    /// edit and returned after it (refused while another replica holds it).
    Edit {
        /// The tree.
        tree: String,
        /// The record.
        key: String,
        /// The new record as RON (instead of an editor).
        #[arg(long)]
        ron: Option<String>,
    },
    /// Releases (freezes) a draft (needs --write).
    Release {
        /// The tree.
        tree: String,
        /// The record.
        key: String,
    },
    /// Sets the state of a released revision (needs --write).
    State {
        /// The tree.
        tree: String,
        /// The record.
        key: String,
        /// The new state.
        state: u32,
    },
    /// Makes the next revision of a record whose latest is released (needs --write).
    NewRevision {
        /// The tree.
        tree: String,
        /// The record.
        key: String,
    },
    /// Takes a record's borrow (from the server, for a synced replica; needs --write).
    Borrow {
        /// The tree.
        tree: String,
        /// The record.
        key: String,
    },
    /// Returns a record's borrow (needs --write).
    Return {
        /// The tree.
        tree: String,
        /// The record.
        key: String,
    },
    /// Removes a draft revision (needs --write).
    Remove {
        /// The tree.
        tree: String,
        /// The record.
        key: String,
    },
    /// Writes a tree (or several, or the whole database) to a RON file: schemas, keys,
    /// revisions, metadata and data, exactly.
    Export {
        /// The file to write (`-` for standard output).
        #[arg(long)]
        out: PathBuf,
        /// Only this tree (repeat for several; default: every tree).
        #[arg(long = "tree")]
        trees: Vec<String>,
    },
    /// Reads an export into the database (needs --write; a standalone database): all of
    /// its records or, on any problem, none.
    Import {
        /// The export file.
        file: PathBuf,
    },
    /// Opens the GUI: trees, a table of records, a RON editor, borrows and revisions, live
    /// updates (needs a display; --write to edit).
    Gui {
        /// Select this tree first (default: the first).
        #[arg(long)]
        tree: Option<String>,
        /// Open this record of the tree in the editor (ID or ID@REV).
        #[arg(long, requires = "tree")]
        key: Option<String>,
        /// Save a PNG screenshot of the window once it has drawn, then close it.
        #[arg(long)]
        screenshot: Option<PathBuf>,
    },
    /// Prints changes as they happen (made here, by another process's commits seen
    /// through a server, or by other replicas).
    Follow {
        /// Only this tree.
        #[arg(long)]
        tree: Option<String>,
        /// Stop after this many changes.
        #[arg(long)]
        count: Option<usize>,
    },
}

impl Command {
    /// Whether the command changes the database.
    fn writes(&self) -> bool {
        matches!(
            self,
            Command::Create { .. }
                | Command::Edit { .. }
                | Command::Release { .. }
                | Command::State { .. }
                | Command::NewRevision { .. }
                | Command::Borrow { .. }
                | Command::Return { .. }
                | Command::Remove { .. }
                | Command::Import { .. }
        )
    }
}

/// Opens what `source` names. A file must exist (unless `write` and `create`), and is
/// opened read-only unless `write` (then nothing of it is written); one in use by another
/// process is
/// [`ViewerError::InUse`]. A server is waited for (catching up) up to `--wait` seconds.
pub fn open(source: &Source, write: bool, create: bool) -> Result<Db, ViewerError> {
    if let Some(addr) = source.server {
        let token = source
            .token
            .clone()
            .ok_or_else(|| ViewerError::Usage("--server needs --token".into()))?;
        let mut config = SyncConfig::new(addr, &source.app, &token)
            .timeout(Duration::from_secs(source.wait.max(1)));
        if let Some(pin) = &source.pin {
            let (id, fingerprint) = pin.split_once(':').ok_or_else(|| {
                ViewerError::Usage(
                    "--pin is UUID:FINGERPRINT (see `rekord-server identity`)".into(),
                )
            })?;
            config = config.pin(rekord::net::Pin::parse(id, fingerprint)?);
        }
        let db = match &source.replica {
            Some(path) => Db::open_synced(path, config)?,
            None => Db::memory_synced(config)?,
        };
        db.wait_caught_up(Duration::from_secs(source.wait))?;
        return Ok(db);
    }
    let path = source.db.clone().ok_or_else(|| {
        ViewerError::Usage("give a database: --db FILE, or --server ADDR --token TOKEN".into())
    })?;
    let may_create = write && create;
    if !path.exists() && !may_create {
        return Err(ViewerError::Missing { path });
    }
    if !may_create && std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
        return Err(ViewerError::Usage(format!(
            "{} is empty: not a rekord database",
            path.display()
        )));
    }
    // A replica's file is recognised read-only, before a writable open touches its header.
    if write && path.exists() {
        match Db::open_read_only(&path) {
            Ok(db) if db.is_synced() => return Err(ViewerError::Replica { path }),
            Err(rekord::Error::Locked { .. }) => return Err(ViewerError::InUse { path }),
            _ => {}
        }
    }
    let opened = if write {
        Db::open(&path)
    } else {
        Db::open_read_only(&path)
    };
    match opened {
        Ok(db) => Ok(db),
        Err(rekord::Error::Locked { .. }) => Err(ViewerError::InUse { path }),
        Err(rekord::Error::Mode {
            found: "synced", ..
        }) => Err(ViewerError::Replica { path }),
        Err(e) => Err(e.into()),
    }
}

/// Runs a command line, printing to `out`.
pub fn run(cli: &Cli, out: &mut dyn Write) -> Result<(), ViewerError> {
    if cli.command.writes() && !cli.write {
        return Err(ViewerError::ReadOnly);
    }
    if cli.source.server.is_some()
        && cli.source.replica.is_none()
        && matches!(cli.command, Command::Borrow { .. })
    {
        return Err(ViewerError::Usage(
            "without --replica FILE the viewer is a replica that ends with this command: a \
             borrow it took could never be returned. Give --replica FILE (a new file, or the \
             one of an earlier viewer run; never a copy of an application's file) and return \
             it later with the same --replica"
                .into(),
        ));
    }
    if cli.source.server.is_none() && matches!(cli.command, Command::Follow { .. }) {
        return Err(ViewerError::Usage(
            "follow needs a server: while the viewer has a database file open, no other \
             process can open it, so no change would ever come. Connect to the application's \
             server instead: rekord-viewer --server ADDR --token TOKEN follow"
                .into(),
        ));
    }
    // An import may make a new database file (nothing else creates one), once its input
    // is known to be an export; the new file goes again if the import fails.
    let create = match &cli.command {
        Command::Import { file } => {
            crate::transfer::check_header(file)?;
            true
        }
        _ => false,
    };
    // A new file is one this run creates itself, exclusively (never a file or link that
    // was there): only such a file goes again when the import fails.
    let new_file = match (&cli.source.db, create && cli.write) {
        (Some(p), true) => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p)
            .ok()
            .map(|_| p.clone()),
        _ => None,
    };
    if cli.write && cli.source.server.is_none() && !create {
        match precheck(cli) {
            // Recovering a file not closed cleanly writes: the writable open does it.
            Ok(()) | Err(ViewerError::Db(rekord::Error::NeedsRecovery { .. })) => {}
            Err(e) => return Err(e),
        }
    }
    let db = match open(&cli.source, cli.write, create) {
        Ok(db) => db,
        Err(e) => {
            if let Some(path) = new_file {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
    };
    let mut imported = false;
    let r = execute(&db, cli, out, &mut imported);
    if let (Err(_), Some(path), false) = (&r, new_file, imported) {
        drop(db);
        let _ = std::fs::remove_file(path);
        return r;
    }
    // A synced replica sends what it changed before the viewer exits, whatever the
    // outcome (a failed edit still returns the borrow it took).
    if cli.command.writes() && db.is_synced() {
        let pushed = db.wait_pushed(Duration::from_secs(cli.source.wait));
        r?;
        pushed?;
        return Ok(());
    }
    r
}

/// Checks a change read-only before the file is opened for writing: the tree, the key and
/// the RON text. (redb rewrites its bookkeeping whenever a file opened for writing is
/// closed, so a change refused only then leaves the records as they were but not every
/// byte of the file.)
fn precheck(cli: &Cli) -> Result<(), ViewerError> {
    let (tree, key, ron) = match &cli.command {
        Command::Create { tree, ron } => (tree, None, Some(ron)),
        Command::Edit { tree, key, ron } => (tree, Some(key), ron.as_ref()),
        Command::Release { tree, key }
        | Command::State { tree, key, .. }
        | Command::NewRevision { tree, key }
        | Command::Borrow { tree, key }
        | Command::Return { tree, key }
        | Command::Remove { tree, key } => (tree, Some(key), None),
        _ => return Ok(()),
    };
    let db = open(&cli.source, false, false)?;
    let t = db.dyn_tree(tree)?;
    if let Some(key) = key {
        let k = parse_key(&t, key)?;
        t.get(k)?;
    }
    if let Some(text) = ron {
        t.parse(text)?;
    }
    Ok(())
}

/// Whether `a` and `b` name the same file (compared once both exist).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn parse_key(tree: &DynTree, text: &str) -> Result<RawKey, ViewerError> {
    let bad = || {
        ViewerError::Usage(format!(
            "`{text}` is not a key: give ID (its latest revision) or ID@REV"
        ))
    };
    match text.split_once('@') {
        Some((id, rev)) => Ok(RawKey::new(
            id.trim().parse().map_err(|_| bad())?,
            rev.trim().parse().map_err(|_| bad())?,
        )),
        None => {
            let id: u64 = text.trim().parse().map_err(|_| bad())?;
            match tree.latest(id)? {
                Some(r) => Ok(r.key.raw()),
                None => Err(rekord::Error::NotFound {
                    tree: tree.name().to_owned(),
                    key: RawKey::new(id, 0),
                }
                .into()),
            }
        }
    }
}

fn record_json(r: &DynRecord) -> serde_json::Value {
    serde_json::json!({
        "tree": &*r.key.tree,
        "id": r.key.id,
        "rev": r.key.rev,
        "released": r.meta.released,
        "state": r.meta.state,
        "holder": r.meta.holder,
        "version": r.meta.version,
        "data": render::json(&r.value),
    })
}

fn print_record(out: &mut dyn Write, r: &DynRecord, json: bool) -> Result<(), ViewerError> {
    if json {
        writeln!(out, "{}", record_json(r))?;
    } else {
        writeln!(
            out,
            "// {} {} holder {} schema v{}",
            r.key,
            status(r),
            r.meta.holder,
            r.meta.version
        )?;
        writeln!(out, "{}", r.to_ron())?;
    }
    Ok(())
}

fn status(r: &DynRecord) -> String {
    if r.meta.released {
        format!("released (state {})", r.meta.state)
    } else {
        "draft".into()
    }
}

fn execute(
    db: &Db,
    cli: &Cli,
    out: &mut dyn Write,
    imported: &mut bool,
) -> Result<(), ViewerError> {
    let json = cli.json;
    match &cli.command {
        Command::Trees => {
            let trees = db.trees()?;
            if json {
                let list: Vec<_> = trees
                    .iter()
                    .map(|t| serde_json::json!({"name": t.name, "records": t.records, "versions": t.versions}))
                    .collect();
                writeln!(out, "{}", serde_json::Value::Array(list))?;
            } else {
                writeln!(out, "{:<24} {:>10}  versions", "tree", "records")?;
                for t in trees {
                    let versions: Vec<String> = t.versions.iter().map(u32::to_string).collect();
                    writeln!(
                        out,
                        "{:<24} {:>10}  {}",
                        t.name,
                        t.records,
                        versions.join(", ")
                    )?;
                }
            }
        }
        Command::Schema { tree, diff } => {
            let t = db.dyn_tree(tree)?;
            let schemas = t.schemas()?;
            if let Some(d) = diff {
                let find = |v: u32| {
                    schemas.iter().find(|s| s.version == v).ok_or_else(|| {
                        ViewerError::Usage(format!("tree `{tree}` has no schema version {v}"))
                    })
                };
                let (old, new) = (find(d[0])?, find(d[1])?);
                let changes = rekord::schema::describe_changes(old, new);
                if json {
                    writeln!(out, "{}", serde_json::json!(changes))?;
                } else if changes.is_empty() {
                    writeln!(out, "versions {} and {} have the same layout", d[0], d[1])?;
                } else {
                    for c in changes {
                        writeln!(out, "- {c}")?;
                    }
                }
            } else if json {
                let texts: Vec<_> = schemas
                    .iter()
                    .map(|s| serde_json::json!({"version": s.version, "rust": render::schema_text(s)}))
                    .collect();
                writeln!(out, "{}", serde_json::Value::Array(texts))?;
            } else {
                for s in &schemas {
                    writeln!(out, "{}", render::schema_text(s))?;
                }
            }
        }
        Command::Ls {
            tree,
            limit,
            from,
            filters,
            all,
        } => {
            let t = db.dyn_tree(tree)?;
            let filters: Vec<Filter> = filters
                .iter()
                .map(|f| Filter::parse(f))
                .collect::<Result<_, _>>()?;
            let fields = crate::gui::table_columns(&t);
            for f in &filters {
                if !fields.iter().any(|c| c == f.field()) {
                    return Err(ViewerError::Usage(format!(
                        "tree `{tree}` has no field `{}` (its fields: {})",
                        f.field(),
                        fields.join(", ")
                    )));
                }
            }
            let mut rows = Vec::new();
            let mut records = t.range(*from..)?.peekable();
            while rows.len() < *limit
                && let Some(r) = records.next()
            {
                // A record that cannot be read is reported, and the listing goes on.
                let r = match r {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("rekord-viewer: {e}");
                        continue;
                    }
                };
                // The latest revision of each record unless --all: the last of its id.
                let latest = records
                    .peek()
                    .is_none_or(|next| next.as_ref().map_or(true, |n| n.key.id != r.key.id));
                if !*all && !latest {
                    continue;
                }
                if !filters.iter().all(|f| f.matches(&r.value)) {
                    continue;
                }
                rows.push(r);
            }
            if json {
                let list: Vec<_> = rows.iter().map(record_json).collect();
                writeln!(out, "{}", serde_json::Value::Array(list))?;
            } else {
                writeln!(
                    out,
                    "{:<24} {:<20} {:>8}  record",
                    "key", "status", "holder"
                )?;
                for r in &rows {
                    writeln!(
                        out,
                        "{:<24} {:<20} {:>8}  {}",
                        format!("{}@{}", r.key.id, r.key.rev),
                        status(r),
                        r.meta.holder,
                        render::one_line(&r.value, 100)
                    )?;
                }
            }
        }
        Command::Get { tree, key, all } => {
            let t = db.dyn_tree(tree)?;
            let k = parse_key(&t, key)?;
            let records = if *all {
                t.revisions(k.id)?
            } else {
                vec![t.get(k)?]
            };
            if json && *all {
                let list: Vec<_> = records.iter().map(record_json).collect();
                writeln!(out, "{}", serde_json::Value::Array(list))?;
            } else {
                for r in &records {
                    print_record(out, r, json)?;
                }
            }
        }
        Command::Create { tree, ron } => {
            let t = db.dyn_tree(tree)?;
            let k = t.create_ron(ron)?;
            // The creator holds a new record; a replica checks it in at once (the next run
            // is another replica, which could never return it).
            if db.is_synced() {
                t.return_borrow(k.raw())?;
            }
            done(out, json, "created", &t.get(k.raw())?)?;
        }
        Command::Edit { tree, key, ron } => {
            let t = db.dyn_tree(tree)?;
            let k = parse_key(&t, key)?;
            let before = t.get(k)?;
            let mut apply = |text: &str| apply_edit(db, &t, k, &before, text);
            let edited = match ron {
                Some(text) => apply(text).map(|()| true)?,
                None => edit_in_editor(&t, k, &mut apply)?,
            };
            if !edited {
                done(out, json, "unchanged", &t.get(k)?)?;
                return Ok(());
            }
            done(out, json, "edited", &t.get(k)?)?;
        }
        Command::Release { tree, key } => {
            let t = db.dyn_tree(tree)?;
            let k = parse_key(&t, key)?;
            t.release(k)?;
            done(out, json, "released", &t.get(k)?)?;
        }
        Command::State { tree, key, state } => {
            let t = db.dyn_tree(tree)?;
            let k = parse_key(&t, key)?;
            t.set_state(k, *state)?;
            done(out, json, "state set", &t.get(k)?)?;
        }
        Command::NewRevision { tree, key } => {
            let t = db.dyn_tree(tree)?;
            let k = parse_key(&t, key)?;
            let n = t.new_revision(k)?;
            done(out, json, "new revision", &t.get(n.raw())?)?;
        }
        Command::Borrow { tree, key } => {
            let t = db.dyn_tree(tree)?;
            let k = parse_key(&t, key)?;
            t.borrow(k)?;
            done(out, json, "borrowed", &t.get(k)?)?;
        }
        Command::Return { tree, key } => {
            let t = db.dyn_tree(tree)?;
            let k = parse_key(&t, key)?;
            t.return_borrow(k)?;
            done(out, json, "returned", &t.get(k)?)?;
        }
        Command::Remove { tree, key } => {
            let t = db.dyn_tree(tree)?;
            let k = parse_key(&t, key)?;
            t.remove(k)?;
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"removed": {"tree": tree, "id": k.id, "rev": k.rev}})
                )?;
            } else {
                writeln!(out, "removed {tree}/{k}")?;
            }
        }
        Command::Follow { tree, count } => follow(db, tree.as_deref(), *count, json, out)?,
        Command::Export { out: file, trees } => {
            let total: u64 = db
                .trees()?
                .iter()
                .filter(|t| trees.is_empty() || trees.contains(&t.name))
                .map(|t| t.records)
                .sum();
            let bar = progress_bar(total, "exporting");
            let n = if file.as_os_str() == "-" {
                crate::transfer::export(db, trees, out, &mut |n| bar.set_position(n))?
            } else {
                if cli.source.db.as_ref().is_some_and(|d| same_file(d, file))
                    || cli
                        .source
                        .replica
                        .as_ref()
                        .is_some_and(|d| same_file(d, file))
                {
                    return Err(ViewerError::Usage(format!(
                        "{} is the database itself: export to another file",
                        file.display()
                    )));
                }
                // Written beside it and renamed when complete: a failed export leaves the
                // file as it was.
                let dir = file
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
                let n = {
                    let mut w = std::io::BufWriter::new(tmp.as_file_mut());
                    crate::transfer::export(db, trees, &mut w, &mut |n| bar.set_position(n))?
                };
                tmp.as_file().sync_all()?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt as _;
                    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))?;
                }
                tmp.persist(file).map_err(|e| ViewerError::Io(e.error))?;
                n
            };
            bar.finish_and_clear();
            if file.as_os_str() != "-" {
                report(out, json, "exported", n, file)?;
            }
        }
        Command::Import { file } => {
            let bar = progress_bar(0, "importing");
            let mut r = std::io::BufReader::new(std::fs::File::open(file)?);
            let n = crate::transfer::import(db, &mut r, &mut |n| bar.set_position(n))?;
            *imported = true;
            bar.finish_and_clear();
            report(out, json, "imported", n, file)?;
        }
        Command::Gui {
            tree,
            key,
            screenshot,
        } => {
            let key = match (tree, key) {
                (Some(t), Some(k)) => Some(parse_key(&db.dyn_tree(t)?, k)?),
                _ => None,
            };
            crate::gui::run(db.clone(), tree.clone(), key, screenshot.clone())?;
        }
    }
    Ok(())
}

/// A progress bar on standard error (hidden when it is not a terminal); `total` 0: a
/// counter.
fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = if total > 0 {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::no_length()
    };
    let template = if total > 0 {
        "{msg} {bar:40} {pos}/{len} records ({per_sec}, {eta} left)"
    } else {
        "{msg} {pos} records ({per_sec})"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar
}

fn report(
    out: &mut dyn Write,
    json: bool,
    what: &str,
    n: u64,
    file: &Path,
) -> Result<(), ViewerError> {
    if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({ what: n, "file": file.display().to_string() })
        )?;
    } else {
        writeln!(out, "{what} {n} records ({})", file.display())?;
    }
    Ok(())
}

fn done(out: &mut dyn Write, json: bool, what: &str, r: &DynRecord) -> Result<(), ViewerError> {
    if json {
        writeln!(out, "{}", serde_json::json!({ what: record_json(r) }))?;
    } else {
        writeln!(out, "{what} {}", r.key)?;
        writeln!(out, "{}", r.to_ron())?;
    }
    Ok(())
}

/// Opens the record in `$VISUAL`/`$EDITOR` (default `vi`) until the edit is accepted, the
/// text is left unchanged (`false`) or emptied (cancel).
fn edit_in_editor(
    t: &DynTree,
    k: RawKey,
    apply: &mut dyn FnMut(&str) -> Result<(), ViewerError>,
) -> Result<bool, ViewerError> {
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let original = t.get(k)?.to_ron();
    let mut text = original.clone();
    let mut problem: Option<String> = None;
    loop {
        let mut file = tempfile::Builder::new()
            .prefix("rekord-edit-")
            .suffix(".ron")
            .tempfile()?;
        if let Some(p) = &problem {
            for line in p.lines() {
                writeln!(file, "// {line}")?;
            }
            writeln!(file, "// (fix the record below; empty the file to cancel)")?;
        }
        write!(file, "{text}")?;
        file.flush()?;
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("rekord-viewer")
            .arg(file.path())
            .status()?;
        if !status.success() {
            return Err(ViewerError::Usage(format!(
                "the editor `{editor}` failed ({status})"
            )));
        }
        let edited = std::fs::read_to_string(file.path())?;
        // Our own comment lines go; RON comments of the user's stay harmless.
        let body: String = edited
            .lines()
            .skip_while(|l| l.starts_with("// "))
            .collect::<Vec<_>>()
            .join("\n");
        if body.trim().is_empty() {
            return Err(ViewerError::Usage(
                "edit cancelled (the file was emptied)".into(),
            ));
        }
        if body.trim() == original.trim() {
            return Ok(false);
        }
        match apply(&body) {
            Ok(()) => return Ok(true),
            Err(ViewerError::Db(
                e @ (rekord::Error::InvalidRon { .. } | rekord::Error::InvalidValue { .. }),
            )) => {
                problem = Some(e.to_string());
                text = body;
                if !is_terminal() {
                    // Nobody to fix it: an editor that is a script would loop for ever.
                    return Err(e.into());
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Applies an edit's RON `text` to record `k`, read as `before` when the edit began. The
/// text is checked first (nothing is borrowed for a text that cannot be the record). A
/// synced replica checks the record out only for the moment of the change and in again,
/// whatever happens (each run is a replica of its own, which could not return it later),
/// and refuses a change to a record that changed since `before` was read.
fn apply_edit(
    db: &Db,
    t: &DynTree,
    k: RawKey,
    before: &DynRecord,
    text: &str,
) -> Result<(), ViewerError> {
    t.parse(text)?;
    if !db.is_synced() || t.get(k)?.meta.holder == db.replica() {
        return Ok(t.replace_ron(k, text)?);
    }
    t.borrow(k)?;
    let changed = (|| {
        let now = t.get(k)?;
        if now.to_ron() != before.to_ron()
            || (now.meta.released, now.meta.state, now.meta.version)
                != (before.meta.released, before.meta.state, before.meta.version)
        {
            return Err(ViewerError::Usage(format!(
                "{} changed while it was being edited (by another replica): nothing was \
                 written; run the edit again to start from its new contents",
                k
            )));
        }
        Ok(t.replace_ron(k, text)?)
    })();
    let returned = t.return_borrow(k);
    changed?;
    Ok(returned?)
}

fn is_terminal() -> bool {
    use std::io::IsTerminal as _;
    std::io::stdin().is_terminal()
}

fn follow(
    db: &Db,
    tree: Option<&str>,
    count: Option<usize>,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), ViewerError> {
    let sub = db.subscribe();
    // (On standard error: scripts reading standard output see only the changes.)
    eprintln!("rekord-viewer: following changes (Ctrl-C stops)");
    let mut seen = 0;
    while count.is_none_or(|c| seen < c) {
        let Some(event) = sub.recv_blocking() else {
            break;
        };
        let Event::Record(e) = event else {
            continue;
        };
        if tree.is_some_and(|t| t != &*e.tree) {
            continue;
        }
        seen += 1;
        let record = db.dyn_tree(&e.tree).and_then(|t| t.get(e.key)).ok();
        let kind = kind_name(&e.kind);
        if json {
            let data = record.as_ref().map(|r| render::json(&r.value));
            writeln!(
                out,
                "{}",
                serde_json::json!({"tree": &*e.tree, "id": e.key.id, "rev": e.key.rev, "change": kind, "origin": e.origin, "data": data})
            )?;
        } else {
            let summary = record
                .as_ref()
                .map(|r| render::one_line(&r.value, 80))
                .unwrap_or_default();
            writeln!(
                out,
                "{}/{} {kind} (by {}) {summary}",
                e.tree, e.key, e.origin
            )?;
        }
        out.flush()?;
    }
    Ok(())
}

fn kind_name(kind: &EventKind) -> String {
    match kind {
        EventKind::Created => "created".into(),
        EventKind::Updated => "updated".into(),
        EventKind::Removed => "removed".into(),
        EventKind::Released => "released".into(),
        EventKind::RevisionCreated => "new revision".into(),
        EventKind::StateChanged { old, new } => format!("state {old} -> {new}"),
        EventKind::Borrowed { holder } => format!("borrowed by {holder}"),
        EventKind::Returned { holder } => format!("returned by {holder}"),
        EventKind::Migrated { from, to } => format!("migrated v{from} -> v{to}"),
        other => format!("{other:?}"),
    }
}

/// Whether `path` looks like something the viewer can open (for the GUI's file picker).
pub fn exists(path: &Path) -> bool {
    path.exists()
}
