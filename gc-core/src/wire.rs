//! The protocol's datagram format.
//!
//! A datagram is one version byte followed by a postcard-encoded [`Packet`]:
//! the sending process and a batch of frames. Postcard encodes a `Vec` as a
//! varint count followed by its elements, so a frame that goes to many peers
//! is encoded once and its bytes are spliced into each peer's datagram (see
//! [`DatagramBuilder`]).
//!
//! Decoding is bounded: postcard never allocates more than the input can
//! describe, and [`decode`] then checks every count against the limits below,
//! so a hostile datagram is refused with a [`DecodeError`], never a panic.

use crate::primary::PrimaryRecord;
use crate::types::{Level, NodeId, Pid, ViewId};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// The wire version this build speaks. Every datagram starts with it.
pub const WIRE_VERSION: u8 = 4;
/// Most members a view may have.
pub const MAX_MEMBERS: usize = 256;
/// Longest group name, in bytes.
pub const MAX_GROUP_NAME: usize = 64;
/// Most groups one process may belong to.
pub const MAX_GROUPS_PER_NODE: usize = 64;
/// Most frames in one datagram.
pub const MAX_FRAMES: usize = 1024;
/// Most frames one retransmission request may ask for.
pub const MAX_NACK_SPAN: u64 = 256;
/// Most ambiguous primary attempts carried in a join or install.
pub const MAX_AMBIGUOUS: usize = 64;
/// Largest datagram the decoder accepts (the UDP limit).
pub const MAX_DATAGRAM: usize = 65_507;

/// Why a datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The datagram was empty.
    #[error("empty datagram")]
    Empty,
    /// The peer speaks another wire version.
    #[error("wire version {found}, this node speaks {WIRE_VERSION}")]
    Version {
        /// The version byte found.
        found: u8,
    },
    /// The bytes do not form a packet.
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// A count or length exceeds the protocol's limits.
    #[error("limit exceeded: {0}")]
    Limit(&'static str),
}

/// A decoded datagram.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Packet {
    pub(crate) from: Pid,
    pub(crate) frames: Vec<Frame>,
}

/// What a message frame carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum DataKind {
    /// An application message for a named group.
    App(String),
    /// The sender joins a group (agreed order).
    GroupJoin(String),
    /// The sender leaves a group (agreed order).
    GroupLeave(String),
}

impl DataKind {
    pub(crate) fn group(&self) -> &str {
        match self {
            DataKind::App(g) | DataKind::GroupJoin(g) | DataKind::GroupLeave(g) => g,
        }
    }

    /// The name recorded in traces: the protocol's own messages are "".
    pub(crate) fn trace_group(&self) -> &str {
        match self {
            DataKind::App(g) => g,
            _ => "",
        }
    }
}

/// One frame of a sender's stream in one view. A message is one frame, or
/// several consecutive frames (fragments) that share its timestamp.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DataFrame {
    pub(crate) view: ViewId,
    pub(crate) sender: Pid,
    pub(crate) seq: u64,
    /// Lamport time of the message: its place in the agreed order is
    /// `(ts, sender)`, carried by every copy.
    pub(crate) ts: u64,
    pub(crate) level: Level,
    /// Fragment index and count; `(0, 1)` for a whole message.
    pub(crate) frag: (u32, u32),
    /// Only on the first fragment.
    pub(crate) kind: Option<DataKind>,
    /// Causal dependencies, for causal messages only, on the first fragment:
    /// per member of the view (in view order), the sequence number of the
    /// last causal-class message of that member the sender had delivered
    /// (its own last one for itself).
    pub(crate) deps: Vec<u64>,
    #[serde(with = "serde_bytes")]
    pub(crate) payload: Vec<u8>,
}

/// Acknowledgement and heartbeat: what the sender has received of each
/// member's stream, how far it has sent its own, and a promise that its later
/// messages will have timestamps above `clock`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AckFrame {
    pub(crate) view: ViewId,
    pub(crate) clock: u64,
    pub(crate) sent: u64,
    /// Per member in view order: all frames up to this one are received.
    pub(crate) contig: Vec<u64>,
}

/// The hub's digest of the members' acknowledgements (see PROTOCOL.md,
/// "Acknowledgement hub"): in large views a member sends its urgent acks to
/// the hub only, and the hub relays what they promise to everyone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SummaryFrame {
    pub(crate) view: ViewId,
    /// Per member in view order: its latest `(sent, clock)` promise the hub
    /// holds.
    pub(crate) promises: Vec<(u64, u64)>,
    /// Per member in view order: every member has its frames up to this one.
    pub(crate) stable: Vec<u64>,
    /// Per member in view order: how long ago, in microseconds, the hub
    /// last heard from it (PROTOCOL.md, "Failure detection"). Periodic
    /// heartbeats go to the hub alone, so this is how the other members
    /// know who is alive. An age rather than a time: the clocks of the
    /// members are not the same.
    pub(crate) heard: Vec<u64>,
}

/// A request to retransmit frames `from..=to` of `sender`'s stream in `view`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NackFrame {
    pub(crate) view: ViewId,
    pub(crate) sender: Pid,
    pub(crate) from: u64,
    pub(crate) to: u64,
}

/// Discovery beacon sent to seeds and to known processes outside the view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HelloFrame {
    pub(crate) view: ViewId,
    pub(crate) members: u32,
}

/// What a process brings into a view change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JoinState {
    /// Its current regular view and that view's members.
    pub(crate) view: ViewId,
    pub(crate) view_members: Vec<Pid>,
    /// Per member of `view`: all frames up to this one are received.
    pub(crate) contig: Vec<u64>,
    /// The largest view counter it has seen.
    pub(crate) max_counter: u64,
    pub(crate) last_primary: PrimaryRecord,
    pub(crate) ambiguous: Vec<PrimaryRecord>,
    /// The groups it wants to belong to.
    pub(crate) groups: Vec<String>,
}

/// Membership agreement (Totem-style): the sender's candidate and failed
/// sets. Consensus is reached when every candidate that has not failed has
/// sent the same two sets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JoinFrame {
    pub(crate) attempt: u64,
    pub(crate) proc_set: Vec<Pid>,
    pub(crate) fail_set: Vec<Pid>,
    pub(crate) addrs: Vec<(Pid, SocketAddr)>,
    pub(crate) state: JoinState,
}

/// How the members coming from one old view finish it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OldView {
    pub(crate) view: ViewId,
    pub(crate) view_members: Vec<Pid>,
    /// The new view's members coming from this old view: the transitional
    /// configuration.
    pub(crate) movers: Vec<Pid>,
    /// Per member of the old view: deliver its frames up to this one.
    pub(crate) targets: Vec<u64>,
    /// Per member of the old view: a mover holding frames up to the target.
    pub(crate) holders: Vec<Pid>,
}

/// The new view, decided by the representative (the smallest member).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InstallFrame {
    pub(crate) view: ViewId,
    pub(crate) members: Vec<Pid>,
    /// Per member: the attempt number of the join the decision used.
    pub(crate) attempts: Vec<u64>,
    pub(crate) addrs: Vec<(Pid, SocketAddr)>,
    pub(crate) old_views: Vec<OldView>,
    /// Per member: the groups it belongs to in the new view.
    pub(crate) groups: Vec<Vec<String>>,
    pub(crate) known_primary: PrimaryRecord,
    pub(crate) ambiguous: Vec<PrimaryRecord>,
    /// Present when this view tries to become the primary component.
    pub(crate) primary_attempt: Option<PrimaryRecord>,
}

impl InstallFrame {
    pub(crate) fn old_view_of(&self, pid: Pid) -> Option<&OldView> {
        self.old_views.iter().find(|o| o.movers.contains(&pid))
    }

    pub(crate) fn index_of(&self, pid: Pid) -> Option<usize> {
        self.members.iter().position(|m| *m == pid)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Frame {
    Data(DataFrame),
    Ack(AckFrame),
    Nack(NackFrame),
    Hello(HelloFrame),
    Join(Box<JoinFrame>),
    Install(Box<InstallFrame>),
    /// A member recorded the install's primary attempt and holds every
    /// message it must deliver.
    InstallAck {
        view: ViewId,
    },
    /// The representative saw every member's InstallAck: the view is primary.
    Commit {
        view: ViewId,
    },
    /// The sender leaves the cluster.
    Leave {
        view: ViewId,
    },
    Summary(SummaryFrame),
    /// A member's own data frame sent to the hub alone, for the hub to pass
    /// on to every other member as [`Frame::Data`] (PROTOCOL.md, "Data
    /// relay"). Anyone else takes it as plain data.
    Relay(DataFrame),
}

fn check_pids(v: &[Pid], what: &'static str) -> Result<(), DecodeError> {
    if v.len() > MAX_MEMBERS {
        return Err(DecodeError::Limit(what));
    }
    Ok(())
}

fn check_groups(v: &[String]) -> Result<(), DecodeError> {
    if v.len() > MAX_GROUPS_PER_NODE {
        return Err(DecodeError::Limit("groups per node"));
    }
    for g in v {
        check_group(g)?;
    }
    Ok(())
}

pub(crate) fn check_group(g: &str) -> Result<(), DecodeError> {
    if g.len() > MAX_GROUP_NAME {
        return Err(DecodeError::Limit("group name"));
    }
    Ok(())
}

fn check_record(r: &PrimaryRecord) -> Result<(), DecodeError> {
    if r.nodes.len() > MAX_MEMBERS {
        return Err(DecodeError::Limit("primary nodes"));
    }
    Ok(())
}

fn check_records(v: &[PrimaryRecord]) -> Result<(), DecodeError> {
    if v.len() > MAX_AMBIGUOUS {
        return Err(DecodeError::Limit("ambiguous attempts"));
    }
    v.iter().try_for_each(check_record)
}

impl Frame {
    /// Checks every count against the protocol's limits.
    fn validate(&self) -> Result<(), DecodeError> {
        match self {
            Frame::Data(d) | Frame::Relay(d) => {
                if d.deps.len() > MAX_MEMBERS {
                    return Err(DecodeError::Limit("causal dependencies"));
                }
                if d.frag.1 == 0 || d.frag.0 >= d.frag.1 {
                    return Err(DecodeError::Limit("fragment index"));
                }
                if d.seq == 0 || d.seq < u64::from(d.frag.0) + 1 {
                    return Err(DecodeError::Limit("sequence number"));
                }
                if let Some(kind) = &d.kind {
                    check_group(kind.group())?;
                }
                if (d.frag.0 == 0) != d.kind.is_some() {
                    return Err(DecodeError::Limit("first fragment carries the kind"));
                }
                Ok(())
            }
            Frame::Ack(a) => {
                if a.contig.len() > MAX_MEMBERS {
                    return Err(DecodeError::Limit("ack vector"));
                }
                Ok(())
            }
            Frame::Summary(m) => {
                if m.promises.len() > MAX_MEMBERS
                    || m.stable.len() > MAX_MEMBERS
                    || m.heard.len() > MAX_MEMBERS
                {
                    return Err(DecodeError::Limit("summary vectors"));
                }
                Ok(())
            }
            Frame::Nack(n) => {
                if n.from == 0 || n.to < n.from || n.to - n.from >= MAX_NACK_SPAN {
                    return Err(DecodeError::Limit("retransmission span"));
                }
                Ok(())
            }
            Frame::Hello(_) | Frame::InstallAck { .. } | Frame::Commit { .. } => Ok(()),
            Frame::Leave { .. } => Ok(()),
            Frame::Join(j) => {
                check_pids(&j.proc_set, "join candidates")?;
                check_pids(&j.fail_set, "join failed set")?;
                if j.addrs.len() > 2 * MAX_MEMBERS {
                    return Err(DecodeError::Limit("join addresses"));
                }
                check_pids(&j.state.view_members, "join view")?;
                if j.state.contig.len() != j.state.view_members.len() {
                    return Err(DecodeError::Limit("join vector"));
                }
                check_record(&j.state.last_primary)?;
                check_records(&j.state.ambiguous)?;
                check_groups(&j.state.groups)
            }
            Frame::Install(i) => {
                check_pids(&i.members, "install members")?;
                if i.attempts.len() != i.members.len() || i.groups.len() != i.members.len() {
                    return Err(DecodeError::Limit("install vectors"));
                }
                if i.addrs.len() > MAX_MEMBERS || i.old_views.len() > MAX_MEMBERS {
                    return Err(DecodeError::Limit("install lists"));
                }
                for o in &i.old_views {
                    check_pids(&o.view_members, "old view")?;
                    check_pids(&o.movers, "old view movers")?;
                    if o.targets.len() != o.view_members.len()
                        || o.holders.len() != o.view_members.len()
                    {
                        return Err(DecodeError::Limit("old view vectors"));
                    }
                }
                for g in &i.groups {
                    check_groups(g)?;
                }
                check_record(&i.known_primary)?;
                check_records(&i.ambiguous)?;
                if let Some(a) = &i.primary_attempt {
                    check_record(a)?;
                }
                Ok(())
            }
        }
    }
}

/// Decodes and validates a datagram.
pub(crate) fn decode(bytes: &[u8]) -> Result<Packet, DecodeError> {
    let (&version, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != WIRE_VERSION {
        return Err(DecodeError::Version { found: version });
    }
    if bytes.len() > MAX_DATAGRAM {
        return Err(DecodeError::Limit("datagram size"));
    }
    let packet: Packet =
        postcard::from_bytes(rest).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if packet.frames.len() > MAX_FRAMES {
        return Err(DecodeError::Limit("frames per datagram"));
    }
    for f in &packet.frames {
        f.validate()?;
    }
    Ok(packet)
}

/// The sender named in a datagram's header, without decoding the rest.
pub(crate) fn peek_sender(bytes: &[u8]) -> Option<Pid> {
    let (&version, rest) = bytes.split_first()?;
    if version != WIRE_VERSION {
        return None;
    }
    postcard::take_from_bytes::<Pid>(rest).ok().map(|(p, _)| p)
}

/// Encodes one frame on its own, for splicing into datagrams.
pub(crate) fn encode_frame(frame: &Frame) -> Vec<u8> {
    // Encoding into a Vec cannot fail for these types: every field is a
    // plain integer, string, byte string or sequence of those.
    postcard::to_allocvec(frame).unwrap_or_default()
}

/// Assembles datagrams for one destination from pre-encoded frames.
pub(crate) struct DatagramBuilder {
    header: Vec<u8>,
    frames: Vec<u8>,
    count: usize,
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

impl DatagramBuilder {
    pub(crate) fn new(from: Pid) -> Self {
        let mut header = vec![WIRE_VERSION];
        header.extend(postcard::to_allocvec(&from).unwrap_or_default());
        DatagramBuilder {
            header,
            frames: Vec::new(),
            count: 0,
        }
    }

    /// Bytes the datagram would have with `extra` more frame bytes.
    pub(crate) fn len_with(&self, extra: usize) -> usize {
        self.header.len() + 3 + self.frames.len() + extra
    }

    pub(crate) fn push(&mut self, frame: &[u8]) {
        self.frames.extend_from_slice(frame);
        self.count += 1;
    }

    /// The finished datagram; the builder is empty afterwards.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len_with(0));
        out.extend_from_slice(&self.header);
        push_varint(&mut out, self.count as u64);
        out.append(&mut self.frames);
        self.count = 0;
        out
    }
}

/// The hosts of a list of processes, sorted and without repeats.
pub(crate) fn nodes_of(pids: &[Pid]) -> Vec<NodeId> {
    let mut v: Vec<NodeId> = pids.iter().map(|p| p.node).collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_frames() -> Vec<Frame> {
        let v = ViewId {
            counter: 3,
            coordinator: Pid::new(1, 1),
        };
        vec![
            Frame::Data(DataFrame {
                view: v,
                sender: Pid::new(2, 1),
                seq: 5,
                ts: 9,
                level: Level::Agreed,
                frag: (0, 1),
                kind: Some(DataKind::App("g".into())),
                deps: vec![],
                payload: b"hello".to_vec(),
            }),
            Frame::Ack(AckFrame {
                view: v,
                clock: 10,
                sent: 4,
                contig: vec![1, 2, 3],
            }),
            Frame::Nack(NackFrame {
                view: v,
                sender: Pid::new(2, 1),
                from: 1,
                to: 3,
            }),
            Frame::Commit { view: v },
            Frame::Summary(SummaryFrame {
                view: v,
                promises: vec![(4, 10), (0, 0), (7, 12)],
                stable: vec![1, 2, 3],
                heard: vec![0, 40_000, 1_200_000],
            }),
            Frame::Relay(DataFrame {
                view: v,
                sender: Pid::new(3, 1),
                seq: 2,
                ts: 10,
                level: Level::Safe,
                frag: (0, 1),
                kind: Some(DataKind::App("a".into())),
                deps: vec![],
                payload: b"answer".to_vec(),
            }),
        ]
    }

    fn encode_packet(from: Pid, frames: &[Frame]) -> Vec<u8> {
        let mut b = DatagramBuilder::new(from);
        for f in frames {
            b.push(&encode_frame(f));
        }
        b.take()
    }

    #[test]
    fn spliced_frames_decode_as_a_packet() -> Result<(), DecodeError> {
        let frames = sample_frames();
        let bytes = encode_packet(Pid::new(7, 2), &frames);
        let p = decode(&bytes)?;
        assert_eq!(p.from, Pid::new(7, 2));
        assert_eq!(p.frames, frames);
        Ok(())
    }

    #[test]
    fn other_versions_are_refused_with_the_version() {
        let mut bytes = encode_packet(Pid::new(1, 1), &sample_frames());
        bytes[0] = 9;
        assert_eq!(decode(&bytes), Err(DecodeError::Version { found: 9 }));
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
    }

    #[test]
    fn bad_nack_span_is_refused() {
        let f = Frame::Nack(NackFrame {
            view: ViewId::default(),
            sender: Pid::new(1, 1),
            from: 1,
            to: 10_000,
        });
        let bytes = encode_packet(Pid::new(1, 1), &[f]);
        assert!(matches!(decode(&bytes), Err(DecodeError::Limit(_))));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn mutated_datagrams_never_panic(
            idx in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = encode_packet(Pid::new(3, 1), &sample_frames());
            let i = idx.index(bytes.len());
            bytes[i] = byte;
            let _ = decode(&bytes);
            let c = cut.index(bytes.len());
            let _ = decode(&bytes[..c]);
        }
    }
}
