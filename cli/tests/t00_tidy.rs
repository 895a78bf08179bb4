//! Tidy: greps the source tree for habits the style guide rules out, so they cannot creep in.
//!
//! Checked in every `.rs` file of the workspace (and fuzz/): no `dbg!`, no `FIXME`, no line over
//! 100 columns, and `unsafe` only in the modules allowed to hold it, each use with a `// SAFETY:`
//! comment on the line directly above (or an `# Safety` doc section for an `unsafe fn`).

use std::fs;
use std::path::{Path, PathBuf};

/// The only files allowed to contain `unsafe` code (prefix match on the path from the root).
const UNSAFE_ALLOWED: &[&str] = &["storage/src/mmap.rs", "core/src/vfs/"];

const LINE_COLUMNS_MAX: usize = 100;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ has a parent")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with('.') || name == "target" || name == "corpus" || name == "artifacts" {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// Whether `line` uses `unsafe` as a keyword (not inside a comment, a string or an identifier).
fn uses_unsafe_keyword(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or_default();
    if code.contains('"') {
        // Lint attributes and strings mention the word; real unsafe code never sits on a line
        // with a string literal in this code base.
        return false;
    }
    code.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|word| word == "unsafe")
}

#[test]
fn test_tidy() {
    let root = workspace_root();
    let mut files = Vec::new();
    for dir in [
        "storage", "raft", "core", "net", "node", "cli", "bench", "fuzz",
    ] {
        if root.join(dir).is_dir() {
            rust_files(&root.join(dir), &mut files);
        }
    }
    assert!(
        files.len() >= 6,
        "tidy found only {} files: wrong root?",
        files.len()
    );

    let this_file = Path::new(file!()).file_name().expect("file name");
    let mut problems = Vec::new();
    for path in &files {
        let relative = path
            .strip_prefix(&root)
            .expect("under root")
            .to_string_lossy()
            .to_string();
        let text = fs::read_to_string(path).expect("source is UTF-8");
        let lines: Vec<&str> = text.lines().collect();
        let is_self = path.file_name() == Some(this_file);
        for (number, line) in lines.iter().enumerate() {
            let at = format!("{relative}:{}", number + 1);
            if line.chars().count() > LINE_COLUMNS_MAX {
                problems.push(format!("{at}: line longer than {LINE_COLUMNS_MAX} columns"));
            }
            if is_self {
                continue;
            }
            if line.contains("dbg!(") {
                problems.push(format!("{at}: dbg! left in"));
            }
            if line.contains("FIXME") {
                problems.push(format!("{at}: FIXME left in"));
            }
            if !uses_unsafe_keyword(line) {
                continue;
            }
            if !UNSAFE_ALLOWED
                .iter()
                .any(|allowed| relative.starts_with(allowed))
            {
                problems.push(format!("{at}: unsafe outside {UNSAFE_ALLOWED:?}"));
                continue;
            }
            let trimmed = line.trim_start();
            if trimmed.starts_with("#![") || trimmed.starts_with("#[") {
                continue;
            }
            if trimmed.contains("unsafe fn") || trimmed.contains("unsafe extern") {
                // Declarations document their contract in a `# Safety` section instead.
                continue;
            }
            let documented = lines[..number]
                .iter()
                .rev()
                .map(|l| l.trim_start())
                .take_while(|l| l.starts_with("//"))
                .any(|l| l.starts_with("// SAFETY:"));
            if !documented {
                problems.push(format!(
                    "{at}: unsafe without a `// SAFETY:` comment right above"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "tidy found {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn test_unsafe_keyword_detection() {
    assert!(uses_unsafe_keyword(
        "    let map = unsafe { Mmap::map(&file) };"
    ));
    assert!(uses_unsafe_keyword("unsafe impl Send for Map {}"));
    assert!(!uses_unsafe_keyword("// unsafe is discussed here"));
    assert!(!uses_unsafe_keyword("#![forbid(unsafe_code)]"));
    assert!(!uses_unsafe_keyword("let unsafe_count = 1;"));
}
