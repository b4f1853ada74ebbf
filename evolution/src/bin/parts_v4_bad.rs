//! A broken "version 4": `qty` changed type (u32 -> String) without a migration. Reading
//! older records must fail with a typed error naming the field.

/// A part.
#[rekord::record(tree = "parts", version = 4)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// Name.
    pub name: String,
    /// Quantity, now text.
    pub qty: String,
}

impl rekord_evolution_tests::Part for Part {
    fn make(i: u64) -> Self {
        Part {
            name: format!("part-{i}"),
            qty: i.to_string(),
        }
    }
    fn bump(&mut self) {
        self.qty.push('+');
    }
}

fn main() {
    std::process::exit(rekord_evolution_tests::run::<Part>());
}
