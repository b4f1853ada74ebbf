#[rekord::data]
pub enum Shape {
    Circle {
        #[record(default)]
        r: f64,
    },
}

fn main() {}
