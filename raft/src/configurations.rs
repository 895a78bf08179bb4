//! The configurations found in the log, newest last, so that a truncated configuration entry
//! reverts to the one before it (configurations take effect when appended, not when committed:
//! Raft dissertation section 4.1).

use crate::membership::Configuration;
use crate::LogIndex;

/// Configurations by the index of the entry (or snapshot) that carries them.
/// Invariant: never empty; indexes strictly increase.
#[derive(Clone, Debug)]
pub(crate) struct ConfigurationHistory {
    entries: Vec<(LogIndex, Configuration)>,
}

impl ConfigurationHistory {
    pub(crate) fn new(index: LogIndex, configuration: Configuration) -> ConfigurationHistory {
        ConfigurationHistory {
            entries: vec![(index, configuration)],
        }
    }

    /// The configuration in force: the last one appended.
    pub(crate) fn current(&self) -> &Configuration {
        &self.entries.last().expect("history is never empty").1
    }

    /// Every configuration held, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (LogIndex, &Configuration)> + '_ {
        self.entries
            .iter()
            .map(|(index, configuration)| (*index, configuration))
    }

    /// The index of the entry carrying the current configuration.
    pub(crate) fn current_index(&self) -> LogIndex {
        self.entries.last().expect("history is never empty").0
    }

    /// The configuration in force at `index`.
    pub(crate) fn at(&self, index: LogIndex) -> &Configuration {
        self.entries
            .iter()
            .rev()
            .find(|(at, _)| *at <= index)
            .map(|(_, configuration)| configuration)
            .unwrap_or(&self.entries[0].1)
    }

    pub(crate) fn push(&mut self, index: LogIndex, configuration: Configuration) {
        let last = self.current_index();
        assert!(index > last, "configuration at {index} not after {last}");
        self.entries.push((index, configuration));
    }

    /// Forgets configurations carried by entries at or after `index` (they were truncated).
    pub(crate) fn truncate_from(&mut self, index: LogIndex) {
        while self.entries.len() > 1 && self.current_index() >= index {
            self.entries.pop();
        }
        assert!(
            self.entries[0].0 < index || index.0 == 0,
            "truncating the base configuration"
        );
    }

    /// Forgets configurations superseded at or before `index` (the log was compacted).
    pub(crate) fn compact_to(&mut self, index: LogIndex) {
        while self.entries.len() > 1 && self.entries[1].0 <= index {
            self.entries.remove(0);
        }
    }

    /// A snapshot through `index` was installed: its configuration becomes the base, and only
    /// configurations after it stay (if `keep_later`, else none).
    pub(crate) fn restore(
        &mut self,
        index: LogIndex,
        configuration: Configuration,
        keep_later: bool,
    ) {
        let later: Vec<(LogIndex, Configuration)> = if keep_later {
            self.entries
                .iter()
                .filter(|(at, _)| *at > index)
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        self.entries = vec![(index, configuration)];
        self.entries.extend(later);
    }
}
