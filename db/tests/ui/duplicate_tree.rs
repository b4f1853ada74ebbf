#[rekord::record(tree = "a", tree = "b")]
pub struct Part {
    pub name: String,
}

fn main() {}
