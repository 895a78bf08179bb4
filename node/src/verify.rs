//! Verify points (`atoll verify`): checksums of the databases at one applied index, the same on
//! every replica.
//!
//! The leader proposes a *verify point*, a command entry that only names a database (or all).
//! Every node meets it in its log at the same index and, when it applies it, pins a read
//! transaction on each database named (`Engine::database_image`: the image as of that index,
//! while later entries keep being applied) and hashes the image a bounded number of bytes per
//! loop turn. A replica that applied the same log holds the same pages, so equal logs give
//! equal checksums, whatever the load at the time; a page damaged on disk gives a different one.
//! Each node keeps the results of its newest [`VERIFY_POINTS_MAX`] points; a node that skipped
//! a point (it caught up by snapshot past it) says so.
//!
//! Layout of a verify point's payload (little-endian): magic `ATVF`, version u8 (1), name
//! length u16, name (UTF-8; empty: every database). Engines that do not know it reject it as a
//! malformed command on every replica alike, which changes nothing.

use std::collections::VecDeque;
use std::io::Read;

use atoll_core::{DatabaseImage, Engine};
use atoll_net::protocol::{Checksums, DatabaseChecksum, VerifyState};
use log::{info, warn};

/// The first bytes of a verify point's payload.
const MAGIC: &[u8; 4] = b"ATVF";
/// Its version.
const VERSION: u8 = 1;
/// Header bytes before the name.
const HEADER_BYTES: usize = 7;
/// Verify points whose results a node keeps; older ones are forgotten (answered Unavailable).
pub const VERIFY_POINTS_MAX: usize = 16;
/// Bytes of database images hashed per loop turn: the loop stays responsive (a few ms of reads)
/// while a large database is verified.
pub const VERIFY_BYTES_PER_TURN: usize = 1 << 20;
/// Longest database name a verify point may carry (the engine's own limit is 64).
const NAME_BYTES_MAX: usize = 255;

/// The payload of a verify point for `database` (empty: all).
pub fn encode_point(database: &str) -> Result<Vec<u8>, String> {
    let Ok(length) = u16::try_from(database.len()) else {
        return Err("database name too long".to_owned());
    };
    if database.len() > NAME_BYTES_MAX {
        return Err("database name too long".to_owned());
    }
    let mut out = Vec::with_capacity(HEADER_BYTES + database.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(database.as_bytes());
    Ok(out)
}

/// `None` if `payload` is not a verify point; else its database name, or why it is malformed.
pub fn decode_point(payload: &[u8]) -> Option<Result<String, &'static str>> {
    if !payload.starts_with(MAGIC) {
        return None;
    }
    Some((|| {
        let header = payload.get(..HEADER_BYTES).ok_or("truncated header")?;
        if header[4] != VERSION {
            return Err("unknown version");
        }
        let length = usize::from(u16::from_le_bytes([header[5], header[6]]));
        let name = &payload[HEADER_BYTES..];
        if name.len() != length || length > NAME_BYTES_MAX {
            return Err("bad name length");
        }
        std::str::from_utf8(name)
            .map(str::to_owned)
            .map_err(|_| "name is not UTF-8")
    })())
}

/// One database being hashed.
struct Job {
    name: String,
    image: DatabaseImage,
    crc: crc32fast::Hasher,
}

/// One verify point on this node.
struct Point {
    index: u64,
    jobs: Vec<Job>,
    done: Vec<DatabaseChecksum>,
    /// Set when the point cannot be completed (a read failed, a snapshot replaced the files).
    failed: bool,
}

/// The node's verify points.
#[derive(Default)]
pub struct Verify {
    points: VecDeque<Point>,
    /// The newest index a snapshot install jumped over: points at or below it that this node
    /// never applied are unavailable, not pending.
    skipped_through: u64,
}

impl Verify {
    /// Whether hashing is under way (the loop should not sleep).
    pub fn busy(&self) -> bool {
        self.points.iter().any(|p| !p.jobs.is_empty())
    }

    /// The verify point at `index` was applied: pin the images of `database` (empty: all).
    pub fn applied(&mut self, engine: &mut Engine, index: u64, database: &str) {
        let names = if database.is_empty() {
            let mut names = engine.database_names();
            names.sort();
            names
        } else {
            vec![database.to_owned()]
        };
        let mut point = Point {
            index,
            jobs: Vec::new(),
            done: Vec::new(),
            failed: false,
        };
        for name in names {
            match engine.database_image(&name) {
                Ok(Some(image)) => point.jobs.push(Job {
                    name,
                    image,
                    crc: crc32fast::Hasher::new(),
                }),
                Ok(None) => {}
                Err(e) => {
                    warn!("verify point {index}: cannot read database {name:?}: {e}");
                    point.failed = true;
                }
            }
        }
        info!(
            "verify point {index}: hashing {} database(s)",
            point.jobs.len()
        );
        if point.failed {
            point.jobs.clear();
        }
        self.points.push_back(point);
        while self.points.len() > VERIFY_POINTS_MAX {
            self.points.pop_front();
        }
    }

    /// A snapshot replaced the databases at `index`: images being read are gone.
    pub fn snapshot_installed(&mut self, index: u64) {
        self.skipped_through = self.skipped_through.max(index);
        for point in &mut self.points {
            if !point.jobs.is_empty() {
                point.jobs.clear();
                point.failed = true;
            }
        }
    }

    /// Hashes up to `budget` bytes of the oldest unfinished images.
    pub fn work(&mut self, mut budget: usize) {
        if !self.busy() {
            return; // Most turns: no 64 KiB buffer to zero.
        }
        let mut buffer = [0u8; 64 * 1024];
        for point in &mut self.points {
            while let Some(job) = point.jobs.last_mut() {
                if budget == 0 {
                    return;
                }
                let want = budget.min(buffer.len());
                match job.image.read(&mut buffer[..want]) {
                    Ok(0) => {
                        let job = point.jobs.pop().expect("a job");
                        point.done.push(DatabaseChecksum {
                            pages: u64::from(job.image.page_count()),
                            checksum: u64::from(job.crc.finalize()),
                            name: job.name,
                        });
                    }
                    Ok(count) => {
                        job.crc.update(&buffer[..count]);
                        budget -= count;
                    }
                    Err(e) => {
                        warn!(
                            "verify point {}: reading database {:?}: {e}",
                            point.index, job.name
                        );
                        point.jobs.clear();
                        point.failed = true;
                    }
                }
            }
        }
    }

    /// The answer to VERIFY `index` on a node of `node_id` that applied through `applied`.
    pub fn answer(&self, node_id: u64, applied: u64, index: u64) -> Checksums {
        let mut answer = Checksums {
            index,
            node_id,
            applied_index: applied,
            state: VerifyState::Unavailable,
            databases: Vec::new(),
        };
        match self.points.iter().find(|p| p.index == index) {
            Some(point) if point.failed => {}
            Some(point) if point.jobs.is_empty() => {
                answer.state = VerifyState::Done;
                answer.databases = point.done.clone();
                answer.databases.sort_by(|a, b| a.name.cmp(&b.name));
            }
            Some(_) => answer.state = VerifyState::Pending,
            None if applied < index && index > self.skipped_through => {
                answer.state = VerifyState::Pending
            }
            None => {}
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_points_round_trip_and_bad_ones_are_refused() {
        let payload = encode_point("app").unwrap();
        assert_eq!(decode_point(&payload), Some(Ok("app".to_owned())));
        assert_eq!(
            decode_point(&encode_point("").unwrap()),
            Some(Ok(String::new()))
        );
        assert_eq!(decode_point(b"ATLC\x01\x01"), None);
        assert!(matches!(decode_point(b"ATVF\x01\x05"), Some(Err(_))));
        assert!(matches!(decode_point(b"ATVF\x02\x00\x00"), Some(Err(_))));
        assert!(matches!(decode_point(b"ATVF\x01\x05\x00ab"), Some(Err(_))));
        assert!(matches!(
            decode_point(b"ATVF\x01\x02\x00\xff\xfe"),
            Some(Err(_))
        ));
        assert!(encode_point(&"x".repeat(300)).is_err());
    }
}
