//! The cluster secret on disk and the join token that carries it to a new node.
//!
//! `DIR/cluster.secret` holds the secret as one line of 64 lowercase hex digits (32 bytes); the
//! file is created with mode 0600 and refused if group or others may read it. `atoll init`
//! draws it, `atoll join` writes the one its token carries, `atoll start` refuses to run
//! without it (see [`read_secret`]).
//!
//! A join token is `atoll1-` followed by 80 lowercase hex digits: the cluster id (16 digits,
//! big-endian as written in atoll.conf) then the secret (64 digits). It is a credential: anyone
//! holding it can join the cluster.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use atoll_net::peer::{ClusterSecret, SECRET_BYTES};

/// The secret's file name inside the data directory.
pub const SECRET_FILE_NAME: &str = "cluster.secret";
/// The join token's prefix (its format version).
pub const TOKEN_PREFIX: &str = "atoll1-";
/// Hex digits after the prefix: the cluster id, then the secret.
const TOKEN_HEX_DIGITS: usize = 16 + 2 * SECRET_BYTES;
/// Mode of the files that hold secrets (atoll.conf too: it names the cluster).
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// What a join token carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The cluster's id.
    pub cluster_id: u64,
    /// The cluster's secret.
    pub secret: ClusterSecret,
}

impl JoinToken {
    /// The token's text.
    pub fn to_text(&self) -> String {
        let mut text = format!("{TOKEN_PREFIX}{:016x}", self.cluster_id);
        text.push_str(&hex(self.secret.as_bytes()));
        text
    }

    /// Parses a token (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<JoinToken, String> {
        let text = text.trim();
        let Some(digits) = text.strip_prefix(TOKEN_PREFIX) else {
            return Err(format!(
                "a join token starts with `{TOKEN_PREFIX}` (print one with `atoll token \
                 --data-dir DIR` on a node of the cluster)"
            ));
        };
        if digits.len() != TOKEN_HEX_DIGITS {
            return Err(format!(
                "a join token has {TOKEN_HEX_DIGITS} hex digits after `{TOKEN_PREFIX}`, this \
                 one has {}: was it cut?",
                digits.len()
            ));
        }
        let (id, secret) = digits.split_at(16);
        let cluster_id = u64::from_str_radix(id, 16)
            .ok()
            .filter(|_| id.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or("the join token is not hexadecimal")?;
        let secret = unhex_secret(secret).ok_or("the join token is not hexadecimal")?;
        Ok(JoinToken { cluster_id, secret })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex_secret(text: &str) -> Option<ClusterSecret> {
    if text.len() != 2 * SECRET_BYTES || !text.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; SECRET_BYTES];
    for (i, byte) in bytes.iter_mut().enumerate() {
        let pair = &text[2 * i..2 * i + 2];
        if !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(ClusterSecret::from_bytes(bytes))
}

/// Writes `path` atomically with mode 0600: a temporary file created with that mode, fsync,
/// rename, directory fsync.
pub fn write_private(data_dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let path = data_dir.join(name);
    let temp = data_dir.join(format!("{name}.tmp"));
    let _ = fs::remove_file(&temp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .open(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, &path)?;
    fs::File::open(data_dir)?.sync_all()
}

/// Writes `DIR/cluster.secret` (mode 0600).
pub fn write_secret(data_dir: &Path, secret: &ClusterSecret) -> io::Result<()> {
    let text = format!("{}\n", hex(secret.as_bytes()));
    write_private(data_dir, SECRET_FILE_NAME, text.as_bytes())
}

/// Whether `DIR/cluster.secret` exists.
pub fn has_secret(data_dir: &Path) -> bool {
    data_dir.join(SECRET_FILE_NAME).exists()
}

/// Reads `DIR/cluster.secret`: a missing file (a data directory made before peers
/// authenticated), a file others may read, or one that is not 64 hex digits is a clear error.
pub fn read_secret(data_dir: &Path) -> Result<ClusterSecret, String> {
    let path = data_dir.join(SECRET_FILE_NAME);
    let metadata = match fs::metadata(&path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!(
                "{} not found: this data directory has no cluster secret (it was made before \
                 nodes authenticated each other). On one node run `atoll token --data-dir DIR \
                 --generate`, then on every other node `atoll token --data-dir DIR --set TOKEN` \
                 with the token it printed, and start them again",
                path.display()
            ))
        }
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is readable by others (mode {mode:o}): it holds the cluster secret; run `chmod \
             600 {}`",
            path.display(),
            path.display()
        ));
    }
    let text = fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    unhex_secret(text.trim())
        .ok_or_else(|| format!("{} does not hold a secret (64 hex digits)", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_token_round_trips_and_refuses_bad_text() {
        let token = JoinToken {
            cluster_id: 0x0123_4567_89ab_cdef,
            secret: ClusterSecret::from_bytes([0xa5; SECRET_BYTES]),
        };
        let text = token.to_text();
        assert_eq!(text.len(), TOKEN_PREFIX.len() + TOKEN_HEX_DIGITS);
        assert!(text.starts_with("atoll1-0123456789abcdefa5a5"));
        assert_eq!(JoinToken::parse(&format!(" {text}\n")), Ok(token));
        assert!(JoinToken::parse(&text[1..]).is_err());
        assert!(JoinToken::parse(&text[..text.len() - 1]).is_err());
        let mut bad = text.clone();
        bad.replace_range(10..11, "g");
        assert!(JoinToken::parse(&bad).is_err());
        let mut bad = text.clone();
        bad.replace_range(40..41, "+");
        assert!(JoinToken::parse(&bad).is_err());
        let mut bad = text.clone();
        bad.replace_range(7..8, "+");
        assert!(JoinToken::parse(&bad).is_err(), "no sign in the id");
        assert!(JoinToken::parse(&format!("{text}é")).is_err());
    }

    #[test]
    fn test_secret_file_is_private_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_secret(dir.path()).unwrap_err().contains("--generate"));
        let secret = ClusterSecret::from_bytes([7; SECRET_BYTES]);
        write_secret(dir.path(), &secret).unwrap();
        let path = dir.path().join(SECRET_FILE_NAME);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_secret(dir.path()).unwrap(), secret);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_secret(dir.path()).unwrap_err().contains("chmod 600"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "zz\n").unwrap();
        assert!(read_secret(dir.path()).unwrap_err().contains("64 hex"));
    }
}
