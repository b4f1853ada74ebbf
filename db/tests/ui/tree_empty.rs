#[rekord::record(tree = "")]
pub struct Part {
    pub name: String,
}

fn main() {}
