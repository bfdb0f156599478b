//! Authenticated encryption of every datagram between daemons.
//!
//! Every datagram a daemon sends is sealed under the cluster key with
//! XChaCha20-Poly1305, and every datagram it receives is opened here and
//! checked — format, key, tag, replay, incarnation — before a single byte of
//! the plaintext is decoded. A datagram that fails any check is dropped,
//! counted by cause in [`SealCounters`] and reported as an [`OpenError`]; no
//! input makes this module panic or allocate more than [`MAX_DATAGRAM_LEN`]
//! bytes. The module knows nothing of the protocol: plaintexts are opaque
//! bytes.
//!
//! # Datagram layout
//!
//! All integers are big-endian.
//!
//! | offset | length | field |
//! |---|---|---|
//! | 0 | 1 | [`MAGIC_VERSION`]: `0xF` marks a Flotilla datagram, the low nibble is the format version (1) |
//! | 1 | 4 | [`KeyId`] of the cluster key that sealed it |
//! | 5 | 4 | sender node ([`Pid::node`]) |
//! | 9 | 8 | sender incarnation ([`Pid::incarnation`]) |
//! | 17 | 8 | packet number, strictly increasing per sender incarnation |
//! | 25 | n | ciphertext of the n-byte plaintext |
//! | 25 + n | 16 | Poly1305 tag |
//!
//! The 25-byte header travels in clear and is the AEAD's associated data, so
//! changing any of its bits makes the tag fail. [`OVERHEAD`] is 41 bytes.
//!
//! # Nonces
//!
//! Every node of the cluster seals with the same key, so a nonce must be
//! unique across the whole cluster, not only per sender. It is the injective
//! encoding of (node, incarnation, packet number): node (4 bytes),
//! incarnation (8), four zero bytes, packet number (8). That needs
//! 160 bits, more than the 96-bit nonce of ChaCha20-Poly1305 (RFC 8439), so
//! the cipher is its extended-nonce variant XChaCha20-Poly1305 from the same
//! RustCrypto crate (192-bit nonce: HChaCha20 derives a subkey from the
//! first 128 bits, then runs plain ChaCha20-Poly1305).
//!
//! The node id must be in the nonce: putting it only in the associated data
//! would not do, since the associated data feeds Poly1305 but not the
//! keystream. Two nodes sending the same (incarnation, packet number) would
//! then encrypt with the same keystream (the XOR of their plaintexts leaks)
//! and the same one-time Poly1305 key (tags can be forged).
//!
//! The nonce therefore never repeats under one key as long as:
//! - a [`Sealer`] never reuses a packet number: it counts up from 0 and
//!   refuses to seal once the counter is exhausted
//!   ([`SealError::PacketNumbersExhausted`]), never wrapping;
//! - **no two processes ever seal with the same [`Pid`]** under one key. The
//!   driver must give every start of a node an incarnation it has never used
//!   (persisted and synced before the first datagram is sealed, or derived
//!   from a clock that never goes back), and node ids must be unique in the
//!   cluster. A node that restarted with an old incarnation would reuse
//!   nonces and lose the confidentiality and integrity of its datagrams.
//!
//! # Replay protection
//!
//! After a datagram is authenticated, its packet number is checked against
//! a sliding window of [`REPLAY_WINDOW`] packet numbers kept per sender node
//! for its newest incarnation (a bitmap, as in WireGuard and RFC 6479):
//! datagrams reordered within the window are accepted once, duplicates and
//! datagrams older than the window are refused as [`OpenError::Replay`]. A
//! datagram from a newer incarnation of a node replaces the window of the
//! older one, and one from an older incarnation than the newest seen is
//! refused as [`OpenError::Stale`]. At most [`Sealer::max_senders`] nodes are
//! tracked; past that the least recently heard from is forgotten (counted in
//! [`SealCounters::sender_evictions`]), after which replays of its
//! datagrams within one window of what it last sent would be accepted once
//! more. Only authenticated datagrams create or update these entries, so only
//! holders of the key can cause evictions; size the limit above the number
//! of nodes and it never happens.
//!
//! # Keys and rotation
//!
//! The cluster key is 32 random bytes in a file of one line of 64 lowercase
//! hex characters, readable by its owner only ([`ClusterKey::load`]). The
//! AEAD key and the [`KeyId`] are derived from it with SHA-256 under
//! distinct domain labels, so the raw cluster key can later serve other
//! purposes without the two uses interfering.
//!
//! A [`Sealer`] seals with its current key and opens datagrams sealed under
//! the current key, a staged next key and the previous key. Rotating the key
//! of a running group without a gap, where no node receives datagrams it
//! cannot open:
//! 1. install the new key file on every node and call [`Sealer::stage`]:
//!    nodes accept both keys and still send with the old one;
//! 2. once every node has staged it, call [`Sealer::rotate`] on every node:
//!    nodes send with the new key and still accept the old one;
//! 3. once every node has rotated, call [`Sealer::retire_old`] everywhere.
//!
//! Skipping step 1 works too, but then a node that has rotated is unreadable
//! to those that have not yet, until they do.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::types::{NodeId, Pid};

/// First byte of every sealed datagram: the high nibble `0xF` marks a
/// Flotilla datagram, the low nibble is the version of this format.
pub const MAGIC_VERSION: u8 = 0xF1;
/// The high nibble of [`MAGIC_VERSION`], shared by every version.
const MAGIC_MASK: u8 = 0xF0;
/// Length of the clear header: magic/version, key id, node, incarnation,
/// packet number.
pub const HEADER_LEN: usize = 1 + 4 + 4 + 8 + 8;
/// Length of the Poly1305 tag that ends every datagram.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed datagram adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// The largest datagram sealed or opened: the largest UDP payload over IPv4.
pub const MAX_DATAGRAM_LEN: usize = 65_507;
/// The largest plaintext [`Sealer::seal`] accepts.
pub const MAX_PLAINTEXT_LEN: usize = MAX_DATAGRAM_LEN - OVERHEAD;
/// How far behind the newest packet number of a sender a datagram may be
/// and still be accepted (once).
pub const REPLAY_WINDOW: u64 = 1024;
/// Default limit on the number of sender nodes whose replay windows are
/// kept (about 160 bytes each).
pub const DEFAULT_MAX_SENDERS: usize = 1024;

/// Length of a cluster key in bytes.
const KEY_LEN: usize = 32;
/// Length of a key file's line, without its newline.
const KEY_HEX_LEN: usize = 2 * KEY_LEN;
/// Domain label of the SHA-256 that derives a key's [`KeyId`].
const KEY_ID_LABEL: &[u8] = b"flotilla/seal/v1/key-id";
/// Domain label of the SHA-256 that derives the AEAD key. Its length differs
/// from [`KEY_ID_LABEL`]'s, so the two hash inputs can never be equal.
const AEAD_KEY_LABEL: &[u8] = b"flotilla/seal/v1/aead-key";

/// Identifies a cluster key in every datagram, so that a receiver picks the
/// right key during a rotation: the first 4 bytes of a domain-separated
/// SHA-256 of the key. Public; it reveals nothing useful about the key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 4]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// The secret shared by every daemon of a cluster.
///
/// Zeroed when dropped; `Debug` shows only its [`KeyId`].
#[derive(Clone)]
pub struct ClusterKey {
    bytes: [u8; KEY_LEN],
}

impl Drop for ClusterKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterKey")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

impl ClusterKey {
    /// A key from its 32 bytes. The caller's copy is its own to zero.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        ClusterKey { bytes }
    }

    /// A new random key from the operating system's generator.
    pub fn generate() -> Result<Self, KeyError> {
        let mut key = ClusterKey {
            bytes: [0; KEY_LEN],
        };
        getrandom::fill(&mut key.bytes).map_err(KeyError::Random)?;
        Ok(key)
    }

    /// The id that datagrams sealed under this key carry.
    pub fn id(&self) -> KeyId {
        let digest = self.fingerprint();
        KeyId([digest[0], digest[1], digest[2], digest[3]])
    }

    /// The full domain-separated hash the [`KeyId`] is cut from; tells keys
    /// apart where 32 bits might not.
    fn fingerprint(&self) -> [u8; 32] {
        Sha256::new()
            .chain_update(KEY_ID_LABEL)
            .chain_update(self.bytes)
            .finalize()
            .into()
    }

    /// The XChaCha20-Poly1305 instance keyed with the key derived from this
    /// one.
    fn aead(&self) -> XChaCha20Poly1305 {
        let mut key: Key = Sha256::new()
            .chain_update(AEAD_KEY_LABEL)
            .chain_update(self.bytes)
            .finalize();
        let aead = XChaCha20Poly1305::new(&key);
        key.as_mut_slice().zeroize();
        aead
    }

    /// Reads a key file: one line of 64 lowercase hex characters, with or
    /// without a final newline.
    ///
    /// Refuses a missing file, anything but a regular file, a file that its
    /// group or others may read or write (the error says to run
    /// `chmod 600 <path>`), and any other contents, including the all-zero
    /// key. Errors never quote the file's contents.
    #[cfg(unix)]
    pub fn load(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        use std::io::{ErrorKind, Read};
        use std::os::unix::fs::PermissionsExt;

        let path = path.as_ref();
        let io_error = |action, source| KeyError::Io {
            path: path.to_path_buf(),
            action,
            source,
        };
        let contents_error = |reason| KeyError::Contents {
            path: path.to_path_buf(),
            reason,
        };
        let mut file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(KeyError::Missing {
                    path: path.to_path_buf(),
                })
            }
            Err(e) => return Err(io_error("open", e)),
        };
        // The metadata of the open file, not of the path: what is checked is
        // what is read.
        let metadata = file.metadata().map_err(|e| io_error("inspect", e))?;
        if !metadata.is_file() {
            return Err(contents_error("not a regular file"));
        }
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        // One byte more than the longest valid file tells a long file apart.
        let mut text = [0u8; KEY_HEX_LEN + 2];
        let mut len = 0;
        while len < text.len() {
            match file.read(&mut text[len..]) {
                Ok(0) => break,
                Ok(n) => len = (len + n).min(text.len()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    text.zeroize();
                    return Err(io_error("read", e));
                }
            }
        }
        let parsed = parse_key_file(&text[..len]);
        text.zeroize();
        parsed
            .map(|bytes| ClusterKey { bytes })
            .map_err(contents_error)
    }

    /// Writes this key to a new file at `path` with mode 0600, in the format
    /// [`ClusterKey::load`] reads, and syncs it and its directory.
    ///
    /// Fails with [`KeyError::Exists`] if anything is at `path` already;
    /// never overwrites. A file left incomplete by a failed write is removed.
    #[cfg(unix)]
    pub fn write_new(&self, path: impl AsRef<Path>) -> Result<(), KeyError> {
        use std::io::{ErrorKind, Write};
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

        let path = path.as_ref();
        let io_error = |action, source| KeyError::Io {
            path: path.to_path_buf(),
            action,
            source,
        };
        // create_new: O_CREAT | O_EXCL, which also refuses a symbolic link.
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(KeyError::Exists {
                    path: path.to_path_buf(),
                })
            }
            Err(e) => return Err(io_error("create", e)),
        };
        let mut text = [0u8; KEY_HEX_LEN + 1];
        for (pair, byte) in text.chunks_exact_mut(2).zip(self.bytes) {
            pair[0] = HEX_DIGITS[usize::from(byte >> 4)];
            pair[1] = HEX_DIGITS[usize::from(byte & 0xF)];
        }
        text[KEY_HEX_LEN] = b'\n';
        // The umask may only have removed bits; set exactly 0600 anyway.
        let written = file
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .and_then(|()| file.write_all(&text))
            .and_then(|()| file.sync_all());
        text.zeroize();
        drop(file);
        if let Err(e) = written {
            // Best effort: the write error is the one worth reporting.
            let _ = std::fs::remove_file(path);
            return Err(io_error("write", e));
        }
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| io_error("sync the directory of", e))
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The key in a key file's contents, or why there is none. The reason never
/// quotes the contents.
fn parse_key_file(text: &[u8]) -> Result<[u8; KEY_LEN], &'static str> {
    let hex = text.strip_suffix(b"\n").unwrap_or(text);
    if hex.len() != KEY_HEX_LEN {
        return Err(if hex.len() < KEY_HEX_LEN {
            "too short"
        } else {
            "too long"
        });
    }
    let mut bytes = [0u8; KEY_LEN];
    for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
        match (hex_value(pair[0]), hex_value(pair[1])) {
            (Some(high), Some(low)) => *byte = high << 4 | low,
            _ => {
                bytes.zeroize();
                return Err("not lowercase hexadecimal");
            }
        }
    }
    if bytes == [0; KEY_LEN] {
        return Err("the all-zero key");
    }
    Ok(bytes)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// `path` as one shell word, so that the `chmod` hint can be pasted as is.
fn shell_word(path: &Path) -> String {
    let text = path.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+,:@%=".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Why a cluster key could not be generated, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// [`ClusterKey::load`]: nothing exists at the path.
    #[error("cluster key file {} does not exist", path.display())]
    Missing {
        /// The key file's path.
        path: PathBuf,
    },
    /// [`ClusterKey::write_new`]: something already exists at the path; it
    /// is left untouched.
    #[error("cluster key file {} already exists; refusing to overwrite it", path.display())]
    Exists {
        /// The key file's path.
        path: PathBuf,
    },
    /// [`ClusterKey::load`]: the file's group or others may read or write
    /// it (`mode & 0o077 != 0`).
    #[error(
        "cluster key file {} may be read or written by others (mode {mode:04o}); \
         make it private with `chmod 600 {}`",
        path.display(),
        shell_word(path)
    )]
    Permissions {
        /// The key file's path.
        path: PathBuf,
        /// The file's permission bits.
        mode: u32,
    },
    /// [`ClusterKey::load`]: the file is not a regular file holding one line
    /// of 64 lowercase hex characters, or holds the all-zero key.
    #[error(
        "cluster key file {}: {reason}; expected one line of 64 lowercase \
         hexadecimal characters",
        path.display()
    )]
    Contents {
        /// The key file's path.
        path: PathBuf,
        /// What is wrong, without quoting the contents.
        reason: &'static str,
    },
    /// An I/O error while reading or writing the key file.
    #[error("cannot {action} cluster key file {}", path.display())]
    Io {
        /// The key file's path.
        path: PathBuf,
        /// What was being done: "open", "read", "create", ...
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// [`ClusterKey::generate`]: the operating system's random number
    /// generator failed.
    #[error("the operating system's random number generator failed")]
    Random(#[source] getrandom::Error),
}

/// Why [`Sealer::seal`] refused a plaintext. Nothing was sent; `out` is
/// left empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The plaintext is longer than [`MAX_PLAINTEXT_LEN`].
    #[error("plaintext of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The plaintext's length.
        len: usize,
        /// [`MAX_PLAINTEXT_LEN`].
        max: usize,
    },
    /// This incarnation has sealed 2^64 - 1 datagrams and may seal no more
    /// without reusing a nonce; the process must restart with a new
    /// incarnation.
    #[error("packet numbers of this incarnation are exhausted; restart with a new incarnation")]
    PacketNumbersExhausted,
    /// The cipher refused the buffer. It only does for buffers far larger
    /// than [`MAX_PLAINTEXT_LEN`], so this does not happen; it is reported
    /// rather than panicking.
    #[error("the cipher refused to seal the plaintext")]
    Cipher,
}

/// Why [`Sealer::open`] dropped a datagram, in the order of the checks.
/// Each is counted in [`SealCounters`]; none decodes the plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Not a Flotilla datagram (empty, or a first byte without the magic
    /// nibble), shorter than header and tag, or longer than
    /// [`MAX_DATAGRAM_LEN`].
    #[error("malformed datagram: {reason}")]
    Malformed {
        /// What is wrong.
        reason: &'static str,
    },
    /// A Flotilla datagram of another format version, from a peer running
    /// an older or newer release.
    #[error("datagram of wire version {version}, this node speaks version {}", MAGIC_VERSION & !MAGIC_MASK)]
    Version {
        /// The version in the datagram's first byte.
        version: u8,
    },
    /// Sealed under a key that is neither current, staged nor previous: a
    /// peer with another cluster's key, or one rotated past this node.
    #[error("datagram sealed under unknown key {key}")]
    UnknownKey {
        /// The key id in the datagram.
        key: KeyId,
    },
    /// The tag does not match under the key with the datagram's id: the
    /// datagram was altered or forged. Its header cannot be trusted, so no
    /// sender is reported.
    #[error("datagram failed authentication")]
    Authentication,
    /// Authentic, but its packet number from this sender incarnation was
    /// already accepted, or is more than [`REPLAY_WINDOW`] behind the newest
    /// one and can no longer be told apart from a replay.
    #[error("replayed or too old datagram {packet} from {sender}")]
    Replay {
        /// The authenticated sender.
        sender: Pid,
        /// The datagram's packet number.
        packet: u64,
    },
    /// Authentic, but from an older incarnation of its node than the newest
    /// this sealer has accepted from that node.
    #[error("datagram from {sender}, older than incarnation {newest} of that node")]
    Stale {
        /// The authenticated sender.
        sender: Pid,
        /// The newest incarnation accepted from the sender's node.
        newest: u64,
    },
}

/// An opened datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened<'a> {
    /// The authenticated sender.
    pub sender: Pid,
    /// The plaintext, still to be decoded.
    pub plaintext: &'a [u8],
}

/// What a [`Sealer`] has done, for the application to read. Byte counts are
/// whole datagrams as on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SealCounters {
    /// Datagrams sealed.
    pub sealed_datagrams: u64,
    /// Bytes of the datagrams sealed.
    pub sealed_bytes: u64,
    /// Plaintexts refused by [`Sealer::seal`].
    pub seal_failures: u64,
    /// Datagrams opened and accepted.
    pub opened_datagrams: u64,
    /// Bytes of the datagrams opened and accepted.
    pub opened_bytes: u64,
    /// Datagrams dropped as [`OpenError::Malformed`].
    pub dropped_malformed: u64,
    /// Datagrams dropped as [`OpenError::Version`].
    pub dropped_version: u64,
    /// Datagrams dropped as [`OpenError::UnknownKey`].
    pub dropped_unknown_key: u64,
    /// Datagrams dropped as [`OpenError::Authentication`].
    pub dropped_authentication: u64,
    /// Datagrams dropped as [`OpenError::Replay`].
    pub dropped_replay: u64,
    /// Datagrams dropped as [`OpenError::Stale`].
    pub dropped_stale: u64,
    /// Bytes of all the datagrams dropped.
    pub dropped_bytes: u64,
    /// Sender nodes forgotten to stay within [`Sealer::max_senders`].
    pub sender_evictions: u64,
}

impl SealCounters {
    /// Datagrams dropped, all causes together.
    pub fn dropped(&self) -> u64 {
        [
            self.dropped_malformed,
            self.dropped_version,
            self.dropped_unknown_key,
            self.dropped_authentication,
            self.dropped_replay,
            self.dropped_stale,
        ]
        .iter()
        .fold(0, |sum, n| sum.saturating_add(*n))
    }

    fn record_drop(&mut self, error: &OpenError, len: usize) {
        let counter = match error {
            OpenError::Malformed { .. } => &mut self.dropped_malformed,
            OpenError::Version { .. } => &mut self.dropped_version,
            OpenError::UnknownKey { .. } => &mut self.dropped_unknown_key,
            OpenError::Authentication => &mut self.dropped_authentication,
            OpenError::Replay { .. } => &mut self.dropped_replay,
            OpenError::Stale { .. } => &mut self.dropped_stale,
        };
        bump(counter, 1);
        bump(&mut self.dropped_bytes, len);
    }
}

fn bump(counter: &mut u64, n: usize) {
    *counter = counter.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
}

/// One key a [`Sealer`] opens with.
struct KeySlot {
    id: KeyId,
    fingerprint: [u8; 32],
    aead: XChaCha20Poly1305,
}

impl KeySlot {
    fn new(key: &ClusterKey) -> Self {
        let fingerprint = key.fingerprint();
        KeySlot {
            id: KeyId([
                fingerprint[0],
                fingerprint[1],
                fingerprint[2],
                fingerprint[3],
            ]),
            fingerprint,
            aead: key.aead(),
        }
    }
}

/// The clear header of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    key: KeyId,
    sender: Pid,
    packet: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = MAGIC_VERSION;
        h[1..5].copy_from_slice(&self.key.0);
        h[5..9].copy_from_slice(&self.sender.node.to_be_bytes());
        h[9..17].copy_from_slice(&self.sender.incarnation.to_be_bytes());
        h[17..25].copy_from_slice(&self.packet.to_be_bytes());
        h
    }

    /// The header of `datagram`, checking its first byte and its length.
    fn decode(datagram: &[u8]) -> Result<Header, OpenError> {
        let malformed = |reason| OpenError::Malformed { reason };
        // The version is checked before the length: another version may
        // have another header.
        let first = *datagram.first().ok_or(malformed("empty"))?;
        if first & MAGIC_MASK != MAGIC_VERSION & MAGIC_MASK {
            return Err(malformed("not a Flotilla datagram"));
        }
        if first != MAGIC_VERSION {
            return Err(OpenError::Version {
                version: first & !MAGIC_MASK,
            });
        }
        if datagram.len() < OVERHEAD {
            return Err(malformed("shorter than header and tag"));
        }
        if datagram.len() > MAX_DATAGRAM_LEN {
            return Err(malformed("longer than the largest datagram"));
        }
        let h: &[u8; HEADER_LEN] = datagram
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(malformed("shorter than header and tag"))?;
        Ok(Header {
            key: KeyId([h[1], h[2], h[3], h[4]]),
            sender: Pid::new(
                u32::from_be_bytes([h[5], h[6], h[7], h[8]]),
                u64::from_be_bytes([h[9], h[10], h[11], h[12], h[13], h[14], h[15], h[16]]),
            ),
            packet: u64::from_be_bytes([h[17], h[18], h[19], h[20], h[21], h[22], h[23], h[24]]),
        })
    }
}

/// The XChaCha20-Poly1305 nonce of packet `packet` from `sender`: node (4
/// bytes), incarnation (8), four zero bytes, packet number (8). Injective,
/// so distinct (node, incarnation, packet) never share a nonce; see the
/// module documentation for why the node must be here and not only in the
/// associated data. The first 16 bytes, which HChaCha20 turns into the
/// subkey, are those that identify the sender incarnation.
fn nonce(sender: Pid, packet: u64) -> XNonce {
    let mut n = [0u8; 24];
    n[0..4].copy_from_slice(&sender.node.to_be_bytes());
    n[4..12].copy_from_slice(&sender.incarnation.to_be_bytes());
    n[16..24].copy_from_slice(&packet.to_be_bytes());
    XNonce::from(n)
}

/// Words of the replay bitmap: one more than the window needs, so that the
/// word being filled never evicts one still inside the window.
const WINDOW_WORDS: usize = REPLAY_WINDOW as usize / 64 + 1;

/// The packet numbers accepted from one sender incarnation, as a ring
/// bitmap behind the highest one (RFC 6479).
#[derive(Clone, Debug)]
struct ReplayWindow {
    /// The highest packet number accepted (0 before any).
    top: u64,
    /// Bit `p % 64` of word `(p / 64) % WINDOW_WORDS` is set once packet
    /// `p` is accepted, for `p` within the window.
    bits: [u64; WINDOW_WORDS],
}

impl ReplayWindow {
    fn new() -> Self {
        ReplayWindow {
            top: 0,
            bits: [0; WINDOW_WORDS],
        }
    }

    /// Whether `packet` would be accepted, without recording it.
    fn check(&self, packet: u64) -> bool {
        if packet > self.top {
            return true;
        }
        if self.top - packet >= REPLAY_WINDOW {
            return false;
        }
        let (word, bit) = Self::position(packet);
        self.bits[word] & bit == 0
    }

    /// Records `packet`, which [`ReplayWindow::check`] accepted.
    fn record(&mut self, packet: u64) {
        if packet > self.top {
            let current = self.top / 64;
            let advance = (packet / 64 - current).min(WINDOW_WORDS as u64);
            for i in 1..=advance {
                self.bits[((current + i) % WINDOW_WORDS as u64) as usize] = 0;
            }
            self.top = packet;
        }
        let (word, bit) = Self::position(packet);
        self.bits[word] |= bit;
    }

    fn position(packet: u64) -> (usize, u64) {
        (
            ((packet / 64) % WINDOW_WORDS as u64) as usize,
            1 << (packet % 64),
        )
    }
}

/// What a [`Sealer`] remembers of one sender node.
#[derive(Clone, Debug)]
struct SenderState {
    /// The newest incarnation accepted from the node.
    incarnation: u64,
    window: ReplayWindow,
    /// When the node was last accepted from, in [`Sealer::clock`] ticks.
    last_used: u64,
}

/// Seals the datagrams one process sends and opens those it receives.
///
/// Holds the current cluster key and, during a rotation, the staged next key
/// and the previous key (see the [module documentation](self) for the
/// procedure), the process's packet counter, a replay window per sender
/// node and the [`SealCounters`]. Deterministic apart from the keys: it
/// reads no clock and no randomness.
pub struct Sealer {
    me: Pid,
    /// The packet number of the next datagram sealed.
    next_packet: u64,
    current: KeySlot,
    staged: Option<KeySlot>,
    previous: Option<KeySlot>,
    senders: BTreeMap<NodeId, SenderState>,
    max_senders: usize,
    /// Counts accepted datagrams, to find the least recently used sender.
    clock: u64,
    counters: SealCounters,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("me", &self.me)
            .field("next_packet", &self.next_packet)
            .field("current", &self.current.id)
            .field("staged", &self.staged.as_ref().map(|s| s.id))
            .field("previous", &self.previous.as_ref().map(|s| s.id))
            .field("senders", &self.senders.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer for process `me`, sealing under `key`. `me` must never have
    /// sealed under this key before (see the module documentation on
    /// nonces): packet numbers start again from 0.
    pub fn new(key: &ClusterKey, me: Pid) -> Self {
        Sealer {
            me,
            next_packet: 0,
            current: KeySlot::new(key),
            staged: None,
            previous: None,
            senders: BTreeMap::new(),
            max_senders: DEFAULT_MAX_SENDERS,
            clock: 0,
            counters: SealCounters::default(),
        }
    }

    /// Keeps replay windows for at most `max_senders` sender nodes (at least
    /// one) instead of [`DEFAULT_MAX_SENDERS`].
    pub fn with_max_senders(mut self, max_senders: usize) -> Self {
        self.max_senders = max_senders.max(1);
        self
    }

    /// The process this sealer seals for.
    pub fn me(&self) -> Pid {
        self.me
    }

    /// The limit on sender nodes tracked for replay protection.
    pub fn max_senders(&self) -> usize {
        self.max_senders
    }

    /// The number of sender nodes tracked for replay protection.
    pub fn tracked_senders(&self) -> usize {
        self.senders.len()
    }

    /// The id of the key datagrams are sealed under.
    pub fn current_key(&self) -> KeyId {
        self.current.id
    }

    /// The id of the staged next key, if any.
    pub fn staged_key(&self) -> Option<KeyId> {
        self.staged.as_ref().map(|s| s.id)
    }

    /// The id of the previous key, still accepted until
    /// [`Sealer::retire_old`].
    pub fn previous_key(&self) -> Option<KeyId> {
        self.previous.as_ref().map(|s| s.id)
    }

    /// What this sealer has done so far.
    pub fn counters(&self) -> &SealCounters {
        &self.counters
    }

    /// Accepts datagrams sealed under `next` as well, still sealing under
    /// the current key: step 1 of a rotation. Replaces any key staged
    /// before.
    pub fn stage(&mut self, next: &ClusterKey) {
        self.staged = Some(KeySlot::new(next));
    }

    /// Seals under `new` from now on and keeps accepting the current key as
    /// the previous one until [`Sealer::retire_old`]: step 2 of a rotation.
    /// Unstages `new` if it was staged; forgets any older previous key.
    /// Rotating to the current key changes nothing.
    ///
    /// Packet numbers go on increasing, and replay windows are kept: they
    /// are per sender, whatever the key.
    pub fn rotate(&mut self, new: &ClusterKey) {
        let slot = KeySlot::new(new);
        if self
            .staged
            .as_ref()
            .is_some_and(|s| s.fingerprint == slot.fingerprint)
        {
            self.staged = None;
        }
        if slot.fingerprint != self.current.fingerprint {
            self.previous = Some(std::mem::replace(&mut self.current, slot));
        }
    }

    /// Stops accepting the previous key: step 3 of a rotation.
    pub fn retire_old(&mut self) {
        self.previous = None;
    }

    /// Seals `plaintext` into `out` (cleared first) as the next datagram of
    /// this process under the current key.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        out.clear();
        let result = self.seal_into(plaintext, out);
        match result {
            Ok(()) => {
                bump(&mut self.counters.sealed_datagrams, 1);
                bump(&mut self.counters.sealed_bytes, out.len());
            }
            Err(_) => {
                out.clear();
                bump(&mut self.counters.seal_failures, 1);
            }
        }
        result
    }

    fn seal_into(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(SealError::TooLarge {
                len: plaintext.len(),
                max: MAX_PLAINTEXT_LEN,
            });
        }
        let packet = self.next_packet;
        // The number is spent before anything can fail: a packet number is
        // never used twice, even for a datagram that was never sent.
        self.next_packet = packet
            .checked_add(1)
            .ok_or(SealError::PacketNumbersExhausted)?;
        let header = Header {
            key: self.current.id,
            sender: self.me,
            packet,
        };
        out.reserve(OVERHEAD + plaintext.len());
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(plaintext);
        let (aad, body) = out.split_at_mut(HEADER_LEN);
        let tag = self
            .current
            .aead
            .encrypt_in_place_detached(&nonce(self.me, packet), aad, body)
            .map_err(|_| SealError::Cipher)?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Opens `datagram` into `buf` (cleared first) and returns its
    /// authenticated sender and plaintext, or why it was dropped; the checks
    /// come in the order of [`OpenError`]'s variants. On error `buf` is left
    /// empty, and no state but the counters changes.
    pub fn open<'a>(
        &mut self,
        datagram: &[u8],
        buf: &'a mut Vec<u8>,
    ) -> Result<Opened<'a>, OpenError> {
        buf.clear();
        match self.open_into(datagram, buf) {
            Ok(sender) => {
                bump(&mut self.counters.opened_datagrams, 1);
                bump(&mut self.counters.opened_bytes, datagram.len());
                Ok(Opened {
                    sender,
                    plaintext: buf.as_slice(),
                })
            }
            Err(error) => {
                buf.clear();
                self.counters.record_drop(&error, datagram.len());
                Err(error)
            }
        }
    }

    fn open_into(&mut self, datagram: &[u8], buf: &mut Vec<u8>) -> Result<Pid, OpenError> {
        let header = Header::decode(datagram)?;
        let (aad, body) = datagram.split_at(HEADER_LEN);
        let (ciphertext, tag) = body.split_at(body.len() - TAG_LEN);
        let tag = Tag::from(
            <[u8; TAG_LEN]>::try_from(tag).map_err(|_| OpenError::Malformed {
                reason: "shorter than header and tag",
            })?,
        );
        let nonce = nonce(header.sender, header.packet);
        let mut known = false;
        let mut authentic = false;
        // Ids are 32 bits, so two keys held at once may share one: try each
        // key with the datagram's id.
        for slot in [
            Some(&self.current),
            self.staged.as_ref(),
            self.previous.as_ref(),
        ]
        .into_iter()
        .flatten()
        .filter(|slot| slot.id == header.key)
        {
            known = true;
            buf.clear();
            buf.extend_from_slice(ciphertext);
            if slot
                .aead
                .decrypt_in_place_detached(&nonce, aad, buf, &tag)
                .is_ok()
            {
                authentic = true;
                break;
            }
        }
        if !known {
            return Err(OpenError::UnknownKey { key: header.key });
        }
        if !authentic {
            return Err(OpenError::Authentication);
        }
        self.accept(header.sender, header.packet)?;
        Ok(header.sender)
    }

    /// Checks an authenticated packet against its sender's replay window and
    /// records it, or refuses it without changing anything.
    fn accept(&mut self, sender: Pid, packet: u64) -> Result<(), OpenError> {
        if let Some(state) = self.senders.get(&sender.node) {
            if sender.incarnation < state.incarnation {
                return Err(OpenError::Stale {
                    sender,
                    newest: state.incarnation,
                });
            }
            if sender.incarnation == state.incarnation && !state.window.check(packet) {
                return Err(OpenError::Replay { sender, packet });
            }
        } else if self.senders.len() >= self.max_senders {
            let least_recent = self
                .senders
                .iter()
                .min_by_key(|(_, state)| state.last_used)
                .map(|(node, _)| *node);
            if let Some(node) = least_recent {
                self.senders.remove(&node);
                bump(&mut self.counters.sender_evictions, 1);
            }
        }
        self.clock = self.clock.saturating_add(1);
        let state = self
            .senders
            .entry(sender.node)
            .or_insert_with(|| SenderState {
                incarnation: sender.incarnation,
                window: ReplayWindow::new(),
                last_used: 0,
            });
        if sender.incarnation > state.incarnation {
            state.incarnation = sender.incarnation;
            state.window = ReplayWindow::new();
        }
        state.window.record(packet);
        state.last_used = self.clock;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
