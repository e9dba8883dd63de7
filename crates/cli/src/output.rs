//! Printing results: a table for people, JSON for scripts.

use berth_core::calendar::utc;
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
        Some(Value::Object(m)) if m.is_empty() => "-".into(),
        Some(Value::Object(m)) => m.iter().map(|(k, x)| format!("{k}={}", cell(Some(x)))).collect::<Vec<_>>().join(","),
        Some(other) => other.to_string(),
    }
}

/// How a value reads in a table cell (arrays joined by commas).
pub fn cell_text(v: &Value) -> String {
    cell(Some(v))
}

/// A table cell for `field`: times (`at`, `*_at`, unix seconds) in UTC, like
/// `2026-11-26 21:05:09Z`; JSON output keeps the numbers.
fn field_cell(field: &str, v: Option<&Value>) -> String {
    match v.and_then(Value::as_i64) {
        Some(secs) if field == "at" || field.ends_with("_at") => utc(secs),
        _ => cell(v),
    }
}

/// Unix milliseconds as a UTC time of day with milliseconds, after the date: for operation logs.
pub fn utc_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let text = utc(secs);
    format!("{}.{:03}Z", text.trim_end_matches('Z'), ms.rem_euclid(1000))
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
                t.add_row(columns.iter().map(|(_, f)| field_cell(f, r.get(*f))));
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
                println!("{:width$}  {}", format!("{h}:"), field_cell(f, v.get(*f)), width = width + 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_795_726_398), "2026-11-26 20:53:18Z");
        assert_eq!(field_cell("created_at", Some(&Value::from(0))), "1970-01-01 00:00:00Z");
        assert_eq!(field_cell("size", Some(&Value::from(0))), "0");
        assert_eq!(field_cell("ended_at", Some(&Value::Null)), "-");
    }
}
