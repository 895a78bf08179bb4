//! Entry points for fuzzing (cargo-fuzz target `core_command`) and the seeded test that runs the
//! same code on stable.

use std::path::PathBuf;

use crate::command::Command;
use crate::engine::{Engine, EngineConfig};
use crate::error::Applied;

/// The database structured inputs write.
const FUZZ_DATABASE: &str = "fuzz.db";

/// Databases a scratch engine accumulates before it starts over.
const DATABASES_MAX: usize = 16;

/// A scratch engine in a temporary directory that applies arbitrary bytes as commands.
pub struct Scratch {
    engine: Option<Engine>,
    dir: PathBuf,
    index: u64,
}

impl Scratch {
    /// A scratch engine in a fresh directory under the system's temp dir.
    pub fn new() -> Scratch {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "atoll-fuzz-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = EngineConfig::new(&dir, 1);
        config.page_size = 512;
        config.checkpoint_frames = 64;
        let (engine, _) = Engine::open(config).expect("scratch engine opens");
        Scratch {
            engine: Some(engine),
            dir,
            index: 0,
        }
    }

    /// Runs one fuzz input: an odd first byte builds a well-formed command from the rest (so
    /// the fuzzer's bytes reach the WAL and wal-index code: restarts, hash regions,
    /// checkpoints), anything else goes to the decoder raw.
    pub fn run_input(&mut self, data: &[u8]) {
        match data.split_first() {
            Some((mode, rest)) if mode & 1 == 1 => {
                let command = self.structured(rest);
                self.run(&command);
            }
            _ => self.run(data),
        }
    }

    /// A command for `fuzz.db` from bounded values taken from `data`: 1..=8 frames of 512-byte
    /// pages numbered 1..=64 (contents from the input), usually on the right base index.
    fn structured(&self, data: &[u8]) -> Vec<u8> {
        let engine = self.engine.as_ref().expect("open");
        let byte = |i: usize| data.get(i).copied().unwrap_or(0);
        let frame_count = 1 + u32::from(byte(0) % 8);
        let mut base = engine.last_command_index(FUZZ_DATABASE).unwrap_or(0);
        if byte(1) == 0xff {
            base = base.wrapping_add(1);
        }
        let page_size = 512usize;
        let mut pages = Vec::new();
        for frame in 0..frame_count as usize {
            let number = 1 + u32::from(byte(2 + frame) % 64);
            let fill: Vec<u8> = (0..page_size)
                .map(|i| byte(10 + (frame * 31 + i) % data.len().max(1)) ^ i as u8)
                .collect();
            pages.push((number, fill));
        }
        let db_size_pages = pages.iter().map(|(n, _)| *n).max().unwrap_or(1);
        let mut frames = pages.iter().map(|(number, page)| crate::FrameRef {
            page_number: *number,
            page,
        });
        let mut out = Vec::new();
        let header = crate::command::CommandHeader {
            database: FUZZ_DATABASE,
            page_size: page_size as u32,
            db_size_pages,
            base_index: base,
            origin: 2,
            proposal: 1,
        };
        Command::encode(&mut out, header, frame_count, &mut frames);
        out
    }

    /// Feeds `bytes` to the command decoder and, if they decode, to `apply`. Never panics on any
    /// input; a malformed command must leave every file untouched.
    pub fn run(&mut self, bytes: &[u8]) {
        let engine = self.engine.as_mut().expect("open");
        self.index += 1;
        let before = directory_state(&self.dir);
        let decoded = Command::decode(bytes);
        let outcome = engine.apply(self.index, bytes);
        match (decoded, outcome) {
            (Err(error), Ok(Applied::Malformed(same))) => {
                assert_eq!(error, same);
                assert_eq!(
                    before,
                    directory_state(&self.dir),
                    "a malformed command wrote"
                );
            }
            (Err(error), other) => panic!("decode failed ({error}) but apply said {other:?}"),
            (Ok(_), Ok(Applied::Malformed(error))) => panic!("decoded, then malformed: {error}"),
            (Ok(_), Ok(_)) => {
                // Every new name creates a database with its connections: keep memory bounded.
                if engine.database_names().len() > DATABASES_MAX {
                    self.reset();
                }
            }
            (Ok(_), Err(error)) => {
                // An I/O error (for example a wal-index that cannot take more frames) makes the
                // database stop serving: start over with a fresh engine.
                log::debug!("apply failed: {error}");
                self.reset();
            }
        }
    }

    fn reset(&mut self) {
        self.engine = None;
        let _ = std::fs::remove_dir_all(&self.dir);
        let mut config = EngineConfig::new(&self.dir, 1);
        config.page_size = 512;
        let (engine, _) = Engine::open(config).expect("scratch engine reopens");
        self.engine = Some(engine);
        self.index = 0;
    }
}

impl Default for Scratch {
    fn default() -> Scratch {
        Scratch::new()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.engine = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Names and sizes of the files in `dir`, sorted.
fn directory_state(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                    (e.file_name().to_string_lossy().into_owned(), size)
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}
