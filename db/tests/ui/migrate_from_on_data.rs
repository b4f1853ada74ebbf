#[rekord::data(migrate_from = u32)]
pub struct Dimensions {
    pub w: f32,
}

fn main() {}
