//! Typed values and row batches exchanged with clients.

/// A value bound to a statement parameter or read from a result column.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit signed integer.
    Integer(i64),
    /// A 64-bit float.
    Float(f64),
    /// UTF-8 text.
    Text(String),
    /// Text whose bytes are not valid UTF-8 (SQLite keeps what it is given): kept exactly.
    RawText(Vec<u8>),
    /// Bytes.
    Blob(Vec<u8>),
}

impl Value {
    /// Bytes this value costs in a row batch (for the batch size limit).
    pub fn size_bytes(&self) -> usize {
        match self {
            Value::Null => 1,
            Value::Integer(_) | Value::Float(_) => 8,
            Value::Text(text) => text.len(),
            Value::RawText(text) => text.len(),
            Value::Blob(blob) => blob.len(),
        }
    }
}

/// Rows of a query, column-described, in row-major order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rows {
    /// Column names, as SQLite reports them.
    pub columns: Vec<String>,
    /// Declared column types (`None` for expressions).
    pub declared_types: Vec<Option<String>>,
    /// `columns.len()` values per row, row after row.
    pub values: Vec<Value>,
    /// Whether this batch ends the result (otherwise ask for the next batch).
    pub done: bool,
}

impl Rows {
    /// The number of rows in this batch.
    pub fn row_count(&self) -> usize {
        if self.columns.is_empty() {
            0
        } else {
            self.values.len() / self.columns.len()
        }
    }

    /// Row `index` of this batch.
    pub fn row(&self, index: usize) -> &[Value] {
        let width = self.columns.len();
        &self.values[index * width..(index + 1) * width]
    }
}
