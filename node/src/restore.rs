//! Restores (`atoll restore`): a database replaced by a SQLite file, replicated and atomic.
//!
//! The client sends the file to the leader in pieces (RESTORE, at most
//! [`RESTORE_PIECE_BYTES_MAX`] each, in order). The leader checks each piece (the first one
//! must start a valid WAL-mode SQLite header whose page size divides the total) and proposes it
//! as one command entry; the answer goes back once the entry is applied here. Every node, when
//! it applies a piece, writes it at its offset into `DIR/restore/<db>.<restore id>.part` and
//! syncs it (the first piece starts the file over and removes other unfinished restores of
//! the database). The piece that reaches the total is the switch: the node checks the staged
//! file and hands it to `Engine::restore_database`, which replaces the database through the
//! snapshot install's swap (readers see the old database or the new one, never a mix; a crash
//! mid-swap is finished at restart), then records the restore id in `DIR/restore/<db>.done`
//! (a piece of a finished restore, resent by a client that lost the answer, changes nothing).
//!
//! A node that misses pieces (it was caught up by a snapshot taken during the restore) cannot
//! switch: it repairs itself from its peers (`repair.rs`), which hold the restored database.
//! A crash mid-restore replays the pieces from the log (or finds them in the synced staged
//! file when the databases' checkpoints passed them).
//!
//! Payload of a piece (little-endian): magic `ATRS`, version u8 (1), name length u16, name,
//! restore id u64, offset u64, total u64, then the bytes.

use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use atoll_net::protocol::Response;
use atoll_net::reactor::ConnId;
use atoll_raft::{LogIndex, Payload, StateRole, Term};
use log::{error, info, warn};

use super::{values, Node, NodeError};
use crate::database_header;

/// The most bytes one piece may carry (a Raft entry holds at most 32 MiB).
pub const RESTORE_PIECE_BYTES_MAX: usize = 4 << 20;
/// The largest file a restore takes (1 TiB): a bound on the staged file, checked up front.
pub const RESTORE_BYTES_MAX: u64 = 1 << 40;
/// The first bytes of a piece's payload.
const MAGIC: &[u8; 4] = b"ATRS";
/// Its version.
const VERSION: u8 = 1;
/// Bytes before the name.
const HEADER_BYTES: usize = 7;
/// Longest database name (the engine's limit).
const NAME_BYTES_MAX: usize = 64;

/// One piece, decoded.
#[derive(Debug, PartialEq, Eq)]
pub struct Piece<'a> {
    pub database: &'a str,
    pub restore_id: u64,
    pub offset: u64,
    pub total: u64,
    pub data: &'a [u8],
}

impl Piece<'_> {
    /// Whether this piece reaches the end of the file (the switch).
    fn is_last(&self) -> bool {
        self.offset + self.data.len() as u64 == self.total
    }
}

/// The payload of `piece`.
pub fn encode(piece: &Piece<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + piece.database.len() + 24 + piece.data.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(piece.database.len() as u16).to_le_bytes());
    out.extend_from_slice(piece.database.as_bytes());
    out.extend_from_slice(&piece.restore_id.to_le_bytes());
    out.extend_from_slice(&piece.offset.to_le_bytes());
    out.extend_from_slice(&piece.total.to_le_bytes());
    out.extend_from_slice(piece.data);
    out
}

/// `None` if `payload` is not a restore piece; else the piece or why it is malformed.
pub fn decode(payload: &[u8]) -> Option<Result<Piece<'_>, &'static str>> {
    if !payload.starts_with(MAGIC) {
        return None;
    }
    Some((|| {
        let header = payload.get(..HEADER_BYTES).ok_or("truncated header")?;
        if header[4] != VERSION {
            return Err("unknown version");
        }
        let length = usize::from(u16::from_le_bytes([header[5], header[6]]));
        let rest = &payload[HEADER_BYTES..];
        if length > NAME_BYTES_MAX || rest.len() < length + 24 {
            return Err("bad name length");
        }
        let database = std::str::from_utf8(&rest[..length]).map_err(|_| "name is not UTF-8")?;
        let word = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&rest[length + at..length + at + 8]);
            u64::from_le_bytes(bytes)
        };
        let piece = Piece {
            database,
            restore_id: word(0),
            offset: word(8),
            total: word(16),
            data: &rest[length + 24..],
        };
        check(&piece)?;
        Ok(piece)
    })())
}

/// What every piece must satisfy (the leader refuses others before proposing them; a node
/// applying one that does not ignores it, as every node does).
fn check(piece: &Piece<'_>) -> Result<(), &'static str> {
    let name_ok = !piece.database.is_empty()
        && piece.database.len() <= NAME_BYTES_MAX
        && piece
            .database
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !name_ok {
        return Err("invalid database name");
    }
    if piece.data.is_empty() || piece.data.len() > RESTORE_PIECE_BYTES_MAX {
        return Err("empty or oversized piece");
    }
    if piece.total > RESTORE_BYTES_MAX
        || piece
            .offset
            .checked_add(piece.data.len() as u64)
            .is_none_or(|end| end > piece.total)
    {
        return Err("piece outside the file");
    }
    if piece.offset == 0 {
        let info = database_header::inspect_header(piece.data, piece.total)
            .map_err(|_| "not a SQLite database")?;
        // The engine serves WAL-mode databases only (`atoll restore` sets these bytes).
        if piece.data[18] != 2 || piece.data[19] != 2 {
            return Err("not a WAL-mode database");
        }
        let _ = info;
    }
    Ok(())
}

fn staged_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("restore")
}

/// A restore piece proposed by this leader, waiting for its apply to be answered.
pub(super) struct Waiting {
    conn: ConnId,
    index: LogIndex,
    term: Term,
}

impl Node {
    /// RESTORE on the leader: checks the piece and proposes it; the answer waits for its apply.
    /// On a full disk (below the margin writes keep, or, for a first piece, without room for
    /// the staged file and the database it becomes) it is refused with SQLITE_FULL and
    /// nothing is proposed.
    pub(super) fn restore_request(&mut self, conn: ConnId, piece: Piece<'_>) {
        if let Err(why) = check(&piece) {
            return self.refuse(
                conn,
                (values::CODE_ERROR, format!("restore refused: {why}")),
            );
        }
        if let Some(why) = self.restore_space_short(&piece) {
            return self.refuse(
                conn,
                (
                    values::CODE_FULL,
                    format!("disk full: restore refused, nothing was changed ({why})"),
                ),
            );
        }
        let payload = encode(&piece);
        match self.raft.propose(Payload::from_vec(payload)) {
            Ok(index) => self.restore_waiting.push(Waiting {
                conn,
                index,
                term: self.raft.term(),
            }),
            Err(e) => {
                let refusal = Self::raft_refusal(e);
                self.refuse(conn, refusal);
            }
        }
    }

    /// Why the disk has no room for `piece`, if it has none: writes are refused, or a first
    /// piece finds less than twice the file's size and the margin available (the staged file,
    /// and the copy the switch writes).
    fn restore_space_short(&mut self, piece: &Piece<'_>) -> Option<String> {
        self.disk.check(self.clock.now());
        if self.disk.is_full() {
            return Some(values::REASON_DISK_FULL.to_owned());
        }
        if piece.offset != 0 {
            return None;
        }
        let needed = piece
            .total
            .saturating_mul(2)
            .saturating_add(super::disk::DISK_FREE_BYTES_MIN);
        match atoll_storage::available_bytes(&self.data_dir) {
            Ok(available) if available < needed => Some(format!(
                "restoring {} bytes needs {needed} available, {available} are",
                piece.total
            )),
            Ok(_) => None,
            Err(e) => {
                warn!("free space of {}: {e}", self.data_dir.display());
                None
            }
        }
    }

    /// Answers the client waiting for the entry at `index` (of `term`), if any.
    fn restore_answer(&mut self, index: LogIndex, term: Term, result: Result<(), String>) {
        let Some(position) = self.restore_waiting.iter().position(|w| w.index == index) else {
            return;
        };
        let waiting = self.restore_waiting.swap_remove(position);
        if waiting.term != term {
            // Another leader's entry took the index: the piece was lost; the client resends.
            return self.refuse(waiting.conn, super::clients::not_leader());
        }
        match result {
            Ok(()) => self.send(waiting.conn, &Response::Empty),
            Err(why) => self.refuse(waiting.conn, (values::CODE_ERROR, why)),
        }
    }

    /// Once per turn: a node that no longer leads answers the pieces it proposed "not leader"
    /// (they may still commit under the next leader; the client sends them again there).
    pub(super) fn restore_step(&mut self) {
        if self.restore_waiting.is_empty() || self.raft.role() == StateRole::Leader {
            return;
        }
        for waiting in std::mem::take(&mut self.restore_waiting) {
            self.refuse(waiting.conn, super::clients::not_leader());
        }
    }

    /// Applies a restore piece at `index` (every node). A full disk (`ENOSPC`) comes back as
    /// `Ok(Err(..))`: nothing was switched, and applying the piece again later redoes what it
    /// wrote (each piece goes to its offset). Other errors are fatal (a failed write or sync:
    /// the node stops and replays at restart).
    pub(super) fn apply_restore_piece(
        &mut self,
        index: LogIndex,
        term: Term,
        payload: &[u8],
    ) -> Result<Result<(), io::Error>, NodeError> {
        let piece = match decode(payload) {
            Some(Ok(piece)) => piece,
            Some(Err(why)) => {
                warn!("entry {index}: malformed restore piece: {why}");
                self.engine.note_applied(index.0);
                self.restore_answer(index, term, Err(format!("restore refused: {why}")));
                return Ok(Ok(()));
            }
            None => unreachable!("the caller checked the magic"),
        };
        let outcome = match self.stage_piece(index, &piece) {
            Ok(outcome) => outcome,
            Err(StageError::Full(e)) => return Ok(Err(e)),
            Err(StageError::Fatal(e)) => return Err(e),
        };
        if !matches!(outcome, Staged::Switched) {
            self.engine.note_applied(index.0);
        }
        let result = match outcome {
            Staged::Written | Staged::Switched | Staged::Done => Ok(()),
            Staged::Refused(why) => Err(why),
            Staged::Missing => {
                Err("this node missed part of the restore and rebuilds itself".to_owned())
            }
        };
        self.restore_answer(index, term, result);
        Ok(Ok(()))
    }

    fn stage_piece(&mut self, index: LogIndex, piece: &Piece<'_>) -> Result<Staged, StageError> {
        let fatal = |what: &str, e: io::Error| {
            if super::disk::is_full(&e) {
                StageError::Full(io::Error::new(e.kind(), format!("restore: {what}: {e}")))
            } else {
                StageError::Fatal(NodeError::Fatal(format!("restore: {what}: {e}")))
            }
        };
        let dir = staged_dir(&self.data_dir);
        fs::create_dir_all(&dir).map_err(|e| fatal("creating the staging directory", e))?;
        let done = dir.join(format!("{}.done", piece.database));
        if fs::read_to_string(&done).is_ok_and(|text| text.trim() == piece.restore_id.to_string()) {
            return Ok(Staged::Done);
        }
        let part = dir.join(format!("{}.{}.part", piece.database, piece.restore_id));
        if piece.offset == 0 {
            let prefix = format!("{}.", piece.database);
            for entry in
                fs::read_dir(&dir).map_err(|e| fatal("listing the staging directory", e))?
            {
                let entry = entry.map_err(|e| fatal("listing the staging directory", e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) && name.ends_with(".part") {
                    let _ = fs::remove_file(entry.path());
                }
            }
            if let Err(e) = fs::File::create(&part) {
                let _ = fs::remove_file(&part);
                return Err(fatal("creating the staged file", e));
            }
        }
        let file = match fs::OpenOptions::new().read(true).write(true).open(&part) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return self.missed(piece),
            Err(e) => return Err(fatal("opening the staged file", e)),
        };
        let length = file
            .metadata()
            .map_err(|e| fatal("reading the staged file", e))?
            .len();
        if length < piece.offset {
            return self.missed(piece);
        }
        file.write_all_at(piece.data, piece.offset)
            .map_err(|e| fatal("writing the staged file", e))?;
        file.sync_data()
            .map_err(|e| fatal("syncing the staged file", e))?;
        if !piece.is_last() {
            return Ok(Staged::Written);
        }
        // The switch.
        file.set_len(piece.total)
            .map_err(|e| fatal("sizing the staged file", e))?;
        let mut header = [0u8; database_header::HEADER_BYTES];
        file.read_exact_at(&mut header, 0)
            .map_err(|e| fatal("reading the staged file", e))?;
        let info = match database_header::inspect_header(&header, piece.total) {
            Ok(info) => info,
            Err(why) => {
                let _ = fs::remove_file(&part);
                return Ok(Staged::Refused(format!(
                    "restore refused: the file is not a valid database ({why})"
                )));
            }
        };
        let Ok(pages) = u32::try_from(info.pages) else {
            let _ = fs::remove_file(&part);
            return Ok(Staged::Refused(
                "restore refused: too many pages".to_owned(),
            ));
        };
        let source = file
            .try_clone()
            .map_err(|e| fatal("reading the staged file", e))?;
        let reader = Box::new(io::BufReader::new(source));
        self.verify.snapshot_installed(index.0);
        // On a full disk the engine changed nothing (its temporary files are gone).
        match self
            .engine
            .restore_database(piece.database, reader, info.page_bytes, pages, index.0)
        {
            Ok(()) => {}
            Err(atoll_core::EngineError::Io(e)) if super::disk::is_full(&e) => {
                return Err(fatal(&format!("switching {:?}", piece.database), e));
            }
            Err(e) => {
                return Err(StageError::Fatal(NodeError::Fatal(format!(
                    "restore of {:?}: {e}",
                    piece.database
                ))))
            }
        }
        // The switch is done (and durable); the record only spares a resent piece. Without
        // room for it the staged file stays: a resent last piece switches to the same file.
        let id = piece.restore_id.to_string();
        let temporary = dir.join(format!("{}.done.tmp", piece.database));
        let recorded = fs::write(&temporary, id.as_bytes())
            .and_then(|()| fs::File::open(&temporary)?.sync_all())
            .and_then(|()| fs::rename(&temporary, &done))
            .and_then(|()| fs::File::open(&dir)?.sync_all());
        match recorded {
            Ok(()) => {
                let _ = fs::remove_file(&part);
            }
            Err(e) if super::disk::is_full(&e) => {
                let _ = fs::remove_file(&temporary);
                warn!("restore of {:?}: recording it: {e}", piece.database);
            }
            Err(e) => return Err(fatal("recording the finished restore", e)),
        }
        info!(
            "restored database {:?} at index {index}: {pages} pages of {} bytes",
            piece.database, info.page_bytes
        );
        self.drain_engine();
        Ok(Staged::Switched)
    }

    /// A piece whose predecessors this node never saw: at the last piece it rebuilds itself.
    fn missed(&mut self, piece: &Piece<'_>) -> Result<Staged, StageError> {
        if piece.is_last() {
            error!(
                "restore of {:?}: this node missed pieces (caught up by snapshot meanwhile); \
                 rebuilding it from its peers",
                piece.database
            );
            if let Err(why) = self.request_repair(piece.database) {
                error!("restore of {:?}: cannot rebuild: {why}", piece.database);
            }
        }
        Ok(Staged::Missing)
    }
}

/// Why staging a piece failed.
enum StageError {
    /// The disk is full: nothing was switched; the piece is applied again later.
    Full(io::Error),
    /// Anything else: the node stops.
    Fatal(NodeError),
}

/// What applying a piece did.
enum Staged {
    /// Written into the staged file.
    Written,
    /// The last piece: the database was replaced.
    Switched,
    /// A piece of a restore that finished already: nothing to do.
    Done,
    /// The last piece, but the file is not a database: refused on every node alike.
    Refused(String),
    /// This node lacks earlier pieces.
    Missing,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(page_size: u16, journal: u8) -> Vec<u8> {
        let mut bytes = vec![0u8; 4096];
        bytes[..16].copy_from_slice(database_header::MAGIC);
        bytes[16..18].copy_from_slice(&page_size.to_be_bytes());
        bytes[18] = journal;
        bytes[19] = journal;
        bytes
    }

    #[test]
    fn test_pieces_round_trip_and_bad_ones_are_refused() {
        let first = header(4096, 2);
        let piece = Piece {
            database: "app",
            restore_id: 5,
            offset: 0,
            total: 8192,
            data: &first,
        };
        let payload = encode(&piece);
        assert_eq!(decode(&payload), Some(Ok(piece)));
        assert_eq!(decode(b"ATLC...."), None);
        assert!(matches!(decode(b"ATRS\x01\x03"), Some(Err(_))));
        let with = |data: &[u8], offset: u64, total: u64, name: &str| {
            check(&Piece {
                database: name,
                restore_id: 1,
                offset,
                total,
                data,
            })
        };
        assert!(with(&header(4096, 2), 0, 8192, "app").is_ok());
        assert!(
            with(&header(4096, 1), 0, 8192, "app").is_err(),
            "rollback-journal mode"
        );
        assert!(
            with(&header(4096, 2), 0, 8000, "app").is_err(),
            "not whole pages"
        );
        assert!(with(b"hello, world", 0, 12, "app").is_err(), "not SQLite");
        assert!(with(b"x", 10, 10, "app").is_err(), "past the end");
        assert!(with(b"x", u64::MAX, 10, "app").is_err(), "overflow");
        assert!(with(b"x", 3, 10, "a/b").is_err(), "bad name");
        assert!(with(b"", 3, 10, "app").is_err(), "empty");
        assert!(with(b"x", 3, 10, "app").is_ok());
    }
}
