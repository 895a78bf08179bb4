//! Tidy: greps the source tree for habits the style guide rules out, so they cannot creep in.
//!
//! Checked in every `.rs` file of the workspace (and fuzz/): no `dbg!`, no `FIXME`, no line over
//! 100 columns, and `unsafe` only in the modules allowed to hold it, each use with a `// SAFETY:`
//! comment on the line directly above (or an `# Safety` doc section for an `unsafe fn`).
//!
//! And the project's Markdown stays true to the tree: ARCHITECTURE.md stays short, every
//! relative link resolves (the file exists; an `#anchor` names one of its headings), every
//! repository path written in backticks exists, and every `ARCHITECTURE.md, "Section"`
//! reference in the code names a heading that exists.

use std::fs;
use std::path::{Path, PathBuf};

/// The only files allowed to contain `unsafe` code (prefix match on the path from the root).
const UNSAFE_ALLOWED: &[&str] = &["storage/src/mmap.rs", "core/src/vfs/", "core/src/stmt.rs"];

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

/// The design doc is a map, not a manual: byte layouts live in the owning modules' rustdoc.
const ARCHITECTURE_LINES_MAX: usize = 500;

/// The Markdown files whose links and paths are checked.
const MARKDOWN_FILES: &[&str] = &[
    "README.md",
    "ARCHITECTURE.md",
    "CONTRIBUTING.md",
    "bench/RESULTS.md",
];

/// Directories a backticked path must start with to be checked as a path of this repository.
const PATH_ROOTS: &[&str] = &[
    "storage/", "raft/", "core/", "net/", "node/", "cli/", "bench/", "fuzz/", "scripts/",
];

/// GitHub's anchor for a heading: lowercase, spaces to hyphens, punctuation dropped.
fn heading_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The headings of a Markdown text (outside code blocks), without their `#`s.
fn headings(text: &str) -> Vec<String> {
    let mut in_code = false;
    let mut found = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            found.push(line.trim_start_matches('#').trim().to_owned());
        }
    }
    found
}

/// The targets of inline links `[text](target)` in a Markdown text.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            targets.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    targets
}

/// The backticked spans of a Markdown text that look like paths of this repository.
fn repository_paths(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| PATH_ROOTS.iter().any(|root| span.starts_with(root)))
        .filter(|span| {
            span.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c))
        })
        .map(str::to_owned)
        .collect()
}

/// Problems with the links and paths of the Markdown file `name`.
fn markdown_problems(root: &Path, name: &str) -> Vec<String> {
    let path = root.join(name);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {name}: {e}"));
    let dir = path.parent().expect("a file has a directory");
    let mut problems = Vec::new();
    for target in link_targets(&text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (file, anchor) = match target.split_once('#') {
            Some((file, anchor)) => (file, Some(anchor)),
            None => (target.as_str(), None),
        };
        let linked = if file.is_empty() {
            path.clone()
        } else {
            dir.join(file)
        };
        if !linked.exists() {
            problems.push(format!("{name}: link to {target}: no such file"));
            continue;
        }
        if let Some(anchor) = anchor {
            let linked_text = fs::read_to_string(&linked).unwrap_or_default();
            if !headings(&linked_text)
                .iter()
                .any(|heading| heading_anchor(heading) == anchor)
            {
                problems.push(format!("{name}: link to {target}: no such heading"));
            }
        }
    }
    for repository_path in repository_paths(&text) {
        if !root.join(&repository_path).exists() {
            problems.push(format!("{name}: `{repository_path}` does not exist"));
        }
    }
    problems
}

#[test]
fn test_markdown_links_and_paths_resolve() {
    let root = workspace_root();
    let mut problems = Vec::new();
    for name in MARKDOWN_FILES {
        problems.extend(markdown_problems(&root, name));
    }
    let architecture =
        fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md is readable");
    let lines = architecture.lines().count();
    if lines > ARCHITECTURE_LINES_MAX {
        problems.push(format!(
            "ARCHITECTURE.md: {lines} lines, at most {ARCHITECTURE_LINES_MAX}"
        ));
    }
    assert!(
        problems.is_empty(),
        "{} problem(s) in the Markdown:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn test_architecture_sections_named_in_code_exist() {
    let root = workspace_root();
    let architecture =
        fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md is readable");
    let headings = headings(&architecture);
    let mut files = vec![root.join("Cargo.toml")];
    for dir in [
        "storage", "raft", "core", "net", "node", "cli", "bench", "fuzz",
    ] {
        if root.join(dir).is_dir() {
            rust_files(&root.join(dir), &mut files);
        }
    }
    let this_file = Path::new(file!()).file_name().expect("file name");
    let mut problems = Vec::new();
    for path in files.iter().filter(|p| p.file_name() != Some(this_file)) {
        let text = fs::read_to_string(path).expect("source is UTF-8");
        // A reference may be cut by a line break and a comment marker: join the lines first.
        let joined = text
            .lines()
            .map(|line| line.trim_start().trim_start_matches(['/', '!', '#']).trim())
            .collect::<Vec<_>>()
            .join(" ");
        for (at, _) in joined.match_indices("ARCHITECTURE.md, \"") {
            let quoted = &joined[at + "ARCHITECTURE.md, \"".len()..];
            let Some(end) = quoted.find('"') else {
                continue;
            };
            let section = &quoted[..end];
            if !headings.iter().any(|heading| heading == section) {
                problems.push(format!(
                    "{}: ARCHITECTURE.md has no section \"{section}\"",
                    path.strip_prefix(&root).unwrap_or(path).display()
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} stale reference(s) to ARCHITECTURE.md:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn test_markdown_helpers() {
    assert_eq!(
        heading_anchor("Membership, roles and failover"),
        "membership-roles-and-failover"
    );
    assert_eq!(heading_anchor("The flow of a write"), "the-flow-of-a-write");
    assert_eq!(
        link_targets("see [a](A.md#x) and [b](https://e.org)"),
        vec!["A.md#x", "https://e.org"]
    );
    assert_eq!(
        repository_paths("`node/src/lib.rs`, `DIR/raft/`, `cli/src/cmd/<name>.rs`"),
        vec!["node/src/lib.rs"]
    );
    assert_eq!(headings("# a\n```\n# not\n```\n## b"), vec!["a", "b"]);
}
