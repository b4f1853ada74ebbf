#[rekord::record]
pub enum Shape {
    #[record(default)]
    Circle { r: f64 },
    Square(f64),
}

fn main() {}
