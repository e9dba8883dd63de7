//! Printing results: a table for people, JSON for scripts.

use comfy_table::presets::NOTHING;
use comfy_table::{Cell, Table};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// A column: its heading and the JSON field it shows.
pub type Column<'a> = (&'a str, &'a str);

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a.iter().map(|x| cell(Some(x))).collect::<Vec<_>>().join(","),
        Some(other) => other.to_string(),
    }
}

/// Prints `rows` (JSON objects) as a table of `columns`, or `whole` as JSON.
pub fn list(format: Format, whole: &Value, rows: &[Value], columns: &[Column<'_>]) {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(whole).unwrap_or_default()),
        Format::Table => {
            let mut t = Table::new();
            t.load_preset(NOTHING);
            t.set_header(columns.iter().map(|(h, _)| Cell::new(h)));
            for r in rows {
                t.add_row(columns.iter().map(|(_, f)| cell(r.get(*f))));
            }
            println!("{t}");
        }
    }
}

/// Prints one object as `field: value` lines, or as JSON.
pub fn object(format: Format, v: &Value, fields: &[Column<'_>]) {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Format::Table => {
            let width = fields.iter().map(|(h, _)| h.len()).max().unwrap_or(0);
            for (h, f) in fields {
                println!("{:width$}  {}", format!("{h}:"), cell(v.get(*f)), width = width + 1);
            }
        }
    }
}
