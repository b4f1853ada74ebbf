#[rekord::record(tree = "parts", version = 3)]
pub struct PartV3 {
    pub name: String,
}

#[rekord::record(tree = "parts", version = 2, migrate_from = PartV3)]
pub struct Part {
    pub name: String,
}

impl From<PartV3> for Part {
    fn from(b: PartV3) -> Self {
        Part { name: b.name }
    }
}

fn main() {}
