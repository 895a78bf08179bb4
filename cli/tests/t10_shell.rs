//! `atoll shell` against a real server (dqlite-demo unless ATOLL_TEST_SERVER says otherwise):
//! every value type in every output format, errors, large results, several statements, the
//! dot-commands, interactive input, transactions, and agreement with the `dqlite` shell.

mod support;

use support::{atoll, atoll_with_stdin, require, run_command, shell, Cluster, ServerKind};

/// The table every scenario that needs typed data creates: one column per SQLite storage class.
const CREATE_TYPES: &str =
    "CREATE TABLE types (id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB)";
const INSERT_TYPES: &str = "INSERT INTO types (i, r, t, b) VALUES \
     (42, 3.5, 'hello', x'00ff10'), \
     (NULL, NULL, NULL, NULL), \
     (-9223372036854775808, 2.0, 'ünï, \"quoted\"', x''), \
     (7, -0.125, 'semi;colon', randomblob(100))";

/// Writes rows of every type, then reads them back in each format: the output is exact, so
/// any change in how a type is shown fails here.
fn scenario_types_in_every_format(cluster: &Cluster) {
    let address = cluster.address(0);
    let out = shell(
        address,
        "types",
        &[&format!("{CREATE_TYPES}; {INSERT_TYPES}")],
    );
    assert_eq!(out.ok(), "OK\nOK (4 rows changed)\n");

    let select = "SELECT id, i, r, t, b FROM types WHERE id < 4 ORDER BY id";
    let table = shell(address, "types", &[select]);
    assert_eq!(
        table.ok(),
        "+----+----------------------+------+---------------+-----------+\n\
         | id | i                    | r    | t             | b         |\n\
         +----+----------------------+------+---------------+-----------+\n\
         |  1 |                   42 |  3.5 | hello         | x'00ff10' |\n\
         |  2 | NULL                 | NULL | NULL          | NULL      |\n\
         |  3 | -9223372036854775808 |  2.0 | ünï, \"quoted\" | x''       |\n\
         +----+----------------------+------+---------------+-----------+\n\
         3 rows\n"
    );

    let json = shell(address, "types", &["--format", "json", select]);
    assert_eq!(
        json.ok(),
        "[{\"id\":1,\"i\":42,\"r\":3.5,\"t\":\"hello\",\"b\":\"00ff10\"},\n\
         {\"id\":2,\"i\":null,\"r\":null,\"t\":null,\"b\":null},\n\
         {\"id\":3,\"i\":-9223372036854775808,\"r\":2.0,\"t\":\"ünï, \\\"quoted\\\"\",\
         \"b\":\"\"}]\n"
    );

    let csv = shell(address, "types", &["--format", "csv", select]);
    assert_eq!(
        csv.ok(),
        "id,i,r,t,b\n\
         1,42,3.5,hello,00ff10\n\
         2,,,,\n\
         3,-9223372036854775808,2.0,\"ünï, \"\"quoted\"\"\",\n"
    );

    // A long blob is cut short in a table and whole in JSON.
    let long = shell(address, "types", &["SELECT b FROM types WHERE id = 4"]);
    assert!(long.ok().contains("... (100 bytes) |"), "{}", long.stdout);
    let long = shell(
        address,
        "types",
        &[
            "-f",
            "json",
            "SELECT length(b) AS n, b FROM types WHERE id = 4",
        ],
    );
    let text = long.ok();
    assert!(text.starts_with("[{\"n\":100,\"b\":\""), "{text}");
    assert_eq!(
        text.len(),
        "[{\"n\":100,\"b\":\"\"}]\n".len() + 200,
        "{text}"
    );
}

/// Columns declared DATETIME and BOOLEAN come back typed (UNIXTIME, ISO8601, BOOLEAN on the
/// wire), NULLs included the way dqlite sends them (ISO8601 "" and BOOLEAN false).
fn scenario_declared_types(cluster: &Cluster) {
    let address = cluster.address(0);
    shell(
        address,
        "declared",
        &[
            "CREATE TABLE d (id INTEGER PRIMARY KEY, ts DATETIME, ok BOOLEAN); \
           INSERT INTO d (ts, ok) VALUES (1700000000, 1), ('2024-01-02 03:04:05', 0), \
           (NULL, NULL)",
        ],
    )
    .ok();
    let select = "SELECT ts, ok FROM d ORDER BY id";
    assert_eq!(
        shell(address, "declared", &[select]).ok(),
        "+---------------------+-------+\n\
         | ts                  | ok    |\n\
         +---------------------+-------+\n\
         | 2023-11-14 22:13:20 | true  |\n\
         | 2024-01-02 03:04:05 | false |\n\
         | NULL                | false |\n\
         +---------------------+-------+\n\
         3 rows\n"
    );
    assert_eq!(
        shell(address, "declared", &["-f", "json", select]).ok(),
        "[{\"ts\":1700000000,\"ok\":true},\n\
         {\"ts\":\"2024-01-02 03:04:05\",\"ok\":false},\n\
         {\"ts\":null,\"ok\":false}]\n"
    );
}

#[test]
fn test_declared_datetime_and_boolean_columns() {
    scenario_declared_types(&Cluster::start(1));
}

/// The same scenario against `atoll start`.
#[test]
fn test_atoll_declared_datetime_and_boolean_columns() {
    scenario_declared_types(&Cluster::start_kind(ServerKind::Atoll, 1));
}

#[test]
fn test_types_in_every_format() {
    scenario_types_in_every_format(&Cluster::start(1));
}

/// The same scenario against `atoll start`.
#[test]
fn test_atoll_types_in_every_format() {
    scenario_types_in_every_format(&Cluster::start_kind(ServerKind::Atoll, 1));
}

/// A syntax error: exit status 1 and SQLite's own message on stderr; a statement after it in
/// the same argument does not run.
fn scenario_errors(cluster: &Cluster) {
    let address = cluster.address(0);
    let error = shell(address, "errors", &["SELEC 1"]);
    assert!(
        error.failed().contains("near \"SELEC\": syntax error"),
        "{error:?}"
    );
    assert_eq!(error.stdout, "");

    let error = shell(
        address,
        "errors",
        &["CREATE TABLE e (x); INSERT INTO nosuch VALUES (1); INSERT INTO e VALUES (1)"],
    );
    let stderr = error.failed();
    assert!(stderr.contains("statement 2 of 3 failed"), "{stderr}");
    assert!(stderr.contains("no such table: nosuch"), "{stderr}");
    let count = shell(
        address,
        "errors",
        &["-f", "csv", "SELECT count(*) AS n FROM e"],
    );
    assert_eq!(count.ok(), "n\n0\n");

    let error = shell(address, "errors", &["CREATE TABLE e (x)"]);
    assert!(
        error.failed().contains("table e already exists"),
        "{error:?}"
    );
}

#[test]
fn test_errors_are_reported_with_sqlites_message() {
    scenario_errors(&Cluster::start(1));
}

/// The same scenario against `atoll start`.
#[test]
fn test_atoll_errors_are_reported_with_sqlites_message() {
    scenario_errors(&Cluster::start_kind(ServerKind::Atoll, 1));
}

/// 10,000 rows come back in many ROWS batches (about 4 KiB each); every one is printed once,
/// in order, in every format.
fn scenario_large_result(cluster: &Cluster) {
    let address = cluster.address(0);
    shell(
        address,
        "large",
        &["CREATE TABLE big (n INTEGER, s TEXT); \
           WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 10000) \
           INSERT INTO big SELECT n, 'row ' || n FROM c"],
    )
    .ok();
    let csv = shell(
        address,
        "large",
        &["-f", "csv", "SELECT n, s FROM big ORDER BY n"],
    );
    let lines: Vec<&str> = csv.ok().lines().collect();
    assert_eq!(lines.len(), 10_001);
    assert_eq!(lines[0], "n,s");
    for (index, line) in lines[1..].iter().enumerate() {
        assert_eq!(*line, format!("{},row {}", index + 1, index + 1));
    }
    let table = shell(address, "large", &["SELECT n FROM big"]);
    let text = table.ok();
    assert!(
        text.ends_with("+-------+\n10000 rows\n"),
        "{}",
        &text[text.len() - 60..]
    );
    assert_eq!(text.lines().count(), 10_000 + 5);
    let json = shell(address, "large", &["-f", "json", "SELECT n FROM big"]);
    assert_eq!(json.ok().matches("{\"n\":").count(), 10_000);
}

#[test]
fn test_ten_thousand_rows_in_several_batches() {
    scenario_large_result(&Cluster::start(1));
}

/// The same scenario against `atoll start`.
#[test]
fn test_atoll_ten_thousand_rows_in_several_batches() {
    scenario_large_result(&Cluster::start_kind(ServerKind::Atoll, 1));
}

/// Several statements in one argument, split outside strings, comments and trigger bodies;
/// the zero-column PRAGMA (dqlite 1.11 refuses it as a query: the shell resends it as EXEC_SQL);
/// a RETURNING write outside a transaction (dqlite 1.11 would lose it and abort without the
/// shell's own BEGIN … COMMIT).
fn scenario_several_statements(cluster: &Cluster) {
    let address = cluster.address(0);
    let sql = "CREATE TABLE a (x TEXT); \
               CREATE TABLE log (x TEXT); \
               CREATE TRIGGER a_log AFTER INSERT ON a BEGIN \
                 INSERT INTO log VALUES ('saw ' || new.x); \
               END; \
               -- a comment; with a semicolon\n\
               INSERT INTO a VALUES ('one;two'), ('/* not a comment */'); \
               PRAGMA foreign_keys = ON; \
               SELECT x FROM log ORDER BY x";
    let out = shell(address, "several", &["-f", "csv", sql]);
    assert_eq!(out.ok(), "x\nsaw /* not a comment */\nsaw one;two\n");

    let out = shell(
        address,
        "several",
        &["INSERT INTO a VALUES ('r') RETURNING x, 1 + 1"],
    );
    assert_eq!(
        out.ok(),
        "+---+-------+\n| x | 1 + 1 |\n+---+-------+\n| r |     2 |\n+---+-------+\n1 row\n"
    );
    let out = shell(
        address,
        "several",
        &["-f", "csv", "SELECT count(*) AS n FROM log"],
    );
    assert_eq!(
        out.ok(),
        "n\n3\n",
        "the RETURNING insert committed and the node is alive"
    );
}

#[test]
fn test_several_statements_in_one_argument() {
    scenario_several_statements(&Cluster::start(1));
}

/// The same scenario against `atoll start`.
#[test]
fn test_atoll_several_statements_in_one_argument() {
    scenario_several_statements(&Cluster::start_kind(ServerKind::Atoll, 1));
}

/// `.tables` and `.schema` one-shot: names in order, CREATE statements in creation order.
fn scenario_dot_commands(cluster: &Cluster) {
    let address = cluster.address(0);
    shell(
        address,
        "dots",
        &[
            "CREATE TABLE zeta (z); CREATE TABLE alpha (a INTEGER PRIMARY KEY, b TEXT); \
           CREATE INDEX alpha_b ON alpha (b); CREATE VIEW v AS SELECT a FROM alpha",
        ],
    )
    .ok();
    assert_eq!(
        shell(address, "dots", &[".tables"]).ok(),
        "alpha\nv\nzeta\n"
    );
    assert_eq!(
        shell(address, "dots", &[".schema alpha"]).ok(),
        "CREATE TABLE alpha (a INTEGER PRIMARY KEY, b TEXT);\n\
         CREATE INDEX alpha_b ON alpha (b);\n"
    );
    let all = shell(address, "dots", &[".schema"]);
    assert_eq!(all.ok().lines().count(), 4);
    let missing = shell(address, "dots", &[".schema nosuch"]);
    assert!(missing.failed().contains("no table named \"nosuch\""));
    let unknown = shell(address, "dots", &[".frobnicate"]);
    assert!(unknown.failed().contains("unknown command .frobnicate"));
}

#[test]
fn test_tables_and_schema() {
    scenario_dot_commands(&Cluster::start(1));
}

/// The same scenario against `atoll start`.
#[test]
fn test_atoll_tables_and_schema() {
    scenario_dot_commands(&Cluster::start_kind(ServerKind::Atoll, 1));
}

/// Statements read from standard input (not a terminal: no prompts, no line editing): they
/// span lines, dot-commands switch the mode, a failing line is reported with its number, the
/// others still run, and the exit status says something failed.
fn scenario_stdin(cluster: &Cluster) {
    let address = cluster.address(0);
    let script = "CREATE TABLE s (\n\
                    k TEXT,\n\
                    v INTEGER\n\
                  );\n\
                  INSERT INTO s VALUES ('a', 1); INSERT INTO s VALUES ('b', 2);\n\
                  .mode csv\n\
                  SELECT k, v\n\
                    FROM s ORDER BY k;\n\
                  SELEC oops;\n\
                  .mode json\n\
                  SELECT v FROM s WHERE k = 'b'\n";
    let out = atoll_with_stdin(&["shell", "--cluster", address, "stdin"], script);
    assert_eq!(
        out.stdout,
        "OK\nOK (1 row changed)\nOK (1 row changed)\nk,v\na,1\nb,2\n[{\"v\":2}]\n"
    );
    let stderr = out.failed();
    assert!(
        stderr.contains("error (line 9): near \"SELEC\""),
        "{stderr}"
    );
    assert!(
        !stderr.contains("atoll>"),
        "no prompt when stdin is not a terminal"
    );

    // --bail stops at the first failure.
    let out = atoll_with_stdin(
        &["shell", "--cluster", address, "stdin", "--bail"],
        "SELEC 1;\nINSERT INTO s VALUES ('c', 3);\n",
    );
    out.failed();
    let count = shell(
        address,
        "stdin",
        &["-f", "csv", "SELECT count(*) AS n FROM s"],
    );
    assert_eq!(count.ok(), "n\n2\n");

    // .quit ends the session; the rest of the input is not read.
    let out = atoll_with_stdin(
        &["shell", "--cluster", address, "stdin"],
        ".quit\nSELEC 1;\n",
    );
    assert_eq!(out.ok(), "");
}

#[test]
fn test_statements_from_standard_input() {
    scenario_stdin(&Cluster::start(1));
}

/// The same scenario against `atoll start`.
#[test]
fn test_atoll_statements_from_standard_input() {
    scenario_stdin(&Cluster::start_kind(ServerKind::Atoll, 1));
}

/// A transaction spans statements of one session because the connection persists: inside it
/// the session sees its own insert; after ROLLBACK nothing is left, for it or anyone else.
fn scenario_transaction(cluster: &Cluster) {
    let address = cluster.address(0);
    shell(address, "tx", &["CREATE TABLE t (x)"]).ok();
    let out = atoll_with_stdin(
        &["shell", "--cluster", address, "tx", "-f", "csv"],
        "BEGIN;\nINSERT INTO t VALUES (1);\nINSERT INTO t VALUES (2);\n\
         SELECT count(*) AS n FROM t;\nROLLBACK;\nSELECT count(*) AS n FROM t;\n",
    );
    assert_eq!(out.ok(), "n\n2\nn\n0\n");
    let out = shell(address, "tx", &["-f", "csv", "SELECT count(*) AS n FROM t"]);
    assert_eq!(out.ok(), "n\n0\n");

    // Committed work stays.
    let out = shell(
        address,
        "tx",
        &["BEGIN; INSERT INTO t VALUES (3); COMMIT; SELECT x FROM t"],
    );
    assert!(
        out.ok().ends_with("| 3 |\n+---+\n1 row\n"),
        "{}",
        out.stdout
    );
}

#[test]
fn test_transaction_rolled_back_leaves_nothing() {
    scenario_transaction(&Cluster::start(1));
}

/// The same scenario against `atoll start`.
#[test]
fn test_atoll_transaction_rolled_back_leaves_nothing() {
    scenario_transaction(&Cluster::start_kind(ServerKind::Atoll, 1));
}

/// The `dqlite` shell (go-dqlite) and `atoll shell` see each other's writes on the same node.
fn scenario_dqlite_shell_agrees(cluster: &Cluster) {
    require("dqlite");
    let address = cluster.address(0);
    let dqlite = |sql: &str| {
        let mut command = std::process::Command::new("dqlite");
        command.args(["-s", address, "interop", sql]);
        run_command(command, None)
    };
    dqlite("CREATE TABLE kv (k TEXT, v INTEGER)").ok();
    dqlite("INSERT INTO kv VALUES ('from dqlite', 1)").ok();
    shell(
        address,
        "interop",
        &["INSERT INTO kv VALUES ('from atoll', 2)"],
    )
    .ok();
    let seen_by_dqlite = dqlite("SELECT k, v FROM kv ORDER BY v");
    assert_eq!(seen_by_dqlite.ok(), "from dqlite|1\nfrom atoll|2\n");
    let seen_by_atoll = shell(
        address,
        "interop",
        &["-f", "csv", "SELECT k, v FROM kv ORDER BY v"],
    );
    assert_eq!(seen_by_atoll.ok(), "k,v\nfrom dqlite,1\nfrom atoll,2\n");
}

#[test]
fn test_dqlite_shell_and_atoll_shell_see_the_same_data() {
    scenario_dqlite_shell_agrees(&Cluster::start(1));
}

/// The same scenario against `atoll start`.
#[test]
fn test_atoll_dqlite_shell_and_atoll_shell_see_the_same_data() {
    scenario_dqlite_shell_agrees(&Cluster::start_kind(ServerKind::Atoll, 1));
}

#[test]
fn test_help_explains_every_subcommand() {
    // `atoll` alone prints help; every subcommand's --help has an example.
    let bare = atoll(&[]);
    assert!(!bare.status.success());
    assert!(bare.stderr.contains("Usage: atoll"), "{}", bare.stderr);
    for command in [
        "shell", "dump", "cluster", "add", "assign", "remove", "transfer",
    ] {
        let help = atoll(&[command, "--help"]);
        let text = help.ok();
        assert!(text.contains("--cluster"), "{command}: {text}");
        assert!(text.contains("Example"), "{command}: {text}");
    }
}

/// A terminal session (a pseudo-terminal from util-linux's `script`), so rustyline's line
/// editing and history run for real: a typo erased with Backspace, a statement over two lines,
/// then a second session recalling the statement from the history file with the Up arrow.
fn scenario_terminal(cluster: &Cluster) {
    require("script");
    let address = cluster.address(0);
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history");
    let session = |keys: &[&str], wanted: &str| {
        let command = format!(
            "{} shell --cluster {address} term",
            env!("CARGO_BIN_EXE_atoll")
        );
        let mut terminal = support::Terminal::start(&command, &history);
        terminal.expect("atoll> ");
        for key in keys {
            terminal.type_keys(key);
        }
        terminal.expect(wanted);
        terminal.type_keys("\x04");
        assert!(terminal.finish().success(), "the session ends with Ctrl-D");
    };
    // "4x", Backspace, "2": the line editor fixes the typo; the statement ends on line two.
    session(&["SELECT 4x\x7f2 +\r", "0 AS answer;\r"], "|     42 |");
    let saved = std::fs::read_to_string(&history).unwrap();
    assert!(saved.contains("SELECT 42 +"), "{saved}");
    // Up recalls the whole statement from the history file.
    session(&["\x1b[A", "\r"], "|     42 |");
}

#[test]
fn test_interactive_terminal_with_line_editing_and_history() {
    scenario_terminal(&Cluster::start(1));
}

/// The same scenario against `atoll start`.
#[test]
fn test_atoll_interactive_terminal_with_line_editing_and_history() {
    scenario_terminal(&Cluster::start_kind(ServerKind::Atoll, 1));
}
