//! Version 1 of `Part`: a name and a quantity.

/// A part.
#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// Name.
    pub name: String,
    /// Pieces.
    pub qty: u32,
}

impl rekord_evolution_tests::Part for Part {
    fn make(i: u64) -> Self {
        Part {
            name: format!("part-{i}"),
            qty: i as u32,
        }
    }
    fn bump(&mut self) {
        self.qty += 1;
    }
}

fn main() {
    std::process::exit(rekord_evolution_tests::run::<Part>());
}
