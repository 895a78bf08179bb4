//! Cluster configuration: the members, their addresses and roles, and its versioned encoding.
//!
//! Roles follow dqlite: a **voter** replicates the log and votes; a **standby** replicates the
//! log but does not vote (a warm spare, promotable quickly); a **spare** gets nothing and only
//! waits to be promoted. Addresses ride along so that a host can answer "who is the leader, and
//! where" exactly and dial its peers.
//!
//! Encoding (little-endian), carried by `EntryKind::Configuration` entries and snapshot metadata:
//!
//! | bytes | field |
//! | --- | --- |
//! | 1 | version (1) |
//! | 2 | member count, at most [`MEMBERS_MAX`] |
//! | per member: 8 | node id (never 0; ids strictly increasing) |
//! | 1 | role: 0 voter, 1 standby, 2 spare (dqlite's numbering) |
//! | 2 | address length, at most [`ADDRESS_BYTES_MAX`] |
//! | n | address, UTF-8 |

use std::collections::BTreeMap;
use std::fmt;

use crate::error::DecodeError;
use crate::wire::{put_u16, put_u64, put_u8, Reader};
use crate::NodeId;

/// The configuration format version written by this build.
pub const CONFIGURATION_VERSION: u8 = 1;
/// The most members a configuration may hold.
pub const MEMBERS_MAX: usize = 256;
/// The longest address, in bytes.
pub const ADDRESS_BYTES_MAX: usize = 255;

/// What a member does in the cluster. The byte values are on disk and wire: never renumber.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum MemberRole {
    /// Replicates the log and votes; counted in quorums.
    Voter = 0,
    /// Replicates the log, does not vote.
    Standby = 1,
    /// Gets no log; only waits to be promoted.
    Spare = 2,
}

impl MemberRole {
    /// The role stored as `byte`, if any.
    pub fn from_u8(byte: u8) -> Option<MemberRole> {
        match byte {
            0 => Some(MemberRole::Voter),
            1 => Some(MemberRole::Standby),
            2 => Some(MemberRole::Spare),
            _ => None,
        }
    }

    /// Whether a member with this role receives the log.
    pub fn replicates(self) -> bool {
        matches!(self, MemberRole::Voter | MemberRole::Standby)
    }
}

impl fmt::Display for MemberRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemberRole::Voter => "voter",
            MemberRole::Standby => "standby",
            MemberRole::Spare => "spare",
        })
    }
}

/// One member: where to reach it and what it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The address peers and clients dial (for atoll, `host:port`).
    pub address: String,
    /// Its role.
    pub role: MemberRole,
}

/// The set of members, ordered by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Configuration {
    members: BTreeMap<NodeId, Member>,
}

impl Configuration {
    /// An empty configuration (a node that has not joined a cluster yet).
    pub fn new() -> Configuration {
        Configuration::default()
    }

    /// Adds or replaces a member. Panics on id 0 or an address over [`ADDRESS_BYTES_MAX`]; the
    /// public membership API checks both and returns an error first.
    pub fn insert(&mut self, id: NodeId, address: impl Into<String>, role: MemberRole) {
        let address = address.into();
        assert!(id.0 != 0, "node id 0 is reserved for nobody");
        assert!(address.len() <= ADDRESS_BYTES_MAX, "address too long");
        self.members.insert(id, Member { address, role });
    }

    /// Removes a member, returning it.
    pub fn remove(&mut self, id: NodeId) -> Option<Member> {
        self.members.remove(&id)
    }

    /// The member `id`, if present.
    pub fn get(&self, id: NodeId) -> Option<&Member> {
        self.members.get(&id)
    }

    /// The role of `id`, if a member.
    pub fn role(&self, id: NodeId) -> Option<MemberRole> {
        self.members.get(&id).map(|member| member.role)
    }

    /// Whether `id` is a voter.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.role(id) == Some(MemberRole::Voter)
    }

    /// Every member, by id.
    pub fn members(&self) -> impl Iterator<Item = (NodeId, &Member)> + '_ {
        self.members.iter().map(|(id, member)| (*id, member))
    }

    /// The voters' ids.
    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|(_, member)| member.role == MemberRole::Voter)
            .map(|(id, _)| *id)
    }

    /// The number of voters.
    pub fn voter_count(&self) -> usize {
        self.voters().count()
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        assert!(
            self.members.len() <= MEMBERS_MAX,
            "too many members to encode"
        );
        put_u8(out, CONFIGURATION_VERSION);
        put_u16(
            out,
            u16::try_from(self.members.len()).expect("MEMBERS_MAX fits u16"),
        );
        for (id, member) in &self.members {
            put_u64(out, id.0);
            put_u8(out, member.role as u8);
            put_u16(
                out,
                u16::try_from(member.address.len()).expect("ADDRESS_BYTES_MAX fits u16"),
            );
            out.extend_from_slice(member.address.as_bytes());
        }
    }

    /// The encoding as a new vector.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + self.members.len() * 32);
        self.encode(&mut out);
        out
    }

    /// Decodes a configuration; the whole input must be consumed.
    pub fn decode(bytes: &[u8]) -> Result<Configuration, DecodeError> {
        let mut reader = Reader::new(bytes);
        let configuration = Configuration::decode_from(&mut reader)?;
        if reader.remaining() != 0 {
            return Err(DecodeError::Invalid("trailing bytes after configuration"));
        }
        Ok(configuration)
    }

    pub(crate) fn decode_from(reader: &mut Reader<'_>) -> Result<Configuration, DecodeError> {
        let version = reader.u8("configuration version")?;
        if version != CONFIGURATION_VERSION {
            return Err(DecodeError::Version(version));
        }
        let count = usize::from(reader.u16("member count")?);
        if count > MEMBERS_MAX {
            return Err(DecodeError::TooLarge {
                what: "member count",
                value: count as u64,
                max: MEMBERS_MAX as u64,
            });
        }
        let mut members = BTreeMap::new();
        let mut previous = 0u64;
        for _ in 0..count {
            let id = reader.u64("member id")?;
            if id <= previous {
                return Err(DecodeError::Invalid("member ids (0 or not increasing)"));
            }
            previous = id;
            let role = MemberRole::from_u8(reader.u8("member role")?)
                .ok_or(DecodeError::Invalid("member role"))?;
            let length = usize::from(reader.u16("address length")?);
            if length > ADDRESS_BYTES_MAX {
                return Err(DecodeError::TooLarge {
                    what: "address length",
                    value: length as u64,
                    max: ADDRESS_BYTES_MAX as u64,
                });
            }
            let address = std::str::from_utf8(reader.take(length, "address")?)
                .map_err(|_| DecodeError::Invalid("address (not UTF-8)"))?;
            members.insert(
                NodeId(id),
                Member {
                    address: address.to_string(),
                    role,
                },
            );
        }
        Ok(Configuration { members })
    }
}

impl fmt::Display for Configuration {
    /// `{1=voter,2=standby}`: ids and roles; addresses are left out of transcripts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (position, (id, member)) in self.members.iter().enumerate() {
            if position > 0 {
                f.write_str(",")?;
            }
            write!(f, "{id}={}", member.role)?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Configuration {
        let mut configuration = Configuration::new();
        configuration.insert(NodeId(1), "10.0.0.1:9001", MemberRole::Voter);
        configuration.insert(NodeId(2), "10.0.0.2:9001", MemberRole::Standby);
        configuration.insert(NodeId(7), "", MemberRole::Spare);
        configuration
    }

    #[test]
    fn test_configuration_round_trip() {
        let configuration = sample();
        let bytes = configuration.encode_to_vec();
        assert_eq!(bytes[0], CONFIGURATION_VERSION);
        assert_eq!(Configuration::decode(&bytes).unwrap(), configuration);
        assert_eq!(configuration.to_string(), "{1=voter,2=standby,7=spare}");
        assert_eq!(configuration.voters().collect::<Vec<_>>(), vec![NodeId(1)]);
    }

    #[test]
    fn test_configuration_decode_rejects_bad_input() {
        let bytes = sample().encode_to_vec();
        for length in 0..bytes.len() {
            assert!(
                Configuration::decode(&bytes[..length]).is_err(),
                "prefix {length}"
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Configuration::decode(&trailing).is_err());
        let mut version = bytes.clone();
        version[0] = 9;
        assert_eq!(
            Configuration::decode(&version),
            Err(DecodeError::Version(9))
        );
        let mut role = bytes.clone();
        role[11] = 7;
        assert_eq!(
            Configuration::decode(&role),
            Err(DecodeError::Invalid("member role"))
        );
        // Two members with the same id.
        let mut duplicate = Configuration::new();
        duplicate.insert(NodeId(1), "a", MemberRole::Voter);
        let mut bytes = duplicate.encode_to_vec();
        bytes[1] = 2;
        bytes.extend_from_slice(&bytes.clone()[3..]);
        assert!(Configuration::decode(&bytes).is_err());
    }
}
