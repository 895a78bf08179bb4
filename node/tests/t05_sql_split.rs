//! The client-side statement splitter (`atoll_net::sql::split`, a rewrite of SQLite's
//! `sqlite3_complete()` state machine for code without SQLite) against SQLite's own answer.

use atoll_core::sql::is_complete;
use atoll_net::sql::split;

/// Pieces that exercise every state of the completion machine: strings and identifiers holding
/// `;`, open and closed comments, trigger bodies, EXPLAIN, TEMP, multi-byte text.
const PIECES: [&str; 24] = [
    "SELECT 1",
    ";",
    " ",
    "'a;b'",
    "'",
    "\"x;\"",
    "-- c;\n",
    "/* ; */",
    "/*",
    "*/",
    "CREATE ",
    "TRIGGER ",
    "tr AFTER INSERT ON t BEGIN ",
    "END",
    "EXPLAIN ",
    "TEMP ",
    "[a;]",
    "`b;`",
    "\n",
    "x",
    "ü",
    "end;",
    "BEGIN",
    "--",
];

#[test]
fn test_split_agrees_with_sqlite3_complete() {
    // For every prefix that ends in `;` and holds more than whitespace, comments and `;`, the
    // splitter leaves no incomplete rest exactly when SQLite calls the text complete. A `--`
    // comment open at the end of the text makes SQLite answer "incomplete"; the splitter ends it
    // with the text (a request's last line needs no newline), so SQLite is asked about the text
    // with a newline added, which closes such a comment and changes nothing else. Texts are
    // drawn from a fixed-seed generator, so a failure repeats.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |bound: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) as usize) % bound
    };
    let mut compared = 0;
    for _ in 0..3_000 {
        let mut text = String::new();
        for _ in 0..next(12) + 1 {
            text.push_str(PIECES[next(PIECES.len())]);
        }
        for (end, _) in text.match_indices(';') {
            let prefix = &text[..=end];
            let split = split(prefix);
            if split.statements.is_empty() && split.rest.is_empty() {
                continue;
            }
            compared += 1;
            assert_eq!(
                is_complete(&format!("{prefix}\n")),
                split.rest.is_empty(),
                "{prefix:?}: {split:?}"
            );
        }
    }
    assert!(compared > 1_000, "only {compared} prefixes compared");
}
