use super::*;

fn table(columns: &[&str], rows: Vec<Vec<Value>>) -> String {
    let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    let mut out = Vec::new();
    write_table(&mut out, &columns, &rows).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn test_floats_read_back_as_floats() {
    assert_eq!(format_float(3.5), "3.5");
    assert_eq!(format_float(2.0), "2.0");
    assert_eq!(format_float(-0.25), "-0.25");
    assert_eq!(format_float(0.0), "0.0");
    assert_eq!(format_float(1e300), "1e300");
    assert_eq!(format_float(1.5e-7), "1.5e-7");
    assert_eq!(format_float(123456789012345.0), "123456789012345.0");
    assert_eq!(format_float(f64::INFINITY), "Inf");
    for value in [3.5, 1e300, 1.5e-7, 0.1, 123456789012345.0, -2.0] {
        assert_eq!(format_float(value).parse::<f64>().unwrap(), value);
    }
}

#[test]
fn test_json_values_keep_their_types() {
    assert_eq!(json_value(&Value::Integer(-7)), "-7");
    assert_eq!(json_value(&Value::Float(2.0)), "2.0");
    assert_eq!(json_value(&Value::Float(f64::NEG_INFINITY)), "-9e999");
    assert_eq!(
        json_value(&Value::Text("a\"b\\c\nd\u{1}é".into())),
        r#""a\"b\\c\nd\u0001é""#
    );
    assert_eq!(json_value(&Value::Blob(vec![0, 255, 16])), r#""00ff10""#);
    assert_eq!(json_value(&Value::Null), "null");
    assert_eq!(json_value(&Value::Boolean(true)), "true");
    assert_eq!(json_value(&Value::UnixTime(86_400)), "86400");
    assert_eq!(json_value(&Value::Iso8601(String::new())), "null");
    assert_eq!(
        json_value(&Value::Iso8601("2024-01-01".into())),
        r#""2024-01-01""#
    );
}

#[test]
fn test_json_rows_are_an_array_of_objects() {
    let columns = vec!["id".to_string(), "name".to_string()];
    let mut out = Vec::new();
    let mut json = JsonRows::begin(&mut out).unwrap();
    json.row(
        &mut out,
        &columns,
        &[Value::Integer(1), Value::Text("a".into())],
    )
    .unwrap();
    json.row(&mut out, &columns, &[Value::Integer(2), Value::Null])
        .unwrap();
    json.end(&mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "[{\"id\":1,\"name\":\"a\"},\n{\"id\":2,\"name\":null}]\n"
    );
    let mut out = Vec::new();
    JsonRows::begin(&mut out).unwrap().end(&mut out).unwrap();
    assert_eq!(out, b"[]\n");
}

#[test]
fn test_csv_quotes_only_when_needed() {
    assert_eq!(csv_field(&Value::Text("plain".into())), "plain");
    assert_eq!(csv_field(&Value::Text("a,b".into())), "\"a,b\"");
    assert_eq!(
        csv_field(&Value::Text("say \"hi\"".into())),
        "\"say \"\"hi\"\"\""
    );
    assert_eq!(
        csv_field(&Value::Text("two\nlines".into())),
        "\"two\nlines\""
    );
    assert_eq!(csv_field(&Value::Text(" padded".into())), "\" padded\"");
    assert_eq!(csv_field(&Value::Null), "");
    assert_eq!(csv_field(&Value::Blob(vec![1, 2])), "0102");
    assert_eq!(csv_field(&Value::Boolean(false)), "0");
}

#[test]
fn test_table_aligns_columns() {
    let text = table(
        &["id", "name"],
        vec![
            vec![Value::Integer(1), Value::Text("hello".into())],
            vec![Value::Integer(100), Value::Null],
        ],
    );
    assert_eq!(
        text,
        "+-----+-------+\n\
         | id  | name  |\n\
         +-----+-------+\n\
         |   1 | hello |\n\
         | 100 | NULL  |\n\
         +-----+-------+\n"
    );
    // Multi-byte characters count as one column each.
    let text = table(&["t"], vec![vec![Value::Text("ünï".into())]]);
    assert!(text.contains("| ünï |"), "{text}");
}

#[test]
fn test_table_cells_for_every_type() {
    assert_eq!(table_cell(&Value::Blob(vec![0, 255])).0, "x'00ff'");
    let long = table_cell(&Value::Blob(vec![0xab; 40])).0;
    assert_eq!(long, format!("x'{}'... (40 bytes)", "ab".repeat(16)));
    assert_eq!(table_cell(&Value::Text("a\nb".into())).0, "a\\nb");
    assert_eq!(table_cell(&Value::UnixTime(0)).0, "1970-01-01 00:00:00");
    assert_eq!(
        table_cell(&Value::UnixTime(1_709_210_096)).0,
        "2024-02-29 12:34:56"
    );
    assert_eq!(table_cell(&Value::UnixTime(-1)).0, "1969-12-31 23:59:59");
    assert_eq!(table_cell(&Value::Iso8601(String::new())).0, "NULL");
    assert_eq!(table_cell(&Value::Boolean(true)).0, "true");
    assert!(
        table_cell(&Value::Float(1.5)).1,
        "numbers are right-aligned"
    );
}

#[test]
fn test_plural() {
    assert_eq!(plural(1, "row"), "1 row");
    assert_eq!(plural(0, "row"), "0 rows");
    assert_eq!(plural(10_000, "row"), "10000 rows");
}
