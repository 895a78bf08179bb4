//! Result sets as text: aligned tables for people, JSON and CSV for programs.
//!
//! How each value type is shown:
//!
//! - INTEGER: `42` in all formats (right-aligned in a table).
//! - FLOAT: shortest round-trip digits, always with a `.` or an exponent (`3.5`, `2.0`, `1e300`);
//!   JSON writes ±infinity as `±9e999` (as SQLite's JSON functions do) and NaN as `null`.
//! - TEXT: as is; a table escapes control characters (`\n`) to keep cells on one line; CSV
//!   quotes fields that need it; JSON escapes what JSON requires.
//! - BLOB: `x'00ff'` in a table (cut after 16 bytes: `x'…'... (N bytes)`); a lowercase hex string
//!   (`"00ff"`) in JSON and CSV.
//! - NULL: `NULL` in a table, `null` in JSON, an empty CSV field.
//! - UNIXTIME (an INTEGER in a DATETIME column): `2024-01-02 03:04:05` (UTC) in a table, the
//!   integer seconds in JSON and CSV.
//! - ISO8601 (TEXT in a DATETIME column): the text; `""`, which is how dqlite sends NULL in such
//!   a column, shows as NULL / `null`.
//! - BOOLEAN (a BOOLEAN column): `true`/`false`; `1`/`0` in CSV.

use std::fmt::Write as _;
use std::io::{self, Write};

use atoll_net::protocol::Value;

/// Output formats of the shell and the cluster listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a header, for people.
    Table,
    /// One array of objects (column name → value) per result set.
    Json,
    /// RFC 4180 CSV with a header line (LF line ends), one block per result set.
    Csv,
}

impl Format {
    /// The name `.mode` and `--format` use.
    pub fn name(self) -> &'static str {
        match self {
            Format::Table => "table",
            Format::Json => "json",
            Format::Csv => "csv",
        }
    }

    /// The format called `name`, if any.
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "table" => Some(Format::Table),
            "json" => Some(Format::Json),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }
}

/// Blob bytes shown in a table before it is cut short.
const TABLE_BLOB_BYTES_MAX: usize = 16;

/// A float in a form that reads back as a float: shortest round-trip digits, an exponent for very
/// large and very small magnitudes, and always a `.` or an `e` (so `2.0` is not mistaken for the
/// integer `2`).
pub fn format_float(value: f64) -> String {
    if value.is_nan() {
        return "NaN".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "Inf" } else { "-Inf" }.into();
    }
    let magnitude = value.abs();
    let text = if magnitude != 0.0 && !(1e-5..1e16).contains(&magnitude) {
        format!("{value:e}")
    } else {
        format!("{value}")
    };
    if text.contains(['.', 'e']) {
        text
    } else {
        text + ".0"
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        write!(out, "{byte:02x}").expect("writing to a String cannot fail");
    }
    out
}

/// A JSON string literal: quotes, backslashes and control characters escaped; everything else
/// (UTF-8 included) as is.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                write!(out, "\\u{:04x}", c as u32).expect("writing to a String cannot fail")
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A value as a JSON value.
pub fn json_value(value: &Value) -> String {
    match value {
        Value::Integer(v) | Value::UnixTime(v) => v.to_string(),
        Value::Float(v) if v.is_nan() => "null".into(),
        Value::Float(v) if v.is_infinite() => if *v > 0.0 { "9e999" } else { "-9e999" }.into(),
        Value::Float(v) => format_float(*v),
        Value::Text(text) => json_string(text),
        Value::RawText(bytes) => json_string(&String::from_utf8_lossy(bytes)),
        Value::Iso8601(text) if text.is_empty() => "null".into(),
        Value::Iso8601(text) => json_string(text),
        Value::Blob(bytes) => json_string(&hex(bytes)),
        Value::Null => "null".into(),
        Value::Boolean(v) => v.to_string(),
    }
}

/// Days since 1970-01-01 as a proleptic Gregorian (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's algorithm: shift to eras of 400 years starting on March 1st.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn format_unix_time(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// Text with control characters made visible, so a cell stays on one line.
fn escape_control(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                write!(out, "\\x{:02x}", c as u32).expect("writing to a String cannot fail")
            }
            c => out.push(c),
        }
    }
    out
}

/// A value as a table cell, and whether it is right-aligned (numbers).
pub fn table_cell(value: &Value) -> (String, bool) {
    match value {
        Value::Integer(v) => (v.to_string(), true),
        Value::Float(v) => (format_float(*v), true),
        Value::Text(text) => (escape_control(text), false),
        Value::RawText(bytes) => (escape_control(&String::from_utf8_lossy(bytes)), false),
        Value::Blob(bytes) if bytes.len() > TABLE_BLOB_BYTES_MAX => (
            format!(
                "x'{}'... ({} bytes)",
                hex(&bytes[..TABLE_BLOB_BYTES_MAX]),
                bytes.len()
            ),
            false,
        ),
        Value::Blob(bytes) => (format!("x'{}'", hex(bytes)), false),
        Value::Null => ("NULL".into(), false),
        Value::UnixTime(seconds) => (format_unix_time(*seconds), false),
        Value::Iso8601(text) if text.is_empty() => ("NULL".into(), false),
        Value::Iso8601(text) => (escape_control(text), false),
        Value::Boolean(v) => (v.to_string(), false),
    }
}

/// A value as a CSV field.
pub fn csv_field(value: &Value) -> String {
    let text = match value {
        Value::Integer(v) | Value::UnixTime(v) => return v.to_string(),
        Value::Float(v) => return format_float(*v),
        Value::Blob(bytes) => return hex(bytes),
        Value::Null => return String::new(),
        Value::Boolean(v) => return u8::from(*v).to_string(),
        Value::RawText(bytes) => return csv_quote(&String::from_utf8_lossy(bytes)),
        Value::Text(text) | Value::Iso8601(text) => text,
    };
    csv_quote(text)
}

/// Quotes a CSV field when it holds a separator, a quote, a line end or outer spaces.
pub fn csv_quote(text: &str) -> String {
    let needs_quotes =
        text.contains([',', '"', '\n', '\r']) || text.starts_with(' ') || text.ends_with(' ');
    if needs_quotes {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// Writes rows as an aligned table:
///
/// ```text
/// +----+-------+
/// | id | name  |
/// +----+-------+
/// |  1 | hello |
/// +----+-------+
/// ```
pub fn write_table(
    out: &mut impl Write,
    columns: &[String],
    rows: &[Vec<Value>],
) -> io::Result<()> {
    let header: Vec<String> = columns.iter().map(|c| escape_control(c)).collect();
    let cells: Vec<Vec<(String, bool)>> = rows
        .iter()
        .map(|row| row.iter().map(table_cell).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &cells {
        for (width, (text, _)) in widths.iter_mut().zip(row) {
            *width = (*width).max(text.chars().count());
        }
    }
    let mut rule = String::from("+");
    for width in &widths {
        rule.push_str(&"-".repeat(width + 2));
        rule.push('+');
    }
    writeln!(out, "{rule}")?;
    let mut line = String::from("|");
    for (text, width) in header.iter().zip(&widths) {
        write!(line, " {text:<width$} |").expect("writing to a String cannot fail");
    }
    writeln!(out, "{line}")?;
    writeln!(out, "{rule}")?;
    for row in &cells {
        line.clear();
        line.push('|');
        for ((text, right), width) in row.iter().zip(&widths) {
            if *right {
                write!(line, " {text:>width$} |")
            } else {
                write!(line, " {text:<width$} |")
            }
            .expect("writing to a String cannot fail");
        }
        writeln!(out, "{line}")?;
    }
    if !rows.is_empty() {
        writeln!(out, "{rule}")?;
    }
    Ok(())
}

/// Writes a JSON array of objects row by row, so a large result needs no buffering:
/// `begin`, then `row` for each row, then `end`.
pub struct JsonRows {
    rows_written: u64,
}

impl JsonRows {
    /// Starts the array.
    pub fn begin(out: &mut impl Write) -> io::Result<JsonRows> {
        out.write_all(b"[")?;
        Ok(JsonRows { rows_written: 0 })
    }

    /// One row as an object.
    pub fn row(
        &mut self,
        out: &mut impl Write,
        columns: &[String],
        row: &[Value],
    ) -> io::Result<()> {
        if self.rows_written > 0 {
            out.write_all(b",\n")?;
        }
        let mut object = String::from("{");
        for (index, (column, value)) in columns.iter().zip(row).enumerate() {
            if index > 0 {
                object.push(',');
            }
            object.push_str(&json_string(column));
            object.push(':');
            object.push_str(&json_value(value));
        }
        object.push('}');
        out.write_all(object.as_bytes())?;
        self.rows_written += 1;
        Ok(())
    }

    /// Ends the array.
    pub fn end(self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(b"]\n")
    }
}

/// Writes `values` under `columns` as a table or as CSV (`format` is not JSON: each command
/// writes its own JSON objects).
pub fn write_table_or_csv(
    out: &mut impl Write,
    columns: &[String],
    values: &[Vec<Value>],
    format: Format,
) -> io::Result<()> {
    if format == Format::Table {
        write_table(out, columns, values)
    } else {
        write_csv_header(out, columns)?;
        values.iter().try_for_each(|row| write_csv_row(out, row))
    }
}

/// Writes the CSV header line.
pub fn write_csv_header(out: &mut impl Write, columns: &[String]) -> io::Result<()> {
    let fields: Vec<String> = columns.iter().map(|c| csv_quote(c)).collect();
    writeln!(out, "{}", fields.join(","))
}

/// Writes one CSV row.
pub fn write_csv_row(out: &mut impl Write, row: &[Value]) -> io::Result<()> {
    let fields: Vec<String> = row.iter().map(csv_field).collect();
    writeln!(out, "{}", fields.join(","))
}

/// "1 row", "2 rows".
pub fn plural(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

#[cfg(test)]
mod tests;
