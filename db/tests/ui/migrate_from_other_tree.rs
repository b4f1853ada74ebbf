#[rekord::record(tree = "bolts", version = 1)]
pub struct BoltV1 {
    pub name: String,
}

#[rekord::record(tree = "parts", version = 2, migrate_from = BoltV1)]
pub struct Part {
    pub name: String,
}

impl From<BoltV1> for Part {
    fn from(b: BoltV1) -> Self {
        Part { name: b.name }
    }
}

fn main() {}
