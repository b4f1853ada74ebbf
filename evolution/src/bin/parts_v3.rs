//! Version 3 of `Part`: the quantity widens to u64 and a required `kind` appears, which
//! older data cannot supply by default, so v3 declares a migration chain v1 -> v2 -> v3.

/// Version 1, kept to read old records.
#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct PartV1 {
    /// Name.
    pub name: String,
    /// Pieces.
    pub qty: u32,
}

/// Version 2, kept to read old records.
#[rekord::record(tree = "parts", version = 2, migrate_from = PartV1)]
#[derive(Debug, Clone, PartialEq)]
pub struct PartV2 {
    /// Name.
    pub name: String,
    /// Pieces.
    pub qty: u32,
    /// Supplier.
    #[record(default)]
    pub supplier: Option<String>,
}

impl From<PartV1> for PartV2 {
    fn from(v: PartV1) -> Self {
        PartV2 {
            name: v.name,
            qty: v.qty,
            supplier: None,
        }
    }
}

/// What a part is.
#[rekord::data]
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Bought in.
    Bought,
    /// Made here, with a drawing number.
    Made {
        /// Drawing number.
        drawing: u32,
    },
}

/// The current `Part`.
#[rekord::record(tree = "parts", version = 3, migrate_from = PartV2)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// Name.
    pub name: String,
    /// Pieces (was u32).
    pub qty: u64,
    /// Supplier.
    #[record(default)]
    pub supplier: Option<String>,
    /// Bought or made (new, required).
    pub kind: Kind,
}

impl From<PartV2> for Part {
    fn from(v: PartV2) -> Self {
        let kind = if v.supplier.is_some() {
            Kind::Bought
        } else {
            Kind::Made { drawing: 0 }
        };
        Part {
            name: v.name,
            qty: u64::from(v.qty),
            supplier: v.supplier,
            kind,
        }
    }
}

impl rekord_evolution_tests::Part for Part {
    fn make(i: u64) -> Self {
        Part {
            name: format!("part-{i}"),
            qty: i,
            supplier: None,
            kind: Kind::Made { drawing: 7 },
        }
    }
    fn bump(&mut self) {
        self.qty += 1;
    }
}

fn main() {
    std::process::exit(rekord_evolution_tests::run::<Part>());
}
