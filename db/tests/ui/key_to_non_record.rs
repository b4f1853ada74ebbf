#[rekord::data]
pub struct Dims {
    pub w: f32,
}

#[rekord::record]
pub struct Part {
    pub dims: rekord::Key<Dims>,
}

fn main() {}
