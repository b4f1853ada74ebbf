#[rekord::record]
pub union Part {
    pub a: u32,
    pub b: f32,
}

fn main() {}
