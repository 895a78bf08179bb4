//! The nodes' loop timings as `atoll-bench kv` reads them: the file a node writes on SIGUSR1
//! (`DATA_DIR/timings`; the format is documented in the node's `timings.rs`), parsed and
//! summed up as where a write's time went.

/// Buckets per phase in the file: bucket `i` counts the samples below 2^i µs.
const BUCKETS: usize = 32;
/// Longest turns shown per node.
const TURNS_SHOWN: usize = 3;

/// One phase: how many samples, their sum and maximum (µs), and their log2 histogram.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Phase {
    /// Samples.
    pub count: u64,
    /// Their sum, µs.
    pub sum_us: u64,
    /// The longest, µs.
    pub max_us: u64,
    /// Bucket `i`: the samples below 2^i µs.
    pub buckets: Vec<u64>,
}

impl Phase {
    /// The mean, in µs (0 without samples).
    pub fn mean_us(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_us as f64 / self.count as f64
        }
    }

    /// An upper bound of the 99th percentile, in µs: the top of its power-of-two bucket (at
    /// most the maximum).
    pub fn p99_bound_us(&self) -> u64 {
        let rank = (self.count * 99).div_ceil(100);
        let mut seen = 0;
        for (index, count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= rank && seen > 0 {
                return (1u64 << index.min(62)).min(self.max_us.max(1));
            }
        }
        self.max_us
    }
}

/// A loop turn among the longest: total, events handled, persist, sync, apply (µs; events a
/// count).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Turn {
    /// The whole turn.
    pub total_us: u64,
    /// Events it handled.
    pub events: u64,
    /// Writing the log.
    pub persist_us: u64,
    /// Syncing the log.
    pub sync_us: u64,
    /// Applying committed entries.
    pub apply_us: u64,
    /// Handling the events.
    pub handle_us: u64,
    /// The work after raft's readies (compaction, snapshots, checkpoints, segments...).
    pub after_us: u64,
    /// The longest step of that work (`-` if none took time) and its time.
    pub after_step: (String, u64),
}

/// One node's timings since the previous ask.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Breakdown {
    /// The phases, in the file's order.
    pub phases: Vec<(String, Phase)>,
    /// The longest turns, longest first.
    pub longest: Vec<Turn>,
}

impl Breakdown {
    /// Parses a node's timings file; a malformed line is an error naming it.
    pub fn parse(text: &str) -> Result<Breakdown, String> {
        let mut breakdown = Breakdown::default();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let mut words: Vec<&str> = line.split(' ').collect();
            let name = words.remove(0);
            // A longest turn names its longest step in the second to last word.
            let step = if name == "turn_longest" && words.len() == 9 {
                Some(words.remove(7).to_owned())
            } else {
                None
            };
            let numbers: Vec<u64> = words
                .iter()
                .map(|w| w.parse::<u64>())
                .collect::<Result<_, _>>()
                .map_err(|_| format!("timings: not a number in {line:?}"))?;
            if name == "turn_longest" {
                let turn = match (&numbers[..], step) {
                    (&[total_us, events, persist_us, sync_us, apply_us], None) => Turn {
                        total_us,
                        events,
                        persist_us,
                        sync_us,
                        apply_us,
                        ..Turn::default()
                    },
                    (
                        &[total_us, events, persist_us, sync_us, apply_us, handle, after, step_us],
                        Some(step),
                    ) => Turn {
                        total_us,
                        events,
                        persist_us,
                        sync_us,
                        apply_us,
                        handle_us: handle,
                        after_us: after,
                        after_step: (step, step_us),
                    },
                    _ => {
                        return Err(format!(
                            "timings: {line:?} wants 5 numbers, or 8 and a name"
                        ))
                    }
                };
                breakdown.longest.push(turn);
                continue;
            }
            if numbers.len() != 3 + BUCKETS {
                return Err(format!("timings: {line:?} wants {} numbers", 3 + BUCKETS));
            }
            breakdown.phases.push((
                name.to_owned(),
                Phase {
                    count: numbers[0],
                    sum_us: numbers[1],
                    max_us: numbers[2],
                    buckets: numbers[3..].to_vec(),
                },
            ));
        }
        Ok(breakdown)
    }

    /// The phase `name` (empty if the node did not report it).
    pub fn phase(&self, name: &str) -> Phase {
        self.phases
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .unwrap_or_default()
    }

    /// One line: every phase's count, mean and p99 bound, the turns, the longest turns.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (name, phase) in &self.phases {
            if phase.count == 0 {
                continue;
            }
            parts.push(format!(
                "{name} {:.0} µs (p99 <{} µs, max {} µs, n {})",
                phase.mean_us(),
                phase.p99_bound_us(),
                phase.max_us,
                phase.count
            ));
        }
        let longest: Vec<String> = self
            .longest
            .iter()
            .take(TURNS_SHOWN)
            .map(|t| {
                let ms = |us: u64| us as f64 / 1000.0;
                let step = match &t.after_step {
                    (name, us) if *us > 0 => format!(", longest {name} {:.1}", ms(*us)),
                    _ => String::new(),
                };
                format!(
                    "{:.1} ms ({} events: handle {:.1}; persist {:.1}, sync {:.1}, apply {:.1}; \
                     after {:.1}{step})",
                    ms(t.total_us),
                    t.events,
                    ms(t.handle_us),
                    ms(t.persist_us),
                    ms(t.sync_us),
                    ms(t.apply_us),
                    ms(t.after_us),
                )
            })
            .collect();
        format!(
            "{}; longest turns: {}",
            parts.join(", "),
            longest.join(", ")
        )
    }

    /// A leader's write path in means, against the mean latency a client saw: execute, batch
    /// wait, commit (its append + sync, then the wait for the followers past the local sync),
    /// apply, answer, and the rest (queueing for the database's write lock, network, client).
    pub fn leader_path(&self, client_mean_us: f64) -> String {
        let mean = |name: &str| self.phase(name).mean_us();
        let node =
            mean("execute") + mean("batch") + mean("commit") + mean("apply") + mean("answer");
        format!(
            "mean {client_mean_us:.0} µs = execute {:.0} + batch wait {:.0} + commit {:.0} \
             (append {:.0} + sync {:.0} + quorum wait {:.0}) + apply {:.0} + answer {:.0} + rest \
             {:.0} (write-lock queue, network, client)",
            mean("execute"),
            mean("batch"),
            mean("commit"),
            mean("append"),
            mean("sync"),
            mean("quorum"),
            mean("apply"),
            mean("answer"),
            client_mean_us - node
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(name: &str, count: u64, sum: u64, max: u64, bucket: usize) -> String {
        let mut buckets = vec![0u64; BUCKETS];
        buckets[bucket] = count;
        let buckets: Vec<String> = buckets.iter().map(u64::to_string).collect();
        format!("{name} {count} {sum} {max} {}\n", buckets.join(" "))
    }

    #[test]
    fn test_parse_and_sum_up() {
        let mut text = String::from("# comment\n");
        text += &line("execute", 10, 200, 40, 5);
        text += &line("commit", 4, 4000, 1500, 11);
        text += &line("sync", 4, 1200, 400, 9);
        text += "turn_longest 12000 3 100 11000 500\n";
        text += "turn_longest 9000 2 0 0 0 300 8600 snapshot 8500\n";
        let breakdown = Breakdown::parse(&text).unwrap();
        assert_eq!(breakdown.phase("execute").mean_us(), 20.0);
        // 1000 µs sits below 2^11 = 2048; the bound never passes the maximum.
        assert_eq!(breakdown.phase("commit").p99_bound_us(), 1500);
        assert_eq!(breakdown.phase("execute").p99_bound_us(), 32);
        assert_eq!(breakdown.phase("apply"), Phase::default());
        assert_eq!(breakdown.longest[0].sync_us, 11000);
        let summary = breakdown.summary();
        assert!(
            summary.contains("execute 20 µs (p99 <32 µs, max 40 µs, n 10)"),
            "{summary}"
        );
        assert!(
            summary.contains("12.0 ms (3 events: handle 0.0; persist 0.1, sync 11.0"),
            "{summary}"
        );
        assert_eq!(breakdown.longest[1].after_step, ("snapshot".into(), 8500));
        let expected = "9.0 ms (2 events: handle 0.3; persist 0.0, sync 0.0, apply 0.0; \
                        after 8.6, longest snapshot 8.5)";
        assert!(summary.contains(expected), "{summary}");
        let path = breakdown.leader_path(1500.0);
        assert!(
            path.contains("execute 20 + batch wait 0 + commit 1000"),
            "{path}"
        );
        assert!(path.contains("rest 480"), "{path}");
    }

    #[test]
    fn test_parse_refuses_malformed_lines() {
        assert!(Breakdown::parse("execute 1 2 x\n").is_err());
        assert!(Breakdown::parse("execute 1 2 3\n").is_err());
        assert!(Breakdown::parse("turn_longest 1 2\n").is_err());
        assert!(Breakdown::parse("turn_longest 1 2 3 4 5 6 7 x y\n").is_err());
        assert!(Breakdown::parse("turn_longest 1 2 3 4 5 6 7 8 9 10\n").is_err());
        assert_eq!(Breakdown::parse("").unwrap(), Breakdown::default());
    }
}
