#[rekord::data(tree = "x")]
pub struct Dimensions {
    pub w: f32,
}

fn main() {}
