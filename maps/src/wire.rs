//! The messages maps servers multicast to each other in their gc-core
//! group: a version byte, then a postcard [`Msg`]. Decoding is bounded and
//! never panics: a message that is too long, of another version, or whose
//! counts break the bounds is refused with a [`WireError`] (the server
//! counts and drops it).

use crate::api::{Request, RequestError, Response};
use crate::bounds::{MAX_ENTRIES, MAX_MAP_NAMES};
use crate::primary::Refusal;
use crate::table::Entry;
use crate::update::{Ordered, Outcome, Update, UpdateId};
use crate::vote::Votes;
use gc_core::{Pid, ViewId};
use serde::{Deserialize, Serialize};

/// The version byte of every maps message.
pub const MAPS_WIRE_VERSION: u8 = 1;
/// Largest message accepted (gc-core's default message limit).
pub const MAX_MSG: usize = 16 << 20;
/// Most updates in one catch-up message.
pub const MAX_CATCHUP_UPDATES: usize = 100_000;

/// One map's position, as a member states it in the state exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The map.
    pub map: String,
    /// Version applied.
    pub version: u64,
    /// Chain digest at that version.
    pub chain: u64,
    /// Highest version held: applied, or received in a transitional
    /// configuration and held (not applied) since.
    pub top_version: u64,
    /// Chain digest at `top_version`.
    pub top_chain: u64,
    /// Epoch of the update at `top_version`.
    pub top_epoch: u64,
}

impl Head {
    /// The head's epoch, then version. The exchange does not rank by this
    /// alone: it ranks by the stating member's ballot
    /// ([`crate::vote::Votes::ballot`]) first, then the version.
    pub fn rank(&self) -> (u64, u64) {
        (self.top_epoch, self.top_version)
    }
}

/// What a member states when a primary view is installed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The view it is stated for. gc-core sends a message in the view that
    /// is current when its turn in the send queue comes, which may be a
    /// later view than the one the server asked in; a state for another
    /// view is ignored.
    pub view: ViewId,
    /// Its tenure in the primary component ([`crate::Tenure`]).
    pub since: u64,
    /// Every map it knows.
    pub heads: Vec<Head>,
    /// Its record of maps primary sessions ([`crate::vote`]), from which
    /// every member decides alike whether the view may be a session.
    pub votes: Votes,
}

/// A consistent read, answered by the primary server in total order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadReq {
    /// The server the client is connected to.
    pub origin: Pid,
    /// Its token for the read.
    pub token: u64,
    /// The read ([`Request::Get`] or [`Request::List`]).
    pub request: Request,
}

/// A part of a map snapshot sent in catch-up, for a map whose log no longer
/// reaches back to a member's version (or whose history diverged).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPart {
    /// The map.
    pub map: String,
    /// Its version.
    pub version: u64,
    /// Its chain digest.
    pub chain: u64,
    /// The epoch of the update at `version`.
    pub epoch: u64,
    /// Whether the map exists.
    pub live: bool,
    /// Number of this part, from 0.
    pub part: u32,
    /// Entries of this part, in key order, following the previous part's.
    pub entries: Vec<(String, Entry)>,
    /// In the last part only: the recent update ids and outcomes.
    pub recent: Option<Vec<(UpdateId, Outcome)>>,
}

/// A message between maps servers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// The state exchange of a primary view (safe delivery).
    State(State),
    /// An update ordered by the primary server (safe delivery).
    Ordered(Ordered),
    /// A client's update, forwarded to the primary server (agreed).
    Forward {
        /// The server the client is connected to.
        origin: Pid,
        /// The update.
        update: Update,
    },
    /// The primary server refused a forwarded update (agreed).
    Refused {
        /// The server the client is connected to.
        origin: Pid,
        /// The update.
        id: UpdateId,
        /// Why.
        refusal: Refusal,
    },
    /// The primary server found a forwarded update already applied (agreed).
    Done {
        /// The server the client is connected to.
        origin: Pid,
        /// The update.
        id: UpdateId,
        /// The map.
        map: String,
        /// Its first outcome.
        outcome: Outcome,
    },
    /// A suffix of a map's history, for members behind (agreed).
    CatchUp {
        /// The updates, in version order.
        updates: Vec<Ordered>,
    },
    /// A map snapshot, in parts (agreed).
    Snapshot(SnapshotPart),
    /// A member lacks versions of a map after `have` (agreed).
    Want {
        /// The map.
        map: String,
        /// Its version.
        have: u64,
        /// Its chain digest.
        chain: u64,
    },
    /// A consistent read (agreed).
    Read(ReadReq),
    /// The primary server's answer to a consistent read (agreed).
    ReadReply {
        /// The server the client is connected to.
        origin: Pid,
        /// Its token.
        token: u64,
        /// The answer.
        result: Result<Response, RequestError>,
    },
    /// The sender holds, on disk, the history the state exchange of `view`
    /// chose for every map, and recorded the session as attempted (agreed).
    /// When every member's is delivered, the session is complete.
    Caught {
        /// The view.
        view: ViewId,
    },
    /// Updates of the chosen history that its holder has kept and not yet
    /// applied, for members to keep likewise (agreed).
    Accept {
        /// The updates, in version order.
        updates: Vec<Ordered>,
    },
    /// The sender has synced these map versions to disk in `view` (agreed).
    /// An outcome is reported to a client only once a majority of the
    /// session's hosts hold it.
    Durable {
        /// The view.
        view: ViewId,
        /// Map and version synced.
        heads: Vec<(String, u64)>,
    },
}

/// A maps message could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The message is empty.
    #[error("empty maps message")]
    Empty,
    /// Another version of the maps protocol.
    #[error("maps message of version {0}, expected {MAPS_WIRE_VERSION}")]
    Version(u8),
    /// Longer than [`MAX_MSG`].
    #[error("maps message of {0} bytes, over the limit of {MAX_MSG}")]
    TooLong(usize),
    /// Not a valid message.
    #[error("undecodable maps message: {0}")]
    Decode(String),
    /// A count breaks its bound.
    #[error("maps message with {what}: over its bound")]
    Bound {
        /// What.
        what: &'static str,
    },
}

impl Msg {
    /// The bytes to multicast.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![MAPS_WIRE_VERSION];
        // Encoding into a Vec only fails for types serde cannot represent,
        // which these are not; an empty body would be refused on decode.
        if let Ok(body) = postcard::to_stdvec(self) {
            out.extend(body);
        }
        out
    }

    /// Decodes and checks a message.
    pub fn decode(bytes: &[u8]) -> Result<Msg, WireError> {
        let (&version, body) = bytes.split_first().ok_or(WireError::Empty)?;
        if version != MAPS_WIRE_VERSION {
            return Err(WireError::Version(version));
        }
        if bytes.len() > MAX_MSG {
            return Err(WireError::TooLong(bytes.len()));
        }
        let msg: Msg = postcard::from_bytes(body).map_err(|e| WireError::Decode(e.to_string()))?;
        let bound = |ok: bool, what| {
            if ok {
                Ok(())
            } else {
                Err(WireError::Bound { what })
            }
        };
        match &msg {
            Msg::State(s) => {
                bound(s.heads.len() <= MAX_MAP_NAMES, "too many heads")?;
                bound(s.votes.within_bounds(), "too many sessions")?
            }
            Msg::Durable { heads, .. } => bound(heads.len() <= MAX_MAP_NAMES, "too many heads")?,
            Msg::CatchUp { updates } | Msg::Accept { updates } => {
                bound(updates.len() <= MAX_CATCHUP_UPDATES, "too many updates")?
            }
            Msg::Snapshot(p) => bound(p.entries.len() <= MAX_ENTRIES, "too many entries")?,
            _ => {}
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let m = Msg::Want {
            map: "hosts".into(),
            have: 3,
            chain: 9,
        };
        assert_eq!(Msg::decode(&m.encode()), Ok(m));
        assert_eq!(Msg::decode(&[]), Err(WireError::Empty));
        assert_eq!(Msg::decode(&[9, 0]), Err(WireError::Version(9)));
        assert!(matches!(
            Msg::decode(&[1, 200, 200, 200]),
            Err(WireError::Decode(_))
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 0x1234_5678;
        for len in 0..2000 {
            let mut b = vec![MAPS_WIRE_VERSION];
            for _ in 0..(len % 97) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.push(x as u8);
            }
            let _ = Msg::decode(&b);
        }
    }
}
