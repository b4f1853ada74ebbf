#[derive(Debug)]
pub struct Dimensions {
    pub w: f32,
    pub h: f32,
}

#[rekord::record]
pub struct Part {
    pub name: String,
    pub dims: Dimensions,
}

fn main() {}
