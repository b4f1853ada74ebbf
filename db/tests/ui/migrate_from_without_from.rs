#[rekord::record(tree = "parts", version = 1)]
pub struct PartV1 {
    pub name: String,
}

// No `From<PartV1> for Part` (nor TryFrom): the chain cannot be built.
#[rekord::record(tree = "parts", version = 2, migrate_from = PartV1)]
pub struct Part {
    pub name: String,
    pub qty: u32,
}

fn main() {}
