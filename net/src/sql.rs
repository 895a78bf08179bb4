//! SQL text as a client sees it, without SQLite: splitting text into statements on `;` outside
//! strings, quoted identifiers, comments and `CREATE TRIGGER … END` bodies, and classifying a
//! statement by its keywords (does it return rows, does it change rows, is it read-only, does it
//! open or end a transaction). Keywords are read as tokens, so comments, case and string
//! literals do not fool it.
//!
//! The one lexical SQL classifier of atoll, for the code that has no SQLite: the client (which
//! must know whether a transaction is open before retrying elsewhere), the shell, and the node's
//! reading of request text. The engine asks SQLite itself (`atoll_core::sql`); a test in the
//! node crate checks [`split`] against `sqlite3_complete()`.
//!
//! The splitter is the state machine of SQLite's `sqlite3_complete()` (complete.c), written
//! anew: tokens are whitespace/comments, `;`, a few keywords and "anything else"; a `;` ends a
//! statement unless it sits inside a trigger body, which ends at `END ;`.

/// A token class of the statement-completion state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Semi,
    Space,
    Other,
    Explain,
    Create,
    Temp,
    Trigger,
    End,
}

/// One token: its class, its byte range in the text, and whether it was terminated (an open
/// string or block comment runs to the end of the text and leaves the statement incomplete).
#[derive(Debug, Clone, Copy)]
struct Token {
    class: Class,
    start: usize,
    end: usize,
    terminated: bool,
}

/// SQLite's identifier characters, as the tokenizer of `sqlite3_complete()` sees them: ASCII
/// letters, digits, `_`, `$`, and every byte of a multi-byte UTF-8 character.
fn is_identifier_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$' || byte >= 0x80
}

/// The token starting at `start` (`start < text.len()`).
fn next_token(text: &str, start: usize) -> Token {
    let bytes = text.as_bytes();
    assert!(start < bytes.len());
    let token = |class, end, terminated| Token {
        class,
        start,
        end,
        terminated,
    };
    let rest = &bytes[start..];
    match rest[0] {
        b' ' | b'\t' | b'\n' | b'\r' | 0x0c => token(Class::Space, start + 1, true),
        b';' => token(Class::Semi, start + 1, true),
        b'-' if rest.get(1) == Some(&b'-') => {
            // A line comment runs to the end of the line (or of the text, which is fine).
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |i| start + i + 1);
            token(Class::Space, end, true)
        }
        b'/' if rest.get(1) == Some(&b'*') => match text[start + 2..].find("*/") {
            Some(i) => token(Class::Space, start + 2 + i + 2, true),
            None => token(Class::Space, bytes.len(), false),
        },
        quote @ (b'\'' | b'"' | b'`') => {
            // A doubled quote inside is an escaped quote: scanning for the next quote and
            // restarting after it handles that, since `''` closes and reopens.
            match rest[1..].iter().position(|&b| b == quote) {
                Some(i) => token(Class::Other, start + 1 + i + 1, true),
                None => token(Class::Other, bytes.len(), false),
            }
        }
        b'[' => match rest.iter().position(|&b| b == b']') {
            Some(i) => token(Class::Other, start + i + 1, true),
            None => token(Class::Other, bytes.len(), false),
        },
        byte if is_identifier_byte(byte) => {
            let length = rest
                .iter()
                .position(|&b| !is_identifier_byte(b))
                .unwrap_or(rest.len());
            let word = &text[start..start + length];
            let class = if word.eq_ignore_ascii_case("explain") {
                Class::Explain
            } else if word.eq_ignore_ascii_case("create") {
                Class::Create
            } else if word.eq_ignore_ascii_case("temp") || word.eq_ignore_ascii_case("temporary") {
                Class::Temp
            } else if word.eq_ignore_ascii_case("trigger") {
                Class::Trigger
            } else if word.eq_ignore_ascii_case("end") {
                Class::End
            } else {
                Class::Other
            };
            token(class, start + length, true)
        }
        _ => {
            // Any other character is a one-character token; step over a whole UTF-8 character.
            let length = text[start..].chars().next().map_or(1, char::len_utf8);
            token(Class::Other, start + length, true)
        }
    }
}

/// States of the completion machine. `Start` means "between statements".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Invalid,
    Start,
    Normal,
    Explain,
    Create,
    Trigger,
    Semi,
    End,
}

fn transition(state: State, class: Class) -> State {
    use Class as C;
    use State as S;
    match (state, class) {
        (S::Invalid | S::Start | S::Normal | S::Explain | S::Create | S::End, C::Semi) => S::Start,
        (S::Invalid, C::Space) => S::Invalid,
        (S::Start, C::Space) => S::Start,
        (S::Invalid | S::Start, C::Explain) => S::Explain,
        (S::Invalid | S::Start | S::Explain, C::Create) => S::Create,
        (S::Invalid | S::Start, _) => S::Normal,
        (S::Normal, _) => S::Normal,
        (S::Explain, C::Space | C::Other) => S::Explain,
        (S::Explain, _) => S::Normal,
        (S::Create, C::Space | C::Temp) => S::Create,
        (S::Create, C::Trigger) => S::Trigger,
        (S::Create, _) => S::Normal,
        (S::Trigger, C::Semi) => S::Semi,
        (S::Trigger, _) => S::Trigger,
        (S::Semi, C::Semi | C::Space) => S::Semi,
        (S::Semi, C::End) => S::End,
        (S::Semi, _) => S::Trigger,
        (S::End, C::Space) => S::End,
        (S::End, _) => S::Trigger,
    }
}

/// SQL text cut into complete statements and an incomplete rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split<'a> {
    /// Complete statements, trimmed, without their final `;`; statements holding only
    /// whitespace and comments are left out.
    pub statements: Vec<&'a str>,
    /// The text after the last complete statement, trimmed; empty when nothing but whitespace
    /// and (closed) comments follows it.
    pub rest: &'a str,
}

/// Cuts `text` into statements.
pub fn split(text: &str) -> Split<'_> {
    let mut statements = Vec::new();
    let mut state = State::Invalid;
    let mut statement_start = 0;
    let mut has_content = false;
    let mut position = 0;
    // Bounded: every token consumes at least one byte.
    while position < text.len() {
        let token = next_token(text, position);
        assert!(token.end > position, "a token consumes at least one byte");
        position = token.end;
        if !token.terminated {
            // An open string or comment: the statement goes on (an interactive user is still
            // typing it).
            has_content = true;
            break;
        }
        state = transition(state, token.class);
        if token.class == Class::Semi && state == State::Start {
            if has_content {
                statements.push(text[statement_start..token.start].trim());
            }
            statement_start = token.end;
            has_content = false;
        } else if token.class != Class::Space && token.class != Class::Semi {
            has_content = true;
        }
    }
    let rest = if has_content {
        text[statement_start..].trim()
    } else {
        ""
    };
    Split { statements, rest }
}

/// The words of a statement (identifiers and keywords), outside strings and comments.
fn words(statement: &str) -> impl Iterator<Item = &str> {
    let mut position = 0;
    std::iter::from_fn(move || {
        // Bounded: every token consumes at least one byte.
        while position < statement.len() {
            let token = next_token(statement, position);
            position = token.end;
            let first = statement.as_bytes()[token.start];
            if token.class != Class::Space
                && token.class != Class::Semi
                && is_identifier_byte(first)
                && !first.is_ascii_digit()
            {
                return Some(&statement[token.start..token.end]);
            }
        }
        None
    })
}

fn first_word(statement: &str) -> String {
    words(statement)
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase()
}

fn has_word(statement: &str, wanted: &[&str]) -> bool {
    words(statement).any(|w| wanted.iter().any(|x| w.eq_ignore_ascii_case(x)))
}

/// Whether a statement returns rows and goes as QUERY_SQL (as the Python client decides):
/// SELECT, VALUES, PRAGMA, EXPLAIN, WITH, or anything with RETURNING.
pub fn returns_rows(statement: &str) -> bool {
    matches!(
        first_word(statement).as_str(),
        "SELECT" | "VALUES" | "PRAGMA" | "EXPLAIN" | "WITH"
    ) || has_word(statement, &["RETURNING"])
}

/// Whether a statement has a RETURNING clause (a write that returns rows).
pub fn has_returning(statement: &str) -> bool {
    has_word(statement, &["RETURNING"])
}

/// Whether a statement's RESULT row count means something: INSERT, UPDATE, DELETE, REPLACE.
/// (The server reports the connection-wide `sqlite3_changes()`, stale after any other kind.)
pub fn counts_changes(statement: &str) -> bool {
    matches!(
        first_word(statement).as_str(),
        "INSERT" | "UPDATE" | "DELETE" | "REPLACE"
    )
}

/// Whether a statement cannot write, so that running it again after a lost connection is safe.
pub fn is_read_only(statement: &str) -> bool {
    let writes = ["INSERT", "UPDATE", "DELETE", "REPLACE", "RETURNING"];
    match first_word(statement).as_str() {
        "SELECT" | "VALUES" | "EXPLAIN" | "WITH" => !has_word(statement, &writes),
        _ => false,
    }
}

/// How a successful statement changes the transaction state: `Some(true)` opens one (BEGIN,
/// SAVEPOINT), `Some(false)` ends it (COMMIT, END, ROLLBACK without TO), `None` leaves it or
/// cannot be told from the text. `RELEASE` is `None`: it ends the transaction only when it
/// releases the outermost savepoint of one that SAVEPOINT opened, so a caller keeps treating the
/// transaction as open, the safe side for a client deciding whether it may retry elsewhere.
pub fn transaction_effect(statement: &str) -> Option<bool> {
    match first_word(statement).as_str() {
        "BEGIN" | "SAVEPOINT" => Some(true),
        "COMMIT" | "END" => Some(false),
        "ROLLBACK" if !has_word(statement, &["TO"]) => Some(false),
        _ => None,
    }
}

/// How SQL text of one or more statements changes the transaction state: the effect of its
/// last statement that has one (`BEGIN; …; COMMIT` ends where it started).
pub fn text_transaction_effect(text: &str) -> Option<bool> {
    let split = split(text);
    let rest = (!split.rest.is_empty()).then_some(split.rest);
    split
        .statements
        .into_iter()
        .chain(rest)
        .rev()
        .find_map(transaction_effect)
}

#[cfg(test)]
mod tests;
