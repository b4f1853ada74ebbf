#[rekord::record(tree = "Parts")]
pub struct Part {
    pub name: String,
}

fn main() {}
