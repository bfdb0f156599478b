//! Authentication over TCP: both sides prove they hold the cluster key, then
//! every frame is sealed.
//!
//! # The handshake
//!
//! All four messages are plain frames ([`crate::frame`]) carrying a
//! [`Handshake`]:
//!
//! ```text
//! client → server   Hello { nonce: Nc }                   32 random bytes
//! server → client   Challenge { nonce: Ns }               32 random bytes
//! client → server   ClientProof { HMAC(A, "client proof" | Nc | Ns) }
//! server → client   ServerProof { HMAC(A, "server proof" | Nc | Ns) }   or Refused
//! ```
//!
//! with `A = HMAC-SHA256(cluster key, "flotilla client auth v1")`. The
//! server checks the client's proof first (in constant time) and refuses a
//! client without the key with [`Handshake::Refused`]; the client then
//! checks the server's, so a monitor never sends a request to a server that
//! does not hold the key either. Both nonces enter both proofs, so neither
//! side can replay a proof from another session, and the two labels keep a
//! proof of one side from serving as the other's.
//!
//! # The session
//!
//! The rest of the connection is sealed with XChaCha20-Poly1305 under one
//! key per direction:
//!
//! ```text
//! client → server key = HMAC-SHA256(cluster key, "flotilla client c2s v1" | Nc | Ns)
//! server → client key = HMAC-SHA256(cluster key, "flotilla client s2c v1" | Nc | Ns)
//! ```
//!
//! The nonce of a frame is the count of frames sent before it in that
//! direction (little-endian, in the first 8 of its 24 bytes). A frame that
//! is altered, dropped, reordered or replayed fails to open, and the
//! connection ends. Fresh nonces from both sides make every session's keys
//! new, so counters never repeat under one key.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::frame::{FrameError, PROTOCOL_VERSION, TAG_LEN};
use crate::key::ClusterKey;
use crate::message::ErrorKind;

/// The length of a handshake nonce.
pub const NONCE_LEN: usize = 32;
/// The length of a proof.
pub const PROOF_LEN: usize = 32;

const AUTH_LABEL: &[u8] = b"flotilla client auth v1";
const CLIENT_PROOF_LABEL: &[u8] = b"client proof";
const SERVER_PROOF_LABEL: &[u8] = b"server proof";
const C2S_LABEL: &[u8] = b"flotilla client c2s v1";
const S2C_LABEL: &[u8] = b"flotilla client s2c v1";

/// The messages of the TCP handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Handshake {
    /// The client's nonce.
    Hello {
        /// 32 random bytes.
        nonce: [u8; NONCE_LEN],
    },
    /// The server's nonce.
    Challenge {
        /// 32 random bytes.
        nonce: [u8; NONCE_LEN],
    },
    /// The client's proof that it holds the key.
    ClientProof {
        /// `HMAC(A, "client proof" | Nc | Ns)`.
        mac: [u8; PROOF_LEN],
    },
    /// The server's proof that it holds the key.
    ServerProof {
        /// `HMAC(A, "server proof" | Nc | Ns)`.
        mac: [u8; PROOF_LEN],
    },
    /// The server refuses the client.
    Refused {
        /// Why, as a kind.
        kind: ErrorKind,
        /// Why, for people.
        message: String,
    },
}

/// Which side of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The monitor.
    Client,
    /// The server.
    Server,
}

/// 32 fresh random bytes.
pub fn nonce() -> Result<[u8; NONCE_LEN], getrandom::Error> {
    let mut nonce = [0; NONCE_LEN];
    getrandom::fill(&mut nonce)?;
    Ok(nonce)
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable_hmac(),
    };
    for part in parts {
        mac.update(part);
    }
    mac
}

#[cold]
fn unreachable_hmac() -> ! {
    // `InvalidLength` is only returned by MACs with a fixed key size.
    panic!("HMAC-SHA256 refused a key")
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(mac(key, parts).finalize().into_bytes().into())
}

fn auth_key(key: &ClusterKey) -> Zeroizing<[u8; 32]> {
    hmac(key.as_bytes(), &[AUTH_LABEL])
}

/// The proof `side` sends in the session of nonces `client` and `server`.
pub fn proof(
    key: &ClusterKey,
    side: Side,
    client: &[u8; NONCE_LEN],
    server: &[u8; NONCE_LEN],
) -> [u8; PROOF_LEN] {
    let label = match side {
        Side::Client => CLIENT_PROOF_LABEL,
        Side::Server => SERVER_PROOF_LABEL,
    };
    *hmac(auth_key(key).as_ref(), &[label, client, server])
}

/// Whether `mac` is the proof `side` should send, compared in constant
/// time.
pub fn verify_proof(
    key: &ClusterKey,
    side: Side,
    client: &[u8; NONCE_LEN],
    server: &[u8; NONCE_LEN],
    mac_bytes: &[u8; PROOF_LEN],
) -> bool {
    let label = match side {
        Side::Client => CLIENT_PROOF_LABEL,
        Side::Server => SERVER_PROOF_LABEL,
    };
    mac(auth_key(key).as_ref(), &[label, client, server])
        .verify_slice(mac_bytes)
        .is_ok()
}

/// One direction of a sealed session.
struct Direction {
    aead: XChaCha20Poly1305,
    counter: u64,
}

impl Direction {
    fn new(key: &[u8; 32]) -> Direction {
        Direction {
            aead: XChaCha20Poly1305::new(Key::from_slice(key)),
            counter: 0,
        }
    }

    fn next_nonce(&mut self) -> Result<XNonce, FrameError> {
        let mut nonce = [0; 24];
        nonce[..8].copy_from_slice(&self.counter.to_le_bytes());
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or(FrameError::CounterExhausted)?;
        Ok(XNonce::from(nonce))
    }
}

/// The sealing state of an authenticated session: one key and counter per
/// direction. See the [module documentation](self).
pub struct Session {
    send: Direction,
    recv: Direction,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("sent", &self.send.counter)
            .field("received", &self.recv.counter)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The session of `side` for the nonces `client` and `server`.
    pub fn new(
        key: &ClusterKey,
        side: Side,
        client: &[u8; NONCE_LEN],
        server: &[u8; NONCE_LEN],
    ) -> Session {
        let c2s = hmac(key.as_bytes(), &[C2S_LABEL, client, server]);
        let s2c = hmac(key.as_bytes(), &[S2C_LABEL, client, server]);
        let (send, recv) = match side {
            Side::Client => (c2s, s2c),
            Side::Server => (s2c, c2s),
        };
        Session {
            send: Direction::new(&send),
            recv: Direction::new(&recv),
        }
    }

    /// Seals a frame body in place: encrypts it and appends the tag.
    pub fn seal(&mut self, body: &mut Vec<u8>) -> Result<(), FrameError> {
        self.seal_from(body, 0)
    }

    /// Seals the frame body that starts at `start` in `buf` in place and
    /// appends its tag, so that a frame's length prefix can sit before it
    /// in the same buffer. A `start` past the end seals an empty body.
    pub fn seal_from(&mut self, buf: &mut Vec<u8>, start: usize) -> Result<(), FrameError> {
        let nonce = self.send.next_nonce()?;
        let start = start.min(buf.len());
        let tag = self
            .send
            .aead
            .encrypt_in_place_detached(&nonce, &[PROTOCOL_VERSION], &mut buf[start..])
            .map_err(|_| FrameError::Encode("the frame is too large to seal".into()))?;
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Opens a sealed frame body in place: checks and removes the tag and
    /// decrypts it.
    pub fn open(&mut self, body: &mut Vec<u8>) -> Result<(), FrameError> {
        let Some(at) = body.len().checked_sub(TAG_LEN) else {
            return Err(FrameError::Unauthentic);
        };
        let tag = Tag::clone_from_slice(&body[at..]);
        body.truncate(at);
        let nonce = self.recv.next_nonce()?;
        self.recv
            .aead
            .decrypt_in_place_detached(&nonce, &[PROTOCOL_VERSION], body, &tag)
            .map_err(|_| FrameError::Unauthentic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> ClusterKey {
        ClusterKey::from_bytes([byte; 32])
    }

    #[test]
    fn proofs_verify_only_with_the_same_key_side_and_nonces() {
        let (nc, ns) = ([1; 32], [2; 32]);
        let client = proof(&key(7), Side::Client, &nc, &ns);
        assert!(verify_proof(&key(7), Side::Client, &nc, &ns, &client));
        assert!(!verify_proof(&key(8), Side::Client, &nc, &ns, &client));
        assert!(!verify_proof(&key(7), Side::Server, &nc, &ns, &client));
        assert!(!verify_proof(&key(7), Side::Client, &ns, &nc, &client));
        assert!(!verify_proof(&key(7), Side::Client, &nc, &[3; 32], &client));
    }

    #[test]
    fn sealed_frames_open_once_in_order() -> Result<(), FrameError> {
        let (nc, ns) = ([1; 32], [2; 32]);
        let mut client = Session::new(&key(7), Side::Client, &nc, &ns);
        let mut server = Session::new(&key(7), Side::Server, &nc, &ns);
        let mut first = b"hello".to_vec();
        client.seal(&mut first)?;
        assert_eq!(first.len(), 5 + TAG_LEN);
        let mut second = b"again".to_vec();
        client.seal(&mut second)?;
        // Out of order: the second frame does not open as the first.
        let mut swapped = second.clone();
        let mut fresh = Session::new(&key(7), Side::Server, &nc, &ns);
        assert!(matches!(
            fresh.open(&mut swapped),
            Err(FrameError::Unauthentic)
        ));
        server.open(&mut first)?;
        assert_eq!(first, b"hello");
        server.open(&mut second)?;
        assert_eq!(second, b"again");
        // The server's direction has its own key: the client's frames do
        // not open as the server's.
        let mut reply = b"reply".to_vec();
        client.seal(&mut reply)?;
        let mut other = Session::new(&key(7), Side::Client, &nc, &ns);
        assert!(other.open(&mut reply).is_err());
        // Altered and short bodies fail.
        let mut altered = b"data".to_vec();
        server.seal(&mut altered)?;
        altered[0] ^= 1;
        assert!(client.open(&mut altered).is_err());
        assert!(client.open(&mut vec![1, 2, 3]).is_err());
        Ok(())
    }
}
