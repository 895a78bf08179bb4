//! Values (section 4 of the reference): the eight type codes, the parameter tuple of EXEC, QUERY,
//! EXEC_SQL and QUERY_SQL (schema 0: 8-bit count; schema 1: 32-bit count), and the row tuple of
//! ROWS (4-bit type codes, two per byte, low nibble first).
//!
//! Encodings (little-endian):
//! - `text`: bytes, NUL, zero padding to a multiple of 8 counted from the string's start. UTF-8,
//!   except a TEXT value SQLite holds as other bytes, which goes byte for byte
//!   ([`Value::RawText`]).
//! - `blob`: `u64` length, bytes, zero padding to a multiple of 8.
//! - parameters, schema 0: `u8` count (at most 255), `u8` type × count, padding to a word, values.
//! - parameters, schema 1: `u32` count (at most [`PARAMS_COUNT_MAX`]), `u8` type × count, padding
//!   to a word, values.
//! - row: 4-bit type codes (low nibble = even column), padding to a word, values.
//!
//! Value types: 1 INTEGER (`i64`), 2 FLOAT (`f64` bits), 3 TEXT, 4 BLOB, 5 NULL (one zero
//! word), 9 UNIXTIME (`i64`, rows only), 10 ISO8601 (`text`), 11 BOOLEAN (`u64`). The padding
//! of a parameter tuple is ignored on decode (go-dqlite leaves stale bytes there). A ROWS body
//! is `u64` column count, the names as `text`, the rows, then the marker word (`0xff…ff` DONE,
//! `0xee…ee` PART); see `response.rs`.

use super::codec::{
    pad_to_word, put_blob, put_f64, put_i64, put_text, put_text_bytes, put_u32, put_u64, roundup8,
    DecodeError, Reader, WORD_BYTES,
};

/// Type code of an INTEGER (`int64`).
pub const TYPE_INTEGER: u8 = 1;
/// Type code of a FLOAT (`float64`).
pub const TYPE_FLOAT: u8 = 2;
/// Type code of a TEXT (`text`).
pub const TYPE_TEXT: u8 = 3;
/// Type code of a BLOB (`blob`).
pub const TYPE_BLOB: u8 = 4;
/// Type code of NULL (one zero word).
pub const TYPE_NULL: u8 = 5;
/// Type code of a UNIXTIME (`int64` seconds); only in rows, never as a parameter.
pub const TYPE_UNIXTIME: u8 = 9;
/// Type code of an ISO8601 (`text`).
pub const TYPE_ISO8601: u8 = 10;
/// Type code of a BOOLEAN (`uint64`, 0 or 1).
pub const TYPE_BOOLEAN: u8 = 11;

/// The most parameters one request may carry: SQLite's own limit on a statement's variables
/// (`SQLITE_MAX_VARIABLE_NUMBER`, 32766). More are refused before any is decoded.
pub const PARAMS_COUNT_MAX: usize = 32766;
/// Schema 0 parameter tuples count with one byte; more parameters need schema 1.
pub const PARAMS_SCHEMA0_COUNT_MAX: usize = 255;

/// One SQL value on the wire, owned.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A 64-bit signed integer.
    Integer(i64),
    /// A binary64 float.
    Float(f64),
    /// UTF-8 text (without NUL bytes: the wire format cuts text at the first NUL).
    Text(String),
    /// A TEXT whose bytes are not valid UTF-8 (SQLite stores the bytes it is given): carried
    /// byte for byte, as dqlite carries them. Decoding gives it only for such bytes.
    RawText(Vec<u8>),
    /// Raw bytes.
    Blob(Vec<u8>),
    /// SQL NULL.
    Null,
    /// Seconds since the Unix epoch, for an INTEGER in a DATETIME/DATE/TIMESTAMP column.
    UnixTime(i64),
    /// An ISO-8601 date string, for TEXT (or NULL, as "") in a DATETIME/DATE/TIMESTAMP column.
    Iso8601(String),
    /// A boolean, for a BOOLEAN column. On the wire any non-zero word reads as true.
    Boolean(bool),
}

/// One SQL value on the wire, borrowed: what a server encodes straight from a SQLite statement
/// without copying text and blobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// A 64-bit signed integer.
    Integer(i64),
    /// A binary64 float.
    Float(f64),
    /// UTF-8 text.
    Text(&'a str),
    /// TEXT bytes that are not valid UTF-8 (see [`Value::RawText`]).
    RawText(&'a [u8]),
    /// Raw bytes.
    Blob(&'a [u8]),
    /// SQL NULL.
    Null,
    /// Seconds since the Unix epoch.
    UnixTime(i64),
    /// An ISO-8601 date string.
    Iso8601(&'a str),
    /// A boolean.
    Boolean(bool),
}

impl Value {
    /// The borrowed form of this value.
    pub fn as_value_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Integer(v) => ValueRef::Integer(*v),
            Value::Float(v) => ValueRef::Float(*v),
            Value::Text(v) => ValueRef::Text(v),
            Value::RawText(v) => ValueRef::RawText(v),
            Value::Blob(v) => ValueRef::Blob(v),
            Value::Null => ValueRef::Null,
            Value::UnixTime(v) => ValueRef::UnixTime(*v),
            Value::Iso8601(v) => ValueRef::Iso8601(v),
            Value::Boolean(v) => ValueRef::Boolean(*v),
        }
    }

    /// The wire type code.
    pub fn type_code(&self) -> u8 {
        self.as_value_ref().type_code()
    }
}

impl ValueRef<'_> {
    /// The wire type code.
    pub fn type_code(&self) -> u8 {
        match self {
            ValueRef::Integer(_) => TYPE_INTEGER,
            ValueRef::Float(_) => TYPE_FLOAT,
            ValueRef::Text(_) | ValueRef::RawText(_) => TYPE_TEXT,
            ValueRef::Blob(_) => TYPE_BLOB,
            ValueRef::Null => TYPE_NULL,
            ValueRef::UnixTime(_) => TYPE_UNIXTIME,
            ValueRef::Iso8601(_) => TYPE_ISO8601,
            ValueRef::Boolean(_) => TYPE_BOOLEAN,
        }
    }

    /// The owned form of this value.
    pub fn to_value(&self) -> Value {
        match *self {
            ValueRef::Integer(v) => Value::Integer(v),
            ValueRef::Float(v) => Value::Float(v),
            ValueRef::Text(v) => Value::Text(v.to_owned()),
            ValueRef::RawText(v) => Value::RawText(v.to_vec()),
            ValueRef::Blob(v) => Value::Blob(v.to_vec()),
            ValueRef::Null => Value::Null,
            ValueRef::UnixTime(v) => Value::UnixTime(v),
            ValueRef::Iso8601(v) => Value::Iso8601(v.to_owned()),
            ValueRef::Boolean(v) => Value::Boolean(v),
        }
    }

    /// Bytes this value takes on the wire (after the type code).
    pub fn encoded_bytes(&self) -> usize {
        match self {
            ValueRef::Text(v) | ValueRef::Iso8601(v) => roundup8(v.len() + 1),
            ValueRef::RawText(v) => roundup8(v.len() + 1),
            ValueRef::Blob(v) => WORD_BYTES + roundup8(v.len()),
            _ => WORD_BYTES,
        }
    }

    /// Appends the value (not its type code).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            ValueRef::Integer(v) | ValueRef::UnixTime(v) => put_i64(out, v),
            ValueRef::Float(v) => put_f64(out, v),
            ValueRef::Text(v) | ValueRef::Iso8601(v) => put_text(out, v),
            ValueRef::RawText(v) => put_text_bytes(out, v),
            ValueRef::Blob(v) => put_blob(out, v),
            ValueRef::Null => put_u64(out, 0),
            ValueRef::Boolean(v) => put_u64(out, u64::from(v)),
        }
    }
}

/// Whether a type code is defined by the protocol.
pub fn is_known_type(code: u8) -> bool {
    matches!(
        code,
        TYPE_INTEGER
            | TYPE_FLOAT
            | TYPE_TEXT
            | TYPE_BLOB
            | TYPE_NULL
            | TYPE_UNIXTIME
            | TYPE_ISO8601
            | TYPE_BOOLEAN
    )
}

/// Decodes one value of type `code`. Callers validate `code` with [`is_known_type`] first.
fn decode_value(reader: &mut Reader<'_>, code: u8) -> Result<Value, DecodeError> {
    Ok(match code {
        TYPE_INTEGER => Value::Integer(reader.i64("integer value")?),
        TYPE_FLOAT => Value::Float(reader.f64("float value")?),
        TYPE_TEXT => {
            let bytes = reader.text_bytes("text value")?;
            match std::str::from_utf8(bytes) {
                Ok(text) => Value::Text(text.to_owned()),
                Err(_) => Value::RawText(bytes.to_vec()),
            }
        }
        TYPE_BLOB => Value::Blob(reader.blob("blob value")?.to_vec()),
        TYPE_NULL => {
            // The NULL word is always zero from real senders; its content is not checked.
            reader.u64("null value")?;
            Value::Null
        }
        TYPE_UNIXTIME => Value::UnixTime(reader.i64("unixtime value")?),
        TYPE_ISO8601 => Value::Iso8601(reader.text("iso8601 value")?.to_owned()),
        TYPE_BOOLEAN => Value::Boolean(reader.u64("boolean value")? != 0),
        other => return Err(DecodeError::UnknownValueType(other)),
    })
}

/// The schema a parameter tuple needs: 0 up to 255 values, 1 above.
pub fn params_schema(count: usize) -> u8 {
    u8::from(count > PARAMS_SCHEMA0_COUNT_MAX)
}

/// Appends a parameter tuple at a word boundary. Nothing at all is written for zero parameters:
/// both stock clients leave the tuple out, and servers read "no bytes left" as "no parameters".
/// The caller puts [`params_schema`] of the count in the message header.
pub fn encode_params(out: &mut Vec<u8>, params: &[Value]) {
    if params.is_empty() {
        return;
    }
    let start = out.len();
    if params.len() > PARAMS_SCHEMA0_COUNT_MAX {
        let count = u32::try_from(params.len()).expect("a parameter count fits in 32 bits");
        put_u32(out, count);
    } else {
        out.push(params.len() as u8);
    }
    out.extend(params.iter().map(Value::type_code));
    pad_to_word(out, start);
    for value in params {
        value.as_value_ref().encode(out);
    }
}

/// Decodes the parameter tuple that ends a body (absent = no parameters). `schema` is the
/// message header's schema byte: 0 (8-bit count) or 1 (32-bit count). Header padding content is
/// ignored: go-dqlite leaves stale bytes there (capture 11).
pub fn decode_params(
    reader: &mut Reader<'_>,
    kind: u8,
    schema: u8,
) -> Result<Vec<Value>, DecodeError> {
    if reader.is_empty() {
        return Ok(Vec::new());
    }
    let count = match schema {
        0 => u64::from(reader.u8("parameter count")?),
        1 => u64::from(reader.u32("parameter count")?),
        _ => return Err(DecodeError::UnknownSchema { kind, schema }),
    };
    if count > PARAMS_COUNT_MAX as u64 {
        return Err(DecodeError::TooManyParameters {
            count,
            max: PARAMS_COUNT_MAX,
        });
    }
    let count = reader.check_count(count, 1, "parameter type")?;
    let codes = reader.take(count, "parameter types")?;
    for &code in codes {
        if code == TYPE_UNIXTIME {
            return Err(DecodeError::ValueTypeNotAllowed(code));
        }
        if !is_known_type(code) {
            return Err(DecodeError::UnknownValueType(code));
        }
    }
    reader.align_to_word("parameter header padding")?;
    // Every value takes at least one word: check before allocating.
    let count = reader.check_count(count as u64, WORD_BYTES, "parameter")?;
    let mut values = Vec::with_capacity(count);
    for &code in codes {
        values.push(decode_value(reader, code)?);
    }
    Ok(values)
}

/// Bytes of the type-code header of a row with `columns_count` columns.
pub fn row_header_bytes(columns_count: usize) -> usize {
    roundup8(columns_count.div_ceil(2))
}

/// Appends one row tuple: the 4-bit type codes (low nibble for even columns), padding, the values.
pub fn encode_row(out: &mut Vec<u8>, row: &[ValueRef<'_>]) {
    let start = out.len();
    out.resize(start + row_header_bytes(row.len()), 0);
    for (i, value) in row.iter().enumerate() {
        out[start + i / 2] |= value.type_code() << (4 * (i % 2));
    }
    for value in row {
        value.encode(out);
    }
}

/// Decodes one row of `columns_count` values. The caller has already checked that the next word
/// is not an end marker.
pub fn decode_row(
    reader: &mut Reader<'_>,
    columns_count: usize,
) -> Result<Vec<Value>, DecodeError> {
    let header = reader.take(row_header_bytes(columns_count), "row type header")?;
    let columns_count = reader.check_count(columns_count as u64, WORD_BYTES, "row value")?;
    let mut row = Vec::with_capacity(columns_count);
    for i in 0..columns_count {
        let code = (header[i / 2] >> (4 * (i % 2))) & 0x0f;
        if !is_known_type(code) {
            return Err(DecodeError::UnknownValueType(code));
        }
        row.push(decode_value(reader, code)?);
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_values() -> Vec<Value> {
        vec![
            Value::Integer(-1),
            Value::Float(3.5),
            Value::Text("ünï".into()),
            Value::Blob(vec![0, 0xff]),
            Value::Null,
            Value::Iso8601("2024-01-02 03:04:05".into()),
            Value::Boolean(true),
            Value::Blob(Vec::new()),
        ]
    }

    #[test]
    fn test_params_round_trip_with_schema0_padding() {
        // Eight parameters: 1 count byte + 8 codes = 9 bytes, padded to 16.
        let values = sample_values();
        let mut out = Vec::new();
        encode_params(&mut out, &values);
        assert_eq!(&out[..9], &[8, 1, 2, 3, 4, 5, 10, 11, 4]);
        assert_eq!(&out[9..16], &[0; 7]);
        let mut reader = Reader::new(&out);
        assert_eq!(decode_params(&mut reader, 8, 0).unwrap(), values);
        assert!(reader.is_empty());
    }

    #[test]
    fn test_text_bytes_that_are_not_utf8_round_trip_exactly() {
        // SQLite may hold any bytes as TEXT: they travel as a TEXT value, byte for byte, and
        // decode as RawText (valid UTF-8 still decodes as Text).
        let values = vec![
            Value::RawText(vec![0xff, b'a', 0xc3]),
            Value::Text("ünï".into()),
        ];
        let mut out = Vec::new();
        encode_params(&mut out, &values);
        assert_eq!(&out[..3], &[2, TYPE_TEXT, TYPE_TEXT]);
        let mut reader = Reader::new(&out);
        assert_eq!(decode_params(&mut reader, 8, 0).unwrap(), values);
        let mut row = Vec::new();
        encode_row(&mut row, &[ValueRef::RawText(&[0x80, 0x81])]);
        let mut reader = Reader::new(&row);
        assert_eq!(
            decode_row(&mut reader, 1).unwrap(),
            vec![Value::RawText(vec![0x80, 0x81])]
        );
    }

    #[test]
    fn test_params_over_255_use_schema1() {
        // 300 parameters do not fit schema 0's count byte: schema 1 carries a 32-bit count.
        let values: Vec<Value> = (0..300).map(Value::Integer).collect();
        assert_eq!(params_schema(values.len()), 1);
        let mut out = Vec::new();
        encode_params(&mut out, &values);
        assert_eq!(&out[..4], &300u32.to_le_bytes());
        let decoded = decode_params(&mut Reader::new(&out), 8, 1).unwrap();
        assert_eq!(decoded, values);
    }

    #[test]
    fn test_params_reject_unixtime_and_unknown_codes() {
        let body = [1u8, TYPE_UNIXTIME, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            decode_params(&mut Reader::new(&body), 9, 0),
            Err(DecodeError::ValueTypeNotAllowed(TYPE_UNIXTIME))
        );
        let body = [1u8, 7, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            decode_params(&mut Reader::new(&body), 9, 0),
            Err(DecodeError::UnknownValueType(7))
        );
        // A count claiming more values than the body holds allocates nothing.
        let body = [0xe8u8, 0x03, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            decode_params(&mut Reader::new(&body), 9, 1),
            Err(DecodeError::CountTooLarge { .. })
        ));
        // More parameters than a statement can take are refused before anything else.
        let body = [0xffu8, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert_eq!(
            decode_params(&mut Reader::new(&body), 9, 1),
            Err(DecodeError::TooManyParameters {
                count: u64::from(u32::MAX),
                max: PARAMS_COUNT_MAX
            })
        );
    }

    #[test]
    fn test_parameter_count_limit() {
        for (count, ok) in [(PARAMS_COUNT_MAX, true), (PARAMS_COUNT_MAX + 1, false)] {
            let params = vec![Value::Integer(1); count];
            let mut out = Vec::new();
            encode_params(&mut out, &params);
            let decoded = decode_params(&mut Reader::new(&out), 5, params_schema(count));
            assert_eq!(decoded.is_ok(), ok, "{count}: {decoded:?}");
        }
    }

    #[test]
    fn test_row_header_nibbles_low_first() {
        // The reference's example: INTEGER, FLOAT, TEXT, BLOB, NULL -> 21 43 05 00 00 00 00 00.
        let row = [
            ValueRef::Integer(1),
            ValueRef::Float(1.0),
            ValueRef::Text("a"),
            ValueRef::Blob(b"b"),
            ValueRef::Null,
        ];
        let mut out = Vec::new();
        encode_row(&mut out, &row);
        assert_eq!(&out[..8], &[0x21, 0x43, 0x05, 0, 0, 0, 0, 0]);
        let decoded = decode_row(&mut Reader::new(&out), 5).unwrap();
        assert_eq!(
            decoded,
            row.iter().map(ValueRef::to_value).collect::<Vec<_>>()
        );
        assert_eq!(row_header_bytes(16), 8);
        assert_eq!(row_header_bytes(17), 16);
    }
}
