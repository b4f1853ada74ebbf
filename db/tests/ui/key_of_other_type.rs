#[rekord::record]
pub struct Part {
    pub name: String,
}

#[rekord::record]
pub struct Supplier {
    pub name: String,
}

fn lookup(db: &rekord::Db) -> rekord::Result<Supplier> {
    let parts = db.tree::<Part>()?;
    let suppliers = db.tree::<Supplier>()?;
    let part_key = parts.create(&Part { name: "bolt".into() })?;
    suppliers.get(part_key)
}

fn main() {}
