//! The simulator's state machine: a tiny key-value register store, its commands and its
//! snapshot encoding.

use std::collections::BTreeMap;

use byteorder::{ByteOrder, LittleEndian};

use crate::LogIndex;

/// A put: `key := value`, tagged with the client operation that proposed it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Put {
    /// The client operation (unique per simulation).
    pub op_id: u64,
    /// The register.
    pub key: u64,
    /// The value (unique per simulation, never 0: 0 is "never written").
    pub value: u64,
}

const PUT_BYTES: usize = 24;

impl Put {
    /// The command's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; PUT_BYTES];
        LittleEndian::write_u64(&mut bytes[0..8], self.op_id);
        LittleEndian::write_u64(&mut bytes[8..16], self.key);
        LittleEndian::write_u64(&mut bytes[16..24], self.value);
        bytes
    }

    /// Decodes a command; `None` for bytes that are not one (the machine ignores them).
    pub fn decode(bytes: &[u8]) -> Option<Put> {
        if bytes.len() != PUT_BYTES {
            return None;
        }
        Some(Put {
            op_id: LittleEndian::read_u64(&bytes[0..8]),
            key: LittleEndian::read_u64(&bytes[8..16]),
            value: LittleEndian::read_u64(&bytes[16..24]),
        })
    }
}

/// The registers and the index of the last entry applied to them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kv {
    /// Register values.
    pub values: BTreeMap<u64, u64>,
    /// The last applied index.
    pub applied: LogIndex,
}

impl Kv {
    /// Applies one command.
    pub fn apply(&mut self, put: &Put) {
        self.values.insert(put.key, put.value);
    }

    /// The value of `key` (0 if never written).
    pub fn get(&self, key: u64) -> u64 {
        self.values.get(&key).copied().unwrap_or(0)
    }

    /// The snapshot bytes: applied index, count, then (key, value) pairs.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; 12 + 16 * self.values.len()];
        LittleEndian::write_u64(&mut bytes[0..8], self.applied.0);
        LittleEndian::write_u32(&mut bytes[8..12], self.values.len() as u32);
        for (position, (key, value)) in self.values.iter().enumerate() {
            let at = 12 + 16 * position;
            LittleEndian::write_u64(&mut bytes[at..at + 8], *key);
            LittleEndian::write_u64(&mut bytes[at + 8..at + 16], *value);
        }
        bytes
    }

    /// Restores a snapshot; panics on bytes `encode` did not produce (a simulator bug).
    pub fn decode(bytes: &[u8]) -> Kv {
        assert!(bytes.len() >= 12, "snapshot too short");
        let applied = LogIndex(LittleEndian::read_u64(&bytes[0..8]));
        let count = LittleEndian::read_u32(&bytes[8..12]) as usize;
        assert_eq!(bytes.len(), 12 + 16 * count, "snapshot length");
        let mut values = BTreeMap::new();
        for position in 0..count {
            let at = 12 + 16 * position;
            values.insert(
                LittleEndian::read_u64(&bytes[at..at + 8]),
                LittleEndian::read_u64(&bytes[at + 8..at + 16]),
            );
        }
        Kv { values, applied }
    }

    /// A digest of the registers (not the applied index).
    pub fn digest(&self) -> u64 {
        let mut hash = Fnv::new();
        for (key, value) in &self.values {
            hash.write_u64(*key);
            hash.write_u64(*value);
        }
        hash.finish()
    }
}

/// FNV-1a, 64 bits: a stable digest (std's hasher may change between releases).
pub struct Fnv(u64);

impl Fnv {
    /// A fresh digest.
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    /// Mixes in bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Mixes in a number.
    pub fn write_u64(&mut self, value: u64) {
        self.write(&value.to_le_bytes());
    }

    /// The digest.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_kv_snapshot_round_trip() {
        let mut kv = Kv::default();
        kv.apply(&Put {
            op_id: 1,
            key: 3,
            value: 9,
        });
        kv.apply(&Put {
            op_id: 2,
            key: 1,
            value: 4,
        });
        kv.applied = LogIndex(7);
        let restored = Kv::decode(&kv.encode());
        assert_eq!(restored, kv);
        assert_eq!(restored.digest(), kv.digest());
        let put = Put {
            op_id: 5,
            key: 6,
            value: 7,
        };
        assert_eq!(Put::decode(&put.encode()), Some(put));
        assert_eq!(Put::decode(b"short"), None);
    }
}
