//! [`SimDisk`]: a simulated file system in memory, for the whole-stack simulator and for tests
//! of what a crash leaves. Every file keeps its *synced image* (what a power cut leaves) apart
//! from its live bytes, and every change not synced yet waits in one ordered list (the
//! *unsynced writes*, all files together, oldest first). Names are kept the same way: each
//! directory has its live entries and the entries its last [`Disk::sync_dir`] made durable.
//!
//! What it can do to its user, all drawn from its own seeded generator so that a run replays:
//! - a process crash changes nothing here (the page cache survives): the simulator just drops
//!   the node, whose handles close;
//! - a power cut ([`SimDisk::power_loss`]) makes every file its synced image and every directory
//!   its durable entries. [`PowerLoss::DropUnsynced`] loses every unsynced write;
//!   [`PowerLoss::TornPrefix`] keeps a random prefix of them, in order, the next one torn (a
//!   prefix of its bytes ending on a [`SECTOR_BYTES`] boundary: a disk writes a sector whole),
//!   as a disk that writes back in order and loses power mid-write;
//! - the kernel writes back on its own: past [`UNSYNCED_BYTES_MAX`] or [`UNSYNCED_WRITES_MAX`],
//!   the oldest unsynced writes become durable without a sync (the WAL is never synced);
//! - `ENOSPC` once the files would exceed a byte budget ([`SimDisk::set_budget`]); the operation
//!   changes nothing, and [`Disk::available_bytes`] reports what is left;
//! - `EIO` on chosen operations ([`SimDisk::fail_after`], [`SimFaults::eio_ppm`]); a failed
//!   operation changes nothing (a failed sync leaves its writes unsynced);
//! - latency: each operation owes a drawn duration, syncs more, and some syncs stall; the
//!   simulator takes the sum ([`SimDisk::take_latency`]) and holds the node back that long.
//!
//! Operations complete at once in real time: latency is only accounted.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::disk::{Disk, DiskFile, FileMetadata, OpenMode};

/// The page of the simulated files' memory.
const PAGE_BYTES: usize = 4096;
/// What a disk writes atomically: a torn write keeps whole sectors.
pub const SECTOR_BYTES: u64 = 512;
/// Unsynced bytes kept before the oldest are written back by themselves.
pub const UNSYNCED_BYTES_MAX: usize = 16 << 20;
/// Unsynced writes kept before the oldest are written back by themselves.
pub const UNSYNCED_WRITES_MAX: usize = 8192;
/// What [`Disk::available_bytes`] reports without a budget (1 TiB).
const UNLIMITED_BYTES: u64 = 1 << 40;
const ROOT: u64 = 0;

/// The operations faults can be injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimOp {
    /// [`Disk::open`].
    Open,
    /// [`DiskFile::read_at`].
    Read,
    /// [`DiskFile::write_all_at`] and [`Disk::write_zeros`].
    Write,
    /// [`DiskFile::set_len`] and [`DiskFile::allocate`].
    SetLen,
    /// [`DiskFile::sync`] and [`DiskFile::sync_all`].
    Sync,
    /// [`Disk::rename`].
    Rename,
    /// [`Disk::remove_file`].
    Remove,
    /// [`Disk::create_dir`].
    CreateDir,
    /// [`Disk::read_dir`].
    ReadDir,
    /// [`Disk::sync_dir`].
    SyncDir,
}

/// Faults drawn on every operation; the default has none.
#[derive(Clone, Debug, Default)]
pub struct SimFaults {
    /// Per million operations of the kinds in `eio_ops`, how many fail with `EIO`.
    pub eio_ppm: u32,
    /// The operations `eio_ppm` applies to.
    pub eio_ops: Vec<SimOp>,
    /// The latency of a sync (file or directory), drawn uniformly, in microseconds.
    pub sync_latency_us: (u64, u64),
    /// The latency of every other operation, in microseconds.
    pub op_latency_us: (u64, u64),
    /// Per million syncs, how many stall for `stall_ms` more.
    pub stall_ppm: u32,
    /// The length of a stall, drawn uniformly, in milliseconds.
    pub stall_ms: (u64, u64),
}

/// What a power cut keeps of the unsynced writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerLoss {
    /// Nothing: every file is its synced image.
    DropUnsynced,
    /// A random prefix of the unsynced writes, in order, and a prefix of the bytes of the next
    /// one (the write the power cut tore) ending on a sector boundary.
    TornPrefix,
}

/// Counters of what the disk did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimDiskStats {
    /// Operations served (or failed).
    pub operations: u64,
    /// Syncs of files and directories that succeeded.
    pub syncs: u64,
    /// Operations failed with an injected `EIO`.
    pub eio: u64,
    /// Operations refused with `ENOSPC`.
    pub enospc: u64,
    /// Power cuts.
    pub power_losses: u64,
    /// Unsynced writes a power cut dropped (or tore).
    pub writes_lost: u64,
    /// Writes torn by a power cut.
    pub writes_torn: u64,
}

/// A simulated file system; clones share it. See the module documentation.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

/// A page of file bytes, shared between the live and the synced image until one is written.
type Page = Arc<[u8; PAGE_BYTES]>;

/// The bytes of a file: a length and the pages written (pages not present are zeros).
#[derive(Clone, Default)]
struct Content {
    len: u64,
    pages: BTreeMap<u64, Page>,
}

impl Content {
    fn read(&self, buf: &mut [u8], offset: u64) -> usize {
        if offset >= self.len {
            return 0;
        }
        let count = buf
            .len()
            .min(usize::try_from(self.len - offset).unwrap_or(usize::MAX));
        let mut done = 0;
        while done < count {
            let at = offset + done as u64;
            let page = at / PAGE_BYTES as u64;
            let within = (at % PAGE_BYTES as u64) as usize;
            let chunk = (PAGE_BYTES - within).min(count - done);
            match self.pages.get(&page) {
                Some(bytes) => {
                    buf[done..done + chunk].copy_from_slice(&bytes[within..within + chunk])
                }
                None => buf[done..done + chunk].fill(0),
            }
            done += chunk;
        }
        count
    }

    fn write(&mut self, bytes: &[u8], offset: u64) {
        let mut done = 0;
        while done < bytes.len() {
            let at = offset + done as u64;
            let page = at / PAGE_BYTES as u64;
            let within = (at % PAGE_BYTES as u64) as usize;
            let chunk = (PAGE_BYTES - within).min(bytes.len() - done);
            let target = self
                .pages
                .entry(page)
                .or_insert_with(|| Arc::new([0u8; PAGE_BYTES]));
            Arc::make_mut(target)[within..within + chunk]
                .copy_from_slice(&bytes[done..done + chunk]);
            done += chunk;
        }
        self.len = self.len.max(offset + bytes.len() as u64);
    }

    fn set_len(&mut self, len: u64) {
        if len < self.len {
            // Pages past the end go; the last page's tail is zeroed, so that growing the file
            // again reads zeros there.
            let first_gone = len.div_ceil(PAGE_BYTES as u64);
            self.pages.retain(|&page, _| page < first_gone);
            let within = (len % PAGE_BYTES as u64) as usize;
            if within > 0 {
                if let Some(page) = self.pages.get_mut(&(len / PAGE_BYTES as u64)) {
                    Arc::make_mut(page)[within..].fill(0);
                }
            }
        }
        self.len = len;
    }

    fn apply(&mut self, change: &Change) {
        match change {
            Change::Write { offset, bytes } => self.write(bytes, *offset),
            Change::SetLen(len) => self.set_len(*len),
        }
    }

    /// Where the zeros start: past the last page written, or the length.
    fn zeros_from(&self) -> u64 {
        let end = self
            .pages
            .keys()
            .next_back()
            .map_or(0, |&page| (page + 1) * PAGE_BYTES as u64);
        end.min(self.len)
    }
}

/// One unsynced change of a file.
enum Change {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

impl Change {
    fn bytes(&self) -> usize {
        match self {
            Change::Write { bytes, .. } => bytes.len(),
            Change::SetLen(_) => 0,
        }
    }
}

struct Unsynced {
    inode: u64,
    change: Change,
}

/// The unsynced changes of every file, oldest first. A file's sync takes its own changes out
/// (leaving holes) without walking the others: the WAL's, never synced, pile up to the limits.
#[derive(Default)]
struct Journal {
    /// `None`: a change synced (or dropped) since. Invariant: the front is `Some` or empty.
    entries: VecDeque<Option<Unsynced>>,
    /// The sequence number of the front entry.
    base: u64,
    /// The `Some` entries, and their bytes.
    count: usize,
    bytes: usize,
}

impl Journal {
    /// Appends a change; its sequence number.
    fn push(&mut self, unsynced: Unsynced) -> u64 {
        let sequence = self.base + self.entries.len() as u64;
        self.count += 1;
        self.bytes += unsynced.change.bytes();
        self.entries.push_back(Some(unsynced));
        sequence
    }

    /// Takes the change `sequence` out (it was synced, or its file is gone).
    fn take(&mut self, sequence: u64) -> Option<Unsynced> {
        let slot = self
            .entries
            .get_mut(usize::try_from(sequence - self.base).ok()?)?;
        let unsynced = slot.take()?;
        self.count -= 1;
        self.bytes -= unsynced.change.bytes();
        while self.entries.front().is_some_and(Option::is_none) {
            self.entries.pop_front();
            self.base += 1;
        }
        Some(unsynced)
    }

    /// The oldest change and its sequence number.
    fn oldest(&self) -> Option<u64> {
        (!self.entries.is_empty()).then_some(self.base)
    }

    /// Every change, oldest first, leaving the journal empty.
    fn drain(&mut self) -> Vec<Unsynced> {
        self.base += self.entries.len() as u64;
        let all = self.entries.drain(..).flatten().collect();
        self.count = 0;
        self.bytes = 0;
        all
    }
}

enum Inode {
    File(FileNode),
    Dir(DirNode),
}

struct FileNode {
    /// Invariant: `synced` with this file's unsynced changes applied in order is `live`.
    live: Content,
    synced: Content,
    /// The sequence numbers of this file's unsynced changes, oldest first.
    pending: VecDeque<u64>,
    handles: u32,
    /// The open (handle id) holding the lock.
    locked_by: Option<u64>,
}

#[derive(Default)]
struct DirNode {
    live: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
}

struct State {
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    next_open: u64,
    /// Bumped by every power cut: handles from before it fail.
    generation: u64,
    unsynced: Journal,
    /// The live lengths of every file, summed.
    used_bytes: u64,
    budget: Option<u64>,
    faults: SimFaults,
    /// One-shot failures: the `count`-th next operation of a kind fails.
    countdowns: Vec<(SimOp, u64)>,
    latency: Duration,
    random: u64,
    stats: SimDiskStats,
}

fn os_error(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl State {
    fn next_random(&mut self) -> u64 {
        self.random = self.random.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.random;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `range.0..=range.1`.
    fn draw(&mut self, range: (u64, u64)) -> u64 {
        let (low, high) = (range.0.min(range.1), range.0.max(range.1));
        if low == high {
            return low;
        }
        low + self.next_random() % (high - low + 1)
    }

    fn chance(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.next_random() % 1_000_000 < u64::from(ppm)
    }

    /// Counts an operation, owes its latency and draws its fault.
    fn begin(&mut self, op: SimOp) -> io::Result<()> {
        self.stats.operations += 1;
        let latency_us = if matches!(op, SimOp::Sync | SimOp::SyncDir) {
            let mut us = self.draw(self.faults.sync_latency_us);
            if self.chance(self.faults.stall_ppm) {
                us += 1000 * self.draw(self.faults.stall_ms);
            }
            us
        } else {
            self.draw(self.faults.op_latency_us)
        };
        self.latency += Duration::from_micros(latency_us);
        let mut fail = false;
        for (kind, count) in &mut self.countdowns {
            if *kind == op {
                if *count == 0 {
                    fail = true;
                } else {
                    *count -= 1;
                }
            }
        }
        if fail {
            self.countdowns
                .retain(|&(kind, count)| kind != op || count > 0);
        }
        if !fail && self.faults.eio_ops.contains(&op) && self.chance(self.faults.eio_ppm) {
            fail = true;
        }
        if fail {
            self.stats.eio += 1;
            return Err(os_error(libc::EIO));
        }
        Ok(())
    }

    fn dir(&self, inode: u64) -> io::Result<&DirNode> {
        match self.inodes.get(&inode) {
            Some(Inode::Dir(dir)) => Ok(dir),
            Some(Inode::File(_)) => Err(os_error(libc::ENOTDIR)),
            None => Err(os_error(libc::ENOENT)),
        }
    }

    fn dir_mut(&mut self, inode: u64) -> io::Result<&mut DirNode> {
        match self.inodes.get_mut(&inode) {
            Some(Inode::Dir(dir)) => Ok(dir),
            Some(Inode::File(_)) => Err(os_error(libc::ENOTDIR)),
            None => Err(os_error(libc::ENOENT)),
        }
    }

    fn file(&self, inode: u64) -> io::Result<&FileNode> {
        match self.inodes.get(&inode) {
            Some(Inode::File(file)) => Ok(file),
            Some(Inode::Dir(_)) => Err(os_error(libc::EISDIR)),
            None => Err(os_error(libc::EBADF)),
        }
    }

    fn file_mut(&mut self, inode: u64) -> io::Result<&mut FileNode> {
        match self.inodes.get_mut(&inode) {
            Some(Inode::File(file)) => Ok(file),
            Some(Inode::Dir(_)) => Err(os_error(libc::EISDIR)),
            None => Err(os_error(libc::EBADF)),
        }
    }

    /// The normal components of `path` (`.` skipped, `..` taken back); relative paths are
    /// taken from the root.
    fn components(path: &Path) -> Vec<OsString> {
        let mut names: Vec<OsString> = Vec::new();
        for component in path.components() {
            match component {
                Component::Normal(name) => names.push(name.to_owned()),
                Component::ParentDir => {
                    names.pop();
                }
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
        names
    }

    fn lookup(&self, names: &[OsString]) -> io::Result<u64> {
        let mut inode = ROOT;
        for name in names {
            inode = *self
                .dir(inode)?
                .live
                .get(name)
                .ok_or_else(|| os_error(libc::ENOENT))?;
        }
        Ok(inode)
    }

    /// The directory holding `path` and the last name of it.
    fn parent(&self, path: &Path) -> io::Result<(u64, OsString)> {
        let mut names = State::components(path);
        let name = names.pop().ok_or_else(|| os_error(libc::EINVAL))?;
        let dir = self.lookup(&names)?;
        self.dir(dir)?;
        Ok((dir, name))
    }

    fn new_inode(&mut self, inode: Inode) -> u64 {
        let id = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(id, inode);
        id
    }

    /// Grows the used bytes by `growth`, or `ENOSPC` past the budget.
    fn grow(&mut self, growth: u64) -> io::Result<()> {
        let used = self.used_bytes.saturating_add(growth);
        if self.budget.is_some_and(|budget| used > budget) {
            self.stats.enospc += 1;
            return Err(os_error(libc::ENOSPC));
        }
        self.used_bytes = used;
        Ok(())
    }

    /// Records a change of `inode` (already applied to its live content) as unsynced, writing
    /// the oldest back by themselves past the limits.
    fn push_unsynced(&mut self, inode: u64, change: Change) {
        let sequence = self.unsynced.push(Unsynced { inode, change });
        if let Some(Inode::File(file)) = self.inodes.get_mut(&inode) {
            file.pending.push_back(sequence);
        }
        while self.unsynced.count > UNSYNCED_WRITES_MAX || self.unsynced.bytes > UNSYNCED_BYTES_MAX
        {
            let oldest = self.unsynced.oldest().expect("over the limits");
            let unsynced = self.unsynced.take(oldest).expect("the front is a change");
            if let Some(Inode::File(file)) = self.inodes.get_mut(&unsynced.inode) {
                assert_eq!(file.pending.pop_front(), Some(oldest));
                file.synced.apply(&unsynced.change);
            }
        }
    }

    /// Makes every unsynced change of `inode` durable.
    fn sync_file(&mut self, inode: u64) {
        let Some(Inode::File(file)) = self.inodes.get_mut(&inode) else {
            return;
        };
        for sequence in std::mem::take(&mut file.pending) {
            let unsynced = self
                .unsynced
                .take(sequence)
                .expect("pending in the journal");
            file.synced.apply(&unsynced.change);
        }
        debug_assert_eq!(file.synced.len, file.live.len);
    }

    /// Drops every inode that no name (live or durable) and no handle reaches.
    fn collect(&mut self) {
        let mut reached = BTreeSet::new();
        let mut stack = vec![ROOT];
        while let Some(inode) = stack.pop() {
            if !reached.insert(inode) {
                continue;
            }
            if let Some(Inode::Dir(dir)) = self.inodes.get(&inode) {
                stack.extend(dir.live.values().chain(dir.durable.values()));
            }
        }
        let gone: Vec<u64> = self
            .inodes
            .iter()
            .filter(|(id, inode)| {
                !reached.contains(id) && !matches!(inode, Inode::File(file) if file.handles > 0)
            })
            .map(|(&id, _)| id)
            .collect();
        if gone.is_empty() {
            return;
        }
        for id in &gone {
            if let Some(Inode::File(file)) = self.inodes.remove(id) {
                self.used_bytes -= file.live.len;
                for sequence in file.pending {
                    self.unsynced.take(sequence);
                }
            }
        }
    }
}

impl SimDisk {
    /// An empty file system (only `/`), its faults and latencies drawn from `seed`.
    pub fn new(seed: u64) -> SimDisk {
        let mut inodes = BTreeMap::new();
        inodes.insert(ROOT, Inode::Dir(DirNode::default()));
        SimDisk {
            state: Arc::new(Mutex::new(State {
                inodes,
                next_inode: ROOT + 1,
                next_open: 1,
                generation: 0,
                unsynced: Journal::default(),
                used_bytes: 0,
                budget: None,
                faults: SimFaults::default(),
                countdowns: Vec::new(),
                latency: Duration::ZERO,
                random: seed,
                stats: SimDiskStats::default(),
            })),
        }
    }

    /// This disk as the seam's trait object (a clone sharing the same files).
    pub fn shared(&self) -> Arc<dyn Disk> {
        Arc::new(self.clone())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock (a test's assertion) leaves no invariant half-kept
        // that matters to the rest of a failing test.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Cuts the power: see [`PowerLoss`]. Handles opened before fail from now on; the caller
    /// drops what used them (the node) first.
    pub fn power_loss(&self, mode: PowerLoss) {
        let mut state = self.lock();
        state.stats.power_losses += 1;
        let pending = state.unsynced.count;
        let kept = match mode {
            PowerLoss::DropUnsynced => 0,
            PowerLoss::TornPrefix => state.draw((0, pending as u64)) as usize,
        };
        let unsynced = state.unsynced.drain();
        state.stats.writes_lost += (pending - kept) as u64;
        for (k, unsynced) in unsynced.into_iter().enumerate() {
            let change = if k < kept {
                unsynced.change
            } else if k == kept && mode == PowerLoss::TornPrefix {
                match unsynced.change {
                    Change::Write { offset, mut bytes } => {
                        // A disk writes a sector whole or not at all: the tear falls on a
                        // sector boundary inside the write (or before it).
                        let end = offset + bytes.len() as u64;
                        let first = offset.div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
                        let boundaries = if first < end {
                            (end - 1 - first) / SECTOR_BYTES + 1
                        } else {
                            0
                        };
                        let pick = state.draw((0, boundaries));
                        let cut = if pick == 0 {
                            offset
                        } else {
                            first + (pick - 1) * SECTOR_BYTES
                        };
                        bytes.truncate((cut - offset) as usize);
                        state.stats.writes_torn += 1;
                        Change::Write { offset, bytes }
                    }
                    Change::SetLen(_) => break,
                }
            } else {
                break;
            };
            if let Some(Inode::File(file)) = state.inodes.get_mut(&unsynced.inode) {
                file.synced.apply(&change);
            }
        }
        state.generation += 1;
        let mut used = 0;
        for inode in state.inodes.values_mut() {
            match inode {
                Inode::File(file) => {
                    file.live = file.synced.clone();
                    file.pending.clear();
                    file.handles = 0;
                    file.locked_by = None;
                    used += file.live.len;
                }
                Inode::Dir(dir) => dir.live = dir.durable.clone(),
            }
        }
        state.used_bytes = used;
        state.collect();
    }

    /// Limits the files to `budget` bytes in all (`None`: no limit): a write past it fails with
    /// `ENOSPC` and changes nothing.
    pub fn set_budget(&self, budget: Option<u64>) {
        self.lock().budget = budget;
    }

    /// The bytes the files hold (their lengths, summed).
    pub fn used_bytes(&self) -> u64 {
        self.lock().used_bytes
    }

    /// Sets the faults drawn on every operation from now on.
    pub fn set_faults(&self, faults: SimFaults) {
        self.lock().faults = faults;
    }

    /// Makes the `count`-th operation of kind `op` from now (0: the next) fail with `EIO`, once.
    pub fn fail_after(&self, op: SimOp, count: u64) {
        self.lock().countdowns.push((op, count));
    }

    /// Forgets the one-shot failures not reached yet.
    pub fn clear_countdowns(&self) {
        self.lock().countdowns.clear();
    }

    /// The latency owed since the last call, and resets it.
    pub fn take_latency(&self) -> Duration {
        std::mem::take(&mut self.lock().latency)
    }

    /// What the disk did so far.
    pub fn stats(&self) -> SimDiskStats {
        self.lock().stats
    }

    /// How many writes (and length changes) are not synced yet, all files together.
    pub fn unsynced_writes(&self) -> usize {
        self.lock().unsynced.count
    }

    /// Makes every unsynced write durable, as the kernel writing every dirty page back would
    /// (names are left as they are): a test then cuts the power in what comes next only.
    pub fn write_back(&self) {
        let mut state = self.lock();
        let ids: Vec<u64> = state.inodes.keys().copied().collect();
        for id in ids {
            state.sync_file(id);
        }
    }

    /// The synced image of the file at `path`: what a power cut would leave of it, if its
    /// name is durable.
    pub fn synced_bytes(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.lock();
        let inode = state.lookup(&State::components(path))?;
        let file = state.file(inode)?;
        let len = usize::try_from(file.synced.len).map_err(|_| io::Error::other("too large"))?;
        let mut bytes = vec![0u8; len];
        file.synced.read(&mut bytes, 0);
        Ok(bytes)
    }
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("SimDisk")
            .field("inodes", &state.inodes.len())
            .field("used_bytes", &state.used_bytes)
            .field("unsynced", &state.unsynced.count)
            .field("budget", &state.budget)
            .finish()
    }
}

impl Disk for SimDisk {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>> {
        let mut state = self.lock();
        state.begin(SimOp::Open)?;
        let (dir, name) = state.parent(path)?;
        let existing = state.dir(dir)?.live.get(&name).copied();
        let inode = match (existing, mode) {
            (Some(_), OpenMode::CreateNew) => return Err(os_error(libc::EEXIST)),
            (Some(inode), _) => {
                let old = state.file(inode)?.live.len;
                if mode == OpenMode::Truncate && old > 0 {
                    state.file_mut(inode)?.live.set_len(0);
                    state.used_bytes -= old;
                    state.push_unsynced(inode, Change::SetLen(0));
                }
                inode
            }
            (None, OpenMode::Read | OpenMode::Write) => return Err(os_error(libc::ENOENT)),
            (None, _) => {
                let inode = state.new_inode(Inode::File(FileNode {
                    live: Content::default(),
                    synced: Content::default(),
                    pending: VecDeque::new(),
                    handles: 0,
                    locked_by: None,
                }));
                state.dir_mut(dir)?.live.insert(name, inode);
                inode
            }
        };
        let open = state.next_open;
        state.next_open += 1;
        state.file_mut(inode)?.handles += 1;
        Ok(Arc::new(SimFile {
            disk: self.clone(),
            inode,
            open,
            generation: state.generation,
            writable: mode != OpenMode::Read,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin(SimOp::Rename)?;
        let (from_dir, from_name) = state.parent(from)?;
        let (to_dir, to_name) = state.parent(to)?;
        let inode = *state
            .dir(from_dir)?
            .live
            .get(&from_name)
            .ok_or_else(|| os_error(libc::ENOENT))?;
        let moving_dir = matches!(state.inodes.get(&inode), Some(Inode::Dir(_)));
        if let Some(&existing) = state.dir(to_dir)?.live.get(&to_name) {
            if existing == inode {
                return Ok(());
            }
            match (state.inodes.get(&existing), moving_dir) {
                (Some(Inode::Dir(_)), false) => return Err(os_error(libc::EISDIR)),
                (Some(Inode::File(_)), true) => return Err(os_error(libc::ENOTDIR)),
                (Some(Inode::Dir(dir)), true) if !dir.live.is_empty() => {
                    return Err(os_error(libc::ENOTEMPTY))
                }
                _ => {}
            }
        }
        if moving_dir {
            // A directory moved under itself would be cut off from the root.
            let mut walk = ROOT;
            for name in State::components(to).iter().rev().skip(1).rev() {
                walk = state.dir(walk)?.live[name];
                if walk == inode {
                    return Err(os_error(libc::EINVAL));
                }
            }
        }
        state.dir_mut(from_dir)?.live.remove(&from_name);
        state.dir_mut(to_dir)?.live.insert(to_name, inode);
        state.collect();
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin(SimOp::Remove)?;
        let (dir, name) = state.parent(path)?;
        let inode = *state
            .dir(dir)?
            .live
            .get(&name)
            .ok_or_else(|| os_error(libc::ENOENT))?;
        state.file(inode)?;
        state.dir_mut(dir)?.live.remove(&name);
        state.collect();
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin(SimOp::CreateDir)?;
        let (dir, name) = state.parent(path)?;
        if state.dir(dir)?.live.contains_key(&name) {
            return Err(os_error(libc::EEXIST));
        }
        let inode = state.new_inode(Inode::Dir(DirNode::default()));
        state.dir_mut(dir)?.live.insert(name, inode);
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let mut state = self.lock();
        state.begin(SimOp::ReadDir)?;
        let inode = state.lookup(&State::components(path))?;
        Ok(state.dir(inode)?.live.keys().cloned().collect())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin(SimOp::SyncDir)?;
        let inode = state.lookup(&State::components(path))?;
        let dir = state.dir_mut(inode)?;
        dir.durable = dir.live.clone();
        state.stats.syncs += 1;
        state.collect();
        Ok(())
    }

    fn write_zeros(&self, path: &Path, range: Range<u64>) -> io::Result<()> {
        // No extents to turn written, and allocated bytes read as zeros already: nothing to
        // write. The file must cover the range, as after a real preallocation.
        let mut state = self.lock();
        state.begin(SimOp::Write)?;
        let inode = state.lookup(&State::components(path))?;
        if state.file(inode)?.live.len < range.end {
            return Err(io::Error::other("writing zeros past the end of a file"));
        }
        Ok(())
    }

    fn metadata(&self, path: &Path) -> io::Result<FileMetadata> {
        let state = self.lock();
        let inode = state.lookup(&State::components(path))?;
        Ok(match &state.inodes[&inode] {
            Inode::Dir(_) => FileMetadata {
                is_dir: true,
                len: 0,
            },
            Inode::File(file) => FileMetadata {
                is_dir: false,
                len: file.live.len,
            },
        })
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        let names = State::components(path);
        self.lock().lookup(&names)?;
        let mut canonical = PathBuf::from("/");
        canonical.extend(names.iter().map(OsString::as_os_str));
        Ok(canonical)
    }

    fn available_bytes(&self, path: &Path) -> io::Result<u64> {
        let state = self.lock();
        state.lookup(&State::components(path))?;
        Ok(state.budget.map_or(UNLIMITED_BYTES, |budget| {
            budget.saturating_sub(state.used_bytes)
        }))
    }

    fn available_inodes(&self, path: &Path) -> io::Result<Option<u64>> {
        self.lock().lookup(&State::components(path))?;
        Ok(None)
    }
}

/// An open file of a [`SimDisk`].
pub struct SimFile {
    disk: SimDisk,
    inode: u64,
    open: u64,
    generation: u64,
    writable: bool,
}

impl SimFile {
    /// The disk's state, or `EBADF` if a power cut came since this handle was opened.
    fn state(&self) -> io::Result<MutexGuard<'_, State>> {
        let state = self.disk.lock();
        if state.generation != self.generation {
            return Err(os_error(libc::EBADF));
        }
        Ok(state)
    }

    fn writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(os_error(libc::EBADF))
        }
    }
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("inode", &self.inode)
            .field("open", &self.open)
            .finish()
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut state = self.disk.lock();
        if state.generation != self.generation {
            return;
        }
        if let Some(Inode::File(file)) = state.inodes.get_mut(&self.inode) {
            file.handles -= 1;
            if file.locked_by == Some(self.open) {
                file.locked_by = None;
            }
            if file.handles == 0 {
                state.collect();
            }
        }
    }
}

impl DiskFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut state = self.state()?;
        state.begin(SimOp::Read)?;
        Ok(state.file(self.inode)?.live.read(buf, offset))
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writable()?;
        let mut state = self.state()?;
        state.begin(SimOp::Write)?;
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| os_error(libc::EFBIG))?;
        let len = state.file(self.inode)?.live.len;
        state.grow(end.saturating_sub(len))?;
        state.file_mut(self.inode)?.live.write(buf, offset);
        state.push_unsynced(
            self.inode,
            Change::Write {
                offset,
                bytes: buf.to_vec(),
            },
        );
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.state()?.file(self.inode)?.live.len)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.writable()?;
        let mut state = self.state()?;
        state.begin(SimOp::SetLen)?;
        let old = state.file(self.inode)?.live.len;
        if len > old {
            state.grow(len - old)?;
        } else {
            state.used_bytes -= old - len;
        }
        state.file_mut(self.inode)?.live.set_len(len);
        state.push_unsynced(self.inode, Change::SetLen(len));
        Ok(())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        self.writable()?;
        let mut state = self.state()?;
        state.begin(SimOp::SetLen)?;
        let old = state.file(self.inode)?.live.len;
        if len > old {
            state.grow(len - old)?;
            state.file_mut(self.inode)?.live.set_len(len);
            state.push_unsynced(self.inode, Change::SetLen(len));
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut state = self.state()?;
        state.begin(SimOp::Sync)?;
        state.sync_file(self.inode);
        state.stats.syncs += 1;
        Ok(())
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }

    fn try_lock(&self) -> io::Result<bool> {
        let mut state = self.state()?;
        let open = self.open;
        let file = state.file_mut(self.inode)?;
        match file.locked_by {
            Some(holder) if holder != open => Ok(false),
            _ => {
                file.locked_by = Some(open);
                Ok(true)
            }
        }
    }

    fn as_std(&self) -> Option<&File> {
        None
    }

    fn zeros_from(&self) -> io::Result<u64> {
        Ok(self.state()?.file(self.inode)?.live.zeros_from())
    }
}

#[cfg(test)]
mod tests;
