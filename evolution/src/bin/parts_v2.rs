//! Version 2 of `Part`: adds an optional supplier (additive: no migration code needed).

/// A part.
#[rekord::record(tree = "parts", version = 2)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// Name.
    pub name: String,
    /// Pieces.
    pub qty: u32,
    /// Who sells it; absent in version-1 records.
    #[record(default)]
    pub supplier: Option<String>,
}

impl rekord_evolution_tests::Part for Part {
    fn make(i: u64) -> Self {
        Part {
            name: format!("part-{i}"),
            qty: i as u32,
            supplier: Some("acme".into()),
        }
    }
    fn bump(&mut self) {
        self.qty += 1;
    }
}

fn main() {
    std::process::exit(rekord_evolution_tests::run::<Part>());
}
