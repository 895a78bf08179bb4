//! The frames of commands in flight: captured and proposed, not yet applied.
//!
//! A database's next group of writers may run before the commands ahead of it are applied
//! (a *chain*, ARCHITECTURE.md "The flow of a write"). Its transactions must see those commands'
//! pages, and no reader may. The overlay keeps each in-flight command's frames (the pages it
//! carries, once each, as the command does) in chain order, laid out as the WAL frames
//! `Engine::apply` will write for them: same slots (from the applied `mxFrame + 1` on), same
//! frame headers and checksums, and the wal-index header each leaves behind. Between engine
//! calls the overlay is only memory. For the duration of a chain ([`super::DbFiles::begin_chain`]
//! .. `end_chain`) it is *installed*: its frames are indexed in the wal-index and its last
//! header published, so the chain's transactions start on top of it; WAL reads of its slots are
//! served from here. The hide step takes both out again.
//!
//! The prediction holds as long as the applied state moves the way the overlay expects: its
//! first command applied, nothing else. When the applied header differs from the one the
//! overlay was laid out on (a checkpoint restarted the WAL, an apply started a new WAL
//! generation with a salt only the Raft index decides), the frames are laid out again on the
//! applied header at the next install. Page contents never depend on the slots, so this costs
//! a pass over the bytes and nothing else.
//!
//! Layout of `tail`: frame after frame, each [`wal::FRAME_HEADER_BYTES`] of frame header (the
//! WAL format, `crate::wal`) then one page; frame `i` is WAL frame `applied mxFrame + 1 + i`.
//! Until laid out, a frame header holds only its page number and commit size.

use std::collections::VecDeque;

use byteorder::{BigEndian, ByteOrder};

use super::FrameRef;
use crate::wal::{self, IndexHeader, INDEX_HEADER_BYTES};

/// Salts of a WAL generation the overlay starts: the apply path takes the Raft index of the
/// entry instead, unknown here, so such frames are laid out again once applied.
const NEW_GENERATION_SALT: [u8; 8] = [0; 8];

/// Capacity the frames keep once the chain is empty (a few groups' worth: a database that
/// took one large transaction does not pin its memory, one per database).
const TAIL_RETAINED_BYTES: usize = 256 * 1024;

/// The in-flight commands of one database.
///
/// Invariant: `encoded_links <= links.len()`, and `encoded_on` is `Some` when
/// `encoded_links > 0`: the first `encoded_links` links are laid out on that applied header.
pub(super) struct Overlay {
    page_size: u32,
    links: VecDeque<Link>,
    tail: Vec<u8>,
    encoded_on: Option<[u8; INDEX_HEADER_BYTES]>,
    encoded_links: usize,
    /// The WAL header of a new generation the first link starts (`encoded_on` has mxFrame 0).
    wal_header: Option<[u8; 32]>,
    /// Times the frames were laid out again on an applied header other than predicted.
    relayouts: u64,
}

struct Link {
    id: u64,
    frame_count: u32,
    db_size_pages: u32,
    /// The wal-index header once this link is applied (valid once laid out).
    header_after: [u8; INDEX_HEADER_BYTES],
}

impl Overlay {
    pub(super) fn new(page_size: u32) -> Overlay {
        Overlay {
            page_size,
            links: VecDeque::new(),
            tail: Vec::new(),
            encoded_on: None,
            encoded_links: 0,
            wal_header: None,
            relayouts: 0,
        }
    }

    fn frame_bytes(&self) -> usize {
        wal::FRAME_HEADER_BYTES + self.page_size as usize
    }

    pub(super) fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Frames of every link.
    pub(super) fn frame_count(&self) -> u32 {
        (self.tail.len() / self.frame_bytes()) as u32
    }

    /// Bytes of frames of every link.
    pub(super) fn tail_bytes(&self) -> usize {
        self.tail.len()
    }

    /// The page number of frame `i` of the tail.
    pub(super) fn page_number(&self, i: u32) -> u32 {
        BigEndian::read_u32(&self.tail[i as usize * self.frame_bytes()..])
    }

    /// The WAL header of the generation the overlay starts, if it starts one.
    pub(super) fn wal_header(&self) -> Option<&[u8; 32]> {
        self.wal_header.as_ref()
    }

    /// How many times the frames were laid out again (tests: a plain chain never needs it).
    #[cfg(test)]
    pub(super) fn relayouts(&self) -> u64 {
        self.relayouts
    }

    /// Copies tail bytes from `from` into `out`; returns how many there were.
    pub(super) fn read(&self, from: usize, out: &mut [u8]) -> usize {
        let available = self.tail.len().saturating_sub(from);
        let copied = available.min(out.len());
        out[..copied].copy_from_slice(&self.tail[from..from + copied]);
        copied
    }

    /// Adds the frames of command `id` at the end of the chain.
    pub(super) fn push(
        &mut self,
        id: u64,
        frames: &mut dyn Iterator<Item = FrameRef<'_>>,
        db_size_pages: u32,
    ) {
        assert!(db_size_pages >= 1);
        assert!(
            self.links.iter().all(|link| link.id != id),
            "command {id} is in flight twice"
        );
        let page_size = self.page_size as usize;
        let start = self.tail.len();
        for frame in frames {
            assert_eq!(frame.page.len(), page_size);
            let mut header = [0u8; wal::FRAME_HEADER_BYTES];
            BigEndian::write_u32(&mut header[0..4], frame.page_number);
            self.tail.extend_from_slice(&header);
            self.tail.extend_from_slice(frame.page);
        }
        let frame_bytes = self.frame_bytes();
        let frame_count = ((self.tail.len() - start) / frame_bytes) as u32;
        assert!(frame_count >= 1, "a command without frames");
        let commit = self.tail.len() - frame_bytes;
        BigEndian::write_u32(&mut self.tail[commit + 4..commit + 8], db_size_pages);
        self.links.push_back(Link {
            id,
            frame_count,
            db_size_pages,
            header_after: [0; INDEX_HEADER_BYTES],
        });
    }

    /// Lays the frames out on `applied` (the wal-index header of the applied state) as the
    /// apply path will write them; returns the header after the last link (`applied` itself
    /// when the chain is empty).
    pub(super) fn lay_out(
        &mut self,
        applied: &[u8; INDEX_HEADER_BYTES],
    ) -> Result<[u8; INDEX_HEADER_BYTES], &'static str> {
        if self.encoded_on != Some(*applied) {
            if self.encoded_links > 0 {
                self.relayouts += 1;
            }
            self.encoded_on = Some(*applied);
            self.encoded_links = 0;
            self.wal_header = None;
        }
        let frame_bytes = self.frame_bytes();
        let mut before = match self.encoded_links {
            0 => *applied,
            n => self.links[n - 1].header_after,
        };
        let mut offset: usize = self
            .links
            .iter()
            .take(self.encoded_links)
            .map(|link| link.frame_count as usize * frame_bytes)
            .sum();
        for i in self.encoded_links..self.links.len() {
            let mut header = IndexHeader::decode(&before)
                .filter(|header| header.is_init == 1)
                .ok_or("wal-index header is not initialised")?;
            let (mut running, wal_header) =
                wal::begin_frames(&mut header, self.page_size, NEW_GENERATION_SALT)?;
            if wal_header.is_some() {
                // Only the first link can start a generation: the others follow frames.
                assert_eq!(i, 0);
                self.wal_header = wal_header;
            }
            let link = &self.links[i];
            for frame in 0..link.frame_count {
                let start = offset + frame as usize * frame_bytes;
                let (head, page) =
                    self.tail[start..start + frame_bytes].split_at_mut(wal::FRAME_HEADER_BYTES);
                let page_number = BigEndian::read_u32(&head[0..4]);
                let size = if frame + 1 == link.frame_count {
                    link.db_size_pages
                } else {
                    0
                };
                running =
                    wal::encode_frame_header(head, page_number, size, header.salt, page, running);
            }
            wal::end_frames(
                &mut header,
                link.frame_count,
                link.db_size_pages,
                running,
                self.page_size,
            );
            offset += link.frame_count as usize * frame_bytes;
            before = header.encode();
            self.links[i].header_after = before;
        }
        self.encoded_links = self.links.len();
        Ok(before)
    }

    /// The first link, `id`, was applied and the wal-index header is now `applied`: its frames
    /// leave the overlay. If the apply wrote what the overlay predicted, the rest stays laid
    /// out; otherwise it is laid out again at the next install.
    pub(super) fn applied_first(&mut self, id: u64, applied: &[u8; INDEX_HEADER_BYTES]) {
        let link = self.links.pop_front().expect("a link in flight");
        assert_eq!(link.id, id, "links apply in chain order");
        self.tail
            .drain(..link.frame_count as usize * self.frame_bytes());
        if self.encoded_links > 0 && link.header_after == *applied {
            self.encoded_links -= 1;
            self.encoded_on = Some(*applied);
        } else {
            self.encoded_links = 0;
            self.encoded_on = None;
        }
        self.wal_header = None;
        if self.links.is_empty() {
            self.clear();
        }
    }

    /// Drops link `id` and every link after it; false if `id` is not in flight.
    pub(super) fn discard_from(&mut self, id: u64) -> bool {
        let Some(position) = self.links.iter().position(|link| link.id == id) else {
            return false;
        };
        let kept: usize = self
            .links
            .iter()
            .take(position)
            .map(|link| link.frame_count as usize * self.frame_bytes())
            .sum();
        self.tail.truncate(kept);
        self.links.truncate(position);
        self.encoded_links = self.encoded_links.min(position);
        if self.links.is_empty() {
            self.clear();
        }
        true
    }

    /// Drops every link.
    pub(super) fn clear(&mut self) {
        self.links.clear();
        self.tail.clear();
        self.tail.shrink_to(TAIL_RETAINED_BYTES);
        self.encoded_on = None;
        self.encoded_links = 0;
        self.wal_header = None;
    }
}
