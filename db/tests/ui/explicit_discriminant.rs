#[rekord::data]
pub enum Color {
    Red = 1,
    Green,
}

fn main() {}
