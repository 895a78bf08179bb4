//! `atoll-bench`'s command line: asking for help never starts a run.

use std::process::Command;

#[test]
fn test_help_after_a_suite_prints_the_usage_and_runs_nothing() {
    for args in [
        &["--help"][..],
        &["kv", "--help"],
        &["failover", "-h", "--quick"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_atoll-bench"))
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{args:?}: {stderr}");
        assert!(
            stdout.starts_with("usage: atoll-bench SUITE"),
            "{args:?}: {stdout}"
        );
        assert!(stdout.contains("  kv "), "{stdout}");
        assert!(
            !stdout.contains("kv baseline raw-fdatasync") && !stderr.contains("building atoll"),
            "{args:?} started a run: {stdout}{stderr}"
        );
    }
}
