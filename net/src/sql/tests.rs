use super::*;

fn statements(text: &str) -> Vec<&str> {
    split(text).statements
}

#[test]
fn test_split_on_semicolons() {
    assert_eq!(
        statements("CREATE TABLE t (x); INSERT INTO t VALUES (1);SELECT * FROM t;"),
        [
            "CREATE TABLE t (x)",
            "INSERT INTO t VALUES (1)",
            "SELECT * FROM t"
        ]
    );
    let split = split("SELECT 1; SELECT 2");
    assert_eq!(split.statements, ["SELECT 1"]);
    assert_eq!(split.rest, "SELECT 2");
}

#[test]
fn test_split_ignores_semicolons_in_strings_and_identifiers() {
    assert_eq!(
        statements(r#"INSERT INTO t VALUES ('a;b', 'it''s;', "c;d", `e;f`, [g;h]); SELECT 1;"#),
        [
            r#"INSERT INTO t VALUES ('a;b', 'it''s;', "c;d", `e;f`, [g;h])"#,
            "SELECT 1"
        ]
    );
}

#[test]
fn test_split_ignores_semicolons_in_comments() {
    let text = "SELECT 1 -- one; two\n; /* three; */ SELECT 2;";
    assert_eq!(
        statements(text),
        ["SELECT 1 -- one; two", "/* three; */ SELECT 2"]
    );
}

#[test]
fn test_split_keeps_trigger_bodies_whole() {
    let trigger = "CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN \
                   INSERT INTO log VALUES (new.x); \
                   UPDATE c SET n = CASE WHEN n > 0 THEN n + 1 ELSE 1 END; \
                   END";
    let text = format!("{trigger}; SELECT 1;");
    assert_eq!(statements(&text), [trigger, "SELECT 1"]);
    // Inside the body, a statement is not the end of the trigger.
    let open = split("CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO log VALUES (1);");
    assert!(open.statements.is_empty());
    assert!(open.rest.starts_with("CREATE TRIGGER"));
    // EXPLAIN in front is understood too.
    assert_eq!(
        statements("EXPLAIN CREATE TRIGGER a AFTER INSERT ON t BEGIN SELECT 1; END;").len(),
        1
    );
}

#[test]
fn test_split_skips_empty_statements_and_reports_incomplete_ones() {
    assert_eq!(
        statements(";; -- nothing\n ; /* at all */ ;"),
        Vec::<&str>::new()
    );
    assert_eq!(split("  -- only a comment\n").rest, "");
    assert_eq!(split("SELECT 'open").rest, "SELECT 'open");
    assert_eq!(split("SELECT 1; /* open comment").rest, "/* open comment");
    assert_eq!(split("SELECT 1; ").rest, "");
}

#[test]
fn test_split_handles_multibyte_text() {
    assert_eq!(
        statements("SELECT 'ünï;' AS ä; SELECT ü;"),
        ["SELECT 'ünï;' AS ä", "SELECT ü"]
    );
}

#[test]
fn test_returns_rows_like_the_python_client() {
    for query in [
        "SELECT 1",
        "  select 1",
        "VALUES (1)",
        "PRAGMA table_info(t)",
        "EXPLAIN QUERY PLAN SELECT 1",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "-- comment\nSELECT 1",
        "INSERT INTO t VALUES (1) RETURNING id",
        "DELETE FROM t returning *",
    ] {
        assert!(returns_rows(query), "{query}");
    }
    for exec in [
        "INSERT INTO t VALUES ('SELECT')",
        "CREATE TABLE \"returning\" (x)",
        "BEGIN",
        "UPDATE t SET x = 'RETURNING'",
    ] {
        assert!(!returns_rows(exec), "{exec}");
    }
}

#[test]
fn test_has_returning() {
    assert!(has_returning("INSERT INTO t VALUES (1) RETURNING id"));
    assert!(!has_returning("INSERT INTO t VALUES ('RETURNING')"));
    assert!(!has_returning("SELECT 1"));
}

#[test]
fn test_counts_changes_only_for_data_changes() {
    assert!(counts_changes("insert into t values (1)"));
    assert!(counts_changes("UPDATE t SET x = 1"));
    assert!(counts_changes("DELETE FROM t"));
    assert!(counts_changes("REPLACE INTO t VALUES (1)"));
    assert!(!counts_changes("CREATE TABLE t (x)"));
    assert!(!counts_changes("COMMIT"));
}

#[test]
fn test_read_only_statements() {
    assert!(is_read_only("SELECT * FROM t"));
    assert!(is_read_only("WITH a AS (SELECT 1) SELECT * FROM a"));
    assert!(!is_read_only(
        "WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a"
    ));
    assert!(!is_read_only("PRAGMA user_version = 3"));
    assert!(!is_read_only("INSERT INTO t VALUES (1)"));
    assert!(!is_read_only("SELECT 1; DELETE FROM t"));
}

#[test]
fn test_transaction_effect() {
    assert_eq!(transaction_effect("BEGIN IMMEDIATE"), Some(true));
    assert_eq!(transaction_effect("savepoint a"), Some(true));
    assert_eq!(transaction_effect("COMMIT"), Some(false));
    assert_eq!(transaction_effect("END TRANSACTION"), Some(false));
    assert_eq!(transaction_effect("ROLLBACK"), Some(false));
    assert_eq!(transaction_effect("ROLLBACK TO a"), None);
    assert_eq!(transaction_effect("INSERT INTO t VALUES (1)"), None);
}
