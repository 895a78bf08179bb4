//! What the node measures of itself: Prometheus metrics (`--metrics-address`) and the figures
//! `atoll status` shows.
//!
//! The text format (version 0.0.4): per metric `# HELP`, `# TYPE`, then samples; histograms as
//! cumulative `_bucket{le="…"}` lines ending with `+Inf`, then `_sum` and `_count`.

use std::fmt::Write as _;

/// AT_PAGESZ in the auxiliary vector.
const AT_PAGESZ: u64 = 6;
/// The page size assumed when the auxiliary vector does not say.
const PAGE_BYTES_DEFAULT: u64 = 4096;

/// The Content-Type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds of latency histograms (seconds): 100 µs to 10 s.
const SECONDS_BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];
/// Bucket bounds of the group commit histogram (writes per command).
const WRITES_BOUNDS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
/// Bucket bounds of the chain histogram (commands in flight ahead of a proposed one).
const AHEAD_BOUNDS: [f64; 5] = [0.0, 1.0, 2.0, 3.0, 7.0];

/// A histogram with fixed buckets: memory does not grow with observations.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last counts those above every bound.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one observation.
    pub fn observe(&mut self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// The node's counters and histograms (gauges are read from the node when rendering).
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Elections this node has seen: each term it reached counts one.
    pub elections: u64,
    /// The term last seen (to count elections).
    pub term_seen: u64,
    /// Time from a write's request to its answer, for writes that went through Raft.
    pub write_latency: Histogram,
    /// Writes per proposed command (group commit).
    pub group_commit: Histogram,
    /// Commands of the same database in flight ahead of each proposed one (chains).
    pub chain_ahead: Histogram,
    /// Duration of each Raft log sync (fdatasync/msync).
    pub log_sync: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            elections: 0,
            term_seen: 0,
            write_latency: Histogram::new(&SECONDS_BOUNDS),
            group_commit: Histogram::new(&WRITES_BOUNDS),
            chain_ahead: Histogram::new(&AHEAD_BOUNDS),
            log_sync: Histogram::new(&SECONDS_BOUNDS),
        }
    }
}

/// The gauges and counters read from the node at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub is_leader: bool,
    /// Leader only: (peer id, entries its durable log is behind the leader's last index).
    pub peer_lags: Vec<(u64, u64)>,
    /// Snapshots taken and installed.
    pub snapshots: u64,
    /// Snapshot streams from the leader this node could not store (too large, disk full).
    pub snapshots_refused: u64,
    pub databases: u64,
    pub client_connections: u64,
    pub resident_memory_bytes: Option<u64>,
}

impl Metrics {
    /// Metrics of a node that starts in `term`.
    pub fn new(term: u64) -> Metrics {
        Metrics {
            term_seen: term,
            ..Metrics::default()
        }
    }

    /// A term seen at the end of a turn: each new term is one more election.
    pub fn note_term(&mut self, term: u64) {
        if term > self.term_seen {
            self.elections += term - self.term_seen;
            self.term_seen = term;
        }
    }

    /// The whole text of a scrape.
    pub fn render(&self, sample: &Sample) -> String {
        let mut out = String::new();
        let mut single = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        single(
            "atoll_raft_term",
            "gauge",
            "Current Raft term.",
            sample.term,
        );
        single(
            "atoll_raft_commit_index",
            "gauge",
            "Highest log index known committed.",
            sample.commit_index,
        );
        single(
            "atoll_raft_applied_index",
            "gauge",
            "Highest log index applied to the databases.",
            sample.applied_index,
        );
        single(
            "atoll_raft_is_leader",
            "gauge",
            "1 if this node leads, else 0.",
            u64::from(sample.is_leader),
        );
        single(
            "atoll_raft_elections_total",
            "counter",
            "Elections seen by this node (terms reached since it started).",
            self.elections,
        );
        single(
            "atoll_snapshots_total",
            "counter",
            "Snapshots taken or installed since the node started.",
            sample.snapshots,
        );
        single(
            "atoll_snapshots_refused_total",
            "counter",
            "Snapshots from the leader refused for want of disk space since the node started.",
            sample.snapshots_refused,
        );
        single(
            "atoll_databases",
            "gauge",
            "Databases this node holds.",
            sample.databases,
        );
        single(
            "atoll_client_connections",
            "gauge",
            "Open client connections.",
            sample.client_connections,
        );
        if let Some(bytes) = sample.resident_memory_bytes {
            single(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                bytes,
            );
        }
        let name = "atoll_peer_match_lag_entries";
        let _ = writeln!(
            out,
            "# HELP {name} Leader only: entries a peer's log is behind the leader's.\n\
             # TYPE {name} gauge"
        );
        for (peer, lag) in &sample.peer_lags {
            let _ = writeln!(out, "{name}{{peer=\"{peer}\"}} {lag}");
        }
        self.write_latency.render(
            &mut out,
            "atoll_write_latency_seconds",
            "Time from a write request to its answer, for writes committed through Raft.",
        );
        self.group_commit.render(
            &mut out,
            "atoll_group_commit_writes",
            "Writes carried by each proposed command (group commit).",
        );
        self.chain_ahead.render(
            &mut out,
            "atoll_chain_ahead_commands",
            "Commands of the same database in flight (proposed, not applied) ahead of each \
             proposed command: it was computed on top of them.",
        );
        self.log_sync.render(
            &mut out,
            "atoll_log_sync_seconds",
            "Duration of each Raft log sync.",
        );
        out
    }
}

/// The process's resident memory in bytes, from `/proc/self/statm` (Linux); `None` when it
/// cannot be read.
pub fn resident_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(page_bytes())
}

/// The kernel's page size (4 KiB, or 16/64 KiB on some aarch64 kernels), from the auxiliary
/// vector: the CLI stays free of `unsafe` (no `sysconf`).
fn page_bytes() -> u64 {
    std::fs::read("/proc/self/auxv")
        .ok()
        .and_then(|bytes| auxv_value(&bytes, AT_PAGESZ))
        .filter(|bytes| bytes.is_power_of_two())
        .unwrap_or(PAGE_BYTES_DEFAULT)
}

/// The value of `key` in an auxiliary vector of native-width, native-endian (key, value) pairs
/// (little-endian: every target atoll supports is; others report the default page size).
fn auxv_value(bytes: &[u8], key: u64) -> Option<u64> {
    if cfg!(target_endian = "big") {
        return None;
    }
    let width = std::mem::size_of::<usize>();
    let word = |b: &[u8]| -> u64 {
        match b.len() {
            8 => u64::from_le_bytes(b.try_into().unwrap_or_default()),
            _ => u64::from(u32::from_le_bytes(b.try_into().unwrap_or_default())),
        }
    };
    bytes.chunks_exact(2 * width).find_map(|pair| {
        let (k, v) = (word(&pair[..width]), word(&pair[width..]));
        (k == key).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_resident_memory_is_read_and_plausible() {
        let bytes = resident_memory_bytes().expect("Linux has /proc/self/statm");
        assert!(bytes > 1 << 20 && bytes < 1 << 40, "{bytes}");
        assert!(page_bytes() >= 4096);
    }

    #[test]
    fn test_histogram_buckets_are_cumulative() {
        let mut histogram = Histogram::new(&WRITES_BOUNDS);
        for value in [1.0, 3.0, 3.0, 500.0] {
            histogram.observe(value);
        }
        let mut out = String::new();
        histogram.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"2\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"4\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"128\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_sum 507\nx_count 4\n"), "{out}");
    }

    #[test]
    fn test_elections_count_terms_past_the_starting_one() {
        let mut metrics = Metrics::new(5);
        metrics.note_term(5);
        assert_eq!(metrics.elections, 0);
        metrics.note_term(7);
        metrics.note_term(6);
        assert_eq!(metrics.elections, 2);
    }
}
