//! Record filters: `field=value` and `field~text` on top-level fields.

use crate::ViewerError;
use crate::render;
use rekord::schema::dynamic::Value;

/// A `--where` filter: `field=value` (the field's one-line RON, or a string's text, equals
/// value) or `field~text` (contains).
pub struct Filter {
    field: String,
    value: String,
    contains: bool,
}

impl Filter {
    /// Reads `field=value` or `field~text`.
    pub fn parse(text: &str) -> Result<Filter, ViewerError> {
        let (i, contains) = match (text.find('='), text.find('~')) {
            (Some(e), Some(t)) if t < e => (t, true),
            (Some(e), _) => (e, false),
            (None, Some(t)) => (t, true),
            (None, None) => {
                return Err(ViewerError::Usage(format!(
                    "`{text}` is not a filter: FIELD=VALUE or FIELD~TEXT"
                )));
            }
        };
        Ok(Filter {
            field: text[..i].trim().to_owned(),
            value: text[i + 1..].trim().to_owned(),
            contains,
        })
    }

    /// The field it looks at.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// Whether a record's value passes.
    pub fn matches(&self, value: &Value) -> bool {
        let Some(v) = render::field(value, &self.field) else {
            return false;
        };
        let ron = render::one_line(v, usize::MAX);
        let plain = match v {
            Value::String(s) => s.clone(),
            _ => ron.clone(),
        };
        if self.contains {
            ron.contains(&self.value) || plain.contains(&self.value)
        } else {
            ron == self.value || plain == self.value
        }
    }
}
