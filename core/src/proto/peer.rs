//! The peer protocol: messages between nodes, and their framing on a byte stream.
//!
//! Pure encoding and decoding (no I/O): the transport in `net` (tokio) and the simulation
//! (turmoil) both move these frames over a stream.
//!
//! # Frame layout
//! ```text
//! +-------------+---------------+---------------------------+
//! | len: u32 LE | crc32c: u32 LE | payload: len bytes        |
//! +-------------+---------------+---------------------------+
//! ```
//! `crc32c` covers the payload. `len` is at most [`MAX_FRAME`]; a longer length, a bad checksum
//! or a payload that does not decode is a protocol error and the connection is dropped.
//!
//! The payload is one [`PeerMessage`]: a tag byte (the [`tag`] table), then its fields.
//! Integers are little-endian; byte strings are `len: u32 LE ‖ bytes`, bounded by the frame
//! they sit in. Every message's field layout is drawn in [`crate::engine::format`] ("Peer
//! frames").

use super::replog::LogEntry;
use super::{BatchOp, Condition, ErrorKind, Item, Request, Response};

/// The largest payload a frame may carry (a full batch or scan page fits well below it).
pub const MAX_FRAME: usize = 64 << 20;
/// Frame header: length and checksum.
pub const FRAME_HEADER: usize = 8;
/// The peer protocol's version, sent in every `Hello`. 1: no version in `Hello`, four error
/// kinds; 2: a versioned `Hello` (tag 13), ten error kinds; 3: replication (`Replicate`,
/// `ReplicaAck`, `PositionQuery`, `Positions`, `ReplicaLagging`, `LearnerReady`); 4: copies for
/// learners (`CopyPage`, `CopyAck`).
pub const PROTOCOL_VERSION: u32 = 4;

/// The tag bytes of the peer protocol, by what they stand for. A payload starts with a message
/// tag; requests, batch ops, conditions, responses and error kinds nested in it have tags of
/// their own (each table numbered separately).
pub mod tag {
    // Messages.
    /// `Hello` of protocol version 1 (no version field); decoded only, never sent.
    pub const HELLO_V1: u8 = 1;
    pub const FORWARD: u8 = 2;
    pub const REPLY: u8 = 3;
    pub const NOT_OWNER: u8 = 4;
    pub const SCAN_PARTS: u8 = 5;
    pub const FETCH_PART: u8 = 6;
    pub const PART_PAGE: u8 = 7;
    pub const FREEZE_PART: u8 = 8;
    pub const PART_TAIL: u8 = 9;
    pub const PART_REFUSED: u8 = 10;
    pub const MOVE_READY: u8 = 11;
    pub const DECOMMISSION: u8 = 12;
    pub const HELLO: u8 = 13;
    pub const REPLICATE: u8 = 14;
    pub const REPLICA_ACK: u8 = 15;
    pub const POSITION_QUERY: u8 = 16;
    pub const POSITIONS: u8 = 17;
    pub const REPLICA_LAGGING: u8 = 18;
    pub const LEARNER_READY: u8 = 19;
    pub const COPY_PAGE: u8 = 20;
    pub const COPY_ACK: u8 = 21;
    // Requests (inside `Forward`).
    pub const GET: u8 = 1;
    pub const PUT: u8 = 2;
    pub const DELETE: u8 = 3;
    pub const SCAN: u8 = 4;
    pub const BATCH: u8 = 5;
    pub const INCR: u8 = 6;
    // Batch ops (inside `BATCH`).
    pub const OP_PUT: u8 = 1;
    pub const OP_DELETE: u8 = 2;
    pub const OP_PUT_IF_ABSENT: u8 = 3;
    // Conditions (inside `PUT` and `DELETE`).
    pub const COND_NONE: u8 = 0;
    pub const COND_IF_MATCH: u8 = 1;
    pub const COND_IF_ABSENT: u8 = 2;
    pub const COND_IF_EXISTS: u8 = 3;
    // Responses (inside `Reply`).
    pub const VALUE: u8 = 1;
    pub const NOT_FOUND: u8 = 2;
    pub const WRITTEN: u8 = 3;
    pub const DELETED: u8 = 4;
    pub const PRECONDITION_FAILED: u8 = 5;
    pub const PAGE: u8 = 6;
    pub const ERROR: u8 = 7;
    pub const ACCEPTED: u8 = 8;
}

/// An error kind's tag (inside `ERROR`): 1 to 4 as in protocol version 1, then the kinds
/// version 2 added.
fn error_kind_tag(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::BadRequest => 1,
        ErrorKind::TooLarge => 2,
        ErrorKind::Unavailable => 3,
        ErrorKind::Internal => 4,
        ErrorKind::SpansNodes => 5,
        ErrorKind::NotReady => 6,
        ErrorKind::OwnerDown => 7,
        ErrorKind::Moving => 8,
        ErrorKind::Stalled => 9,
        ErrorKind::OutcomeUnknown => 10,
    }
}

fn error_kind_from_tag(t: u8) -> Option<ErrorKind> {
    ErrorKind::ALL.into_iter().find(|k| error_kind_tag(*k) == t)
}

/// One message between nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMessage {
    /// First frame on every connection: which protocol version, who is talking, in which
    /// cluster. A peer whose `version` is not [`PROTOCOL_VERSION`] is refused.
    Hello {
        version: u32,
        from: String,
        cluster: String,
    },
    /// Run `request` as the owner of its key's partition. `map_version` is the sender's
    /// partition map version.
    Forward {
        id: u64,
        map_version: u64,
        request: Request,
    },
    /// The owner's answer to `Forward` `id`.
    Reply { id: u64, response: Response },
    /// The receiver does not own (or is handing off) the partition; it knows `map_version`.
    NotOwner { id: u64, map_version: u64 },
    /// One owner's part of a scan: the same range, over `partitions` only (all of which the
    /// receiver must own). Answered with `Reply { Page }` or `NotOwner`.
    ScanParts {
        id: u64,
        map_version: u64,
        partitions: Vec<u16>,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        after: Option<Vec<u8>>,
        limit: u64,
    },
    /// Hand-off, new owner → old owner: the next page of `partition` after `after` (`None`:
    /// the first page, which also starts recording the keys written to it from now on).
    FetchPart {
        id: u64,
        partition: u16,
        after: Option<Vec<u8>>,
        limit: u32,
    },
    /// A page of a partition: user keys with their stored (enveloped) values.
    PartPage {
        id: u64,
        partition: u16,
        items: Vec<(Vec<u8>, Vec<u8>)>,
        done: bool,
    },
    /// Hand-off: stop taking writes to `partition` and send the keys written since the copy
    /// began.
    FreezePart { id: u64, partition: u16 },
    /// The writes since the copy began: each key's current stored value, or `None` if deleted.
    PartTail {
        id: u64,
        partition: u16,
        items: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    },
    /// The old owner cannot serve this hand-off step (not the owner, no move recorded, ...).
    PartRefused {
        id: u64,
        partition: u16,
        reason: String,
    },
    /// New owner → leader: `partition` is copied and durable here; flip the map.
    MoveReady { partition: u16 },
    /// Any node → leader: move every partition off `node`.
    Decommission { node: String },
    /// Primary → replica: log entries of `partition`, consecutive and in order, sent in
    /// `epoch` (the primary's; each entry keeps the epoch that numbered it), following entry
    /// `prev_lsn` of epoch `prev_epoch` in the primary's log (the replica checks that its own
    /// log has that entry, as Raft's AppendEntries does). `commit`: every entry up to it is on
    /// every copy in sync.
    Replicate {
        partition: u16,
        epoch: u64,
        commit: u64,
        prev_lsn: u64,
        prev_epoch: u64,
        /// The primary's clock when it sent this (echoed in the answer: its read lease runs
        /// from here).
        sent_at: u64,
        entries: Vec<LogEntry>,
    },
    /// Replica → primary: every entry of `partition` up to `applied` is here, the same as in
    /// the primary's log, and as durable as `sync` says; `epoch` is the highest this replica
    /// accepted (above the primary's: the primary is deposed). `gap`: the `Replicate` did not
    /// follow on from this replica's log (it lacks `prev_lsn`, or holds another entry there);
    /// `applied` is then only where to send from next (`applied + 1`), not a promise.
    ReplicaAck {
        partition: u16,
        epoch: u64,
        applied: u64,
        gap: bool,
        /// The `sent_at` of the `Replicate` answered, if this replica took it from the
        /// partition's primary: it promises to help no newer primary for the lease time
        /// from then (0: no promise).
        lease_from: u64,
    },
    /// Leader → replica: where do your logs of `partitions` end? (to promote the copy with
    /// the most writes when a primary is gone)
    PositionQuery { id: u64, partitions: Vec<u16> },
    /// Replica → leader: per partition, the highest epoch accepted, the last entry and its
    /// epoch.
    Positions {
        id: u64,
        items: Vec<(u16, u64, u64, u64)>,
    },
    /// Primary → leader: backup `node` of `partition` has not acknowledged for too long;
    /// remove it from the configuration of `epoch` (writes wait until that is written).
    ReplicaLagging {
        partition: u16,
        epoch: u64,
        node: String,
    },
    /// Primary → leader: learner `node` of `partition` has every entry (and the primary waits
    /// for it from now on); make it a backup.
    LearnerReady {
        partition: u16,
        epoch: u64,
        node: String,
    },
    /// Primary → learner its log no longer reaches back for: a page of a copy of
    /// `partition`, its committed keys after `after` (all of them from the first, `after`
    /// `None`, which also empties the learner's log) in key order, with their stored values;
    /// the learner deletes its own keys of the range the page covers that the page lacks.
    /// The copy was started at entry `base` (of epoch `base_epoch`), committed then: once the
    /// last page (`done`) is applied, the learner's log goes on from `base`, and the primary
    /// sends the entries after it from its log (pages read later may already show some of
    /// them; entries carry whole values, so applying them again is harmless).
    CopyPage {
        partition: u16,
        epoch: u64,
        base: u64,
        base_epoch: u64,
        after: Option<Vec<u8>>,
        items: Vec<(Vec<u8>, Vec<u8>)>,
        done: bool,
        sent_at: u64,
    },
    /// Learner → primary: the copy of `partition` from `base` is applied up to key `last`
    /// (send the page after it). A `base` other than the primary's copy (0: no copy in
    /// progress here, after a restart) asks it to start the copy again.
    CopyAck {
        partition: u16,
        epoch: u64,
        base: u64,
        last: Option<Vec<u8>>,
    },
}

/// Why a frame did not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

fn perr(m: impl Into<String>) -> ProtocolError {
    ProtocolError(m.into())
}

/// Appends `msg` as one frame to `out`.
pub fn encode_frame(msg: &PeerMessage, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    encode_message(msg, out);
    let len = (out.len() - start - FRAME_HEADER) as u32;
    let crc = crc32c::crc32c(&out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Looks at the front of `buf`: `Ok(None)` if a whole frame is not there yet, else the message
/// and how many bytes it used. Never allocates more than the frame's own size, which is checked
/// against [`MAX_FRAME`] before anything else.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(PeerMessage, usize)>, ProtocolError> {
    if buf.len() < FRAME_HEADER {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME {
        return Err(perr(format!(
            "frame of {len} bytes is over the {MAX_FRAME}-byte limit"
        )));
    }
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if buf.len() < FRAME_HEADER + len {
        return Ok(None);
    }
    let payload = &buf[FRAME_HEADER..FRAME_HEADER + len];
    if crc32c::crc32c(payload) != crc {
        return Err(perr("frame checksum mismatch"));
    }
    let msg = decode_message(payload)?;
    Ok(Some((msg, FRAME_HEADER + len)))
}

/// Decodes one payload (no frame header).
pub fn decode_message(payload: &[u8]) -> Result<PeerMessage, ProtocolError> {
    let mut r = Reader { buf: payload };
    let msg = match r.u8()? {
        // A peer of version 1 sent no version: say so, so the transport can refuse it by name.
        tag::HELLO_V1 => PeerMessage::Hello {
            version: 1,
            from: r.string()?,
            cluster: r.string()?,
        },
        // Later versions may append fields to their `Hello`: read what we know, ignore the rest,
        // so that the transport can name both versions when it refuses the peer.
        tag::HELLO => {
            return Ok(PeerMessage::Hello {
                version: r.u32()?,
                from: r.string()?,
                cluster: r.string()?,
            })
        }
        tag::FORWARD => PeerMessage::Forward {
            id: r.u64()?,
            map_version: r.u64()?,
            request: r.request()?,
        },
        tag::REPLY => PeerMessage::Reply {
            id: r.u64()?,
            response: r.response()?,
        },
        tag::NOT_OWNER => PeerMessage::NotOwner {
            id: r.u64()?,
            map_version: r.u64()?,
        },
        tag::SCAN_PARTS => r.scan_parts()?,
        tag::FETCH_PART => PeerMessage::FetchPart {
            id: r.u64()?,
            partition: r.u16()?,
            after: r.opt_bytes()?,
            limit: r.u32()?,
        },
        tag::PART_PAGE => r.part_page()?,
        tag::FREEZE_PART => PeerMessage::FreezePart {
            id: r.u64()?,
            partition: r.u16()?,
        },
        tag::PART_TAIL => r.part_tail()?,
        tag::PART_REFUSED => PeerMessage::PartRefused {
            id: r.u64()?,
            partition: r.u16()?,
            reason: r.string()?,
        },
        tag::MOVE_READY => PeerMessage::MoveReady {
            partition: r.u16()?,
        },
        tag::DECOMMISSION => PeerMessage::Decommission { node: r.string()? },
        tag::REPLICATE => r.replicate()?,
        tag::POSITION_QUERY => {
            let id = r.u64()?;
            let n = r.count(2)?;
            let mut partitions = Vec::with_capacity(n);
            for _ in 0..n {
                partitions.push(r.u16()?);
            }
            PeerMessage::PositionQuery { id, partitions }
        }
        tag::POSITIONS => {
            let id = r.u64()?;
            let n = r.count(26)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push((r.u16()?, r.u64()?, r.u64()?, r.u64()?));
            }
            PeerMessage::Positions { id, items }
        }
        tag::REPLICA_LAGGING => PeerMessage::ReplicaLagging {
            partition: r.u16()?,
            epoch: r.u64()?,
            node: r.string()?,
        },
        tag::LEARNER_READY => PeerMessage::LearnerReady {
            partition: r.u16()?,
            epoch: r.u64()?,
            node: r.string()?,
        },
        tag::REPLICA_ACK => PeerMessage::ReplicaAck {
            partition: r.u16()?,
            epoch: r.u64()?,
            applied: r.u64()?,
            gap: r.u8()? != 0,
            lease_from: r.u64()?,
        },
        tag::COPY_PAGE => {
            let partition = r.u16()?;
            let epoch = r.u64()?;
            let base = r.u64()?;
            let base_epoch = r.u64()?;
            let after = r.opt_bytes()?;
            let n = r.count(8)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push((r.bytes()?, r.bytes()?));
            }
            PeerMessage::CopyPage {
                partition,
                epoch,
                base,
                base_epoch,
                after,
                items,
                done: r.u8()? != 0,
                sent_at: r.u64()?,
            }
        }
        tag::COPY_ACK => PeerMessage::CopyAck {
            partition: r.u16()?,
            epoch: r.u64()?,
            base: r.u64()?,
            last: r.opt_bytes()?,
        },
        t => return Err(perr(format!("unknown message tag {t}"))),
    };
    if !r.buf.is_empty() {
        return Err(perr(format!("{} trailing bytes", r.buf.len())));
    }
    Ok(msg)
}

/// Encodes one payload (no frame header). The match names every message and has no wildcard
/// arm, so that a new message cannot compile without an encoding.
fn encode_message(msg: &PeerMessage, out: &mut Vec<u8>) {
    let mut w = Writer { out };
    match msg {
        PeerMessage::Hello {
            version,
            from,
            cluster,
        } => w.hello(*version, from, cluster),
        PeerMessage::Forward {
            id,
            map_version,
            request,
        } => w.forward(*id, *map_version, request),
        PeerMessage::Reply { id, response } => w.reply(*id, response),
        PeerMessage::NotOwner { id, map_version } => w.not_owner(*id, *map_version),
        PeerMessage::ScanParts {
            id,
            map_version,
            partitions,
            start,
            end,
            after,
            limit,
        } => {
            w.scan_parts(*id, *map_version, partitions);
            w.scan_range(start, end, after, *limit);
        }
        PeerMessage::FetchPart {
            id,
            partition,
            after,
            limit,
        } => w.fetch_part(*id, *partition, after, *limit),
        PeerMessage::PartPage {
            id,
            partition,
            items,
            done,
        } => w.part_page(*id, *partition, items, *done),
        PeerMessage::FreezePart { id, partition } => w.freeze_part(*id, *partition),
        PeerMessage::PartTail {
            id,
            partition,
            items,
        } => w.part_tail(*id, *partition, items),
        PeerMessage::PartRefused {
            id,
            partition,
            reason,
        } => w.part_refused(*id, *partition, reason),
        PeerMessage::MoveReady { partition } => w.move_ready(*partition),
        PeerMessage::Decommission { node } => w.decommission(node),
        PeerMessage::Replicate {
            partition,
            epoch,
            commit,
            prev_lsn,
            prev_epoch,
            sent_at,
            entries,
        } => w.replicate(
            *partition,
            [*epoch, *commit, *prev_lsn, *prev_epoch, *sent_at],
            entries,
        ),
        PeerMessage::ReplicaAck {
            partition,
            epoch,
            applied,
            gap,
            lease_from,
        } => {
            w.u8(tag::REPLICA_ACK);
            w.u16(*partition);
            w.u64(*epoch);
            w.u64(*applied);
            w.u8(u8::from(*gap));
            w.u64(*lease_from);
        }
        PeerMessage::PositionQuery { id, partitions } => {
            w.u8(tag::POSITION_QUERY);
            w.u64(*id);
            w.out
                .extend_from_slice(&(partitions.len() as u32).to_le_bytes());
            for p in partitions {
                w.u16(*p);
            }
        }
        PeerMessage::Positions { id, items } => {
            w.u8(tag::POSITIONS);
            w.u64(*id);
            w.out.extend_from_slice(&(items.len() as u32).to_le_bytes());
            for (p, epoch, lsn, lsn_epoch) in items {
                w.u16(*p);
                w.u64(*epoch);
                w.u64(*lsn);
                w.u64(*lsn_epoch);
            }
        }
        PeerMessage::ReplicaLagging {
            partition,
            epoch,
            node,
        } => w.part_node(tag::REPLICA_LAGGING, *partition, *epoch, node),
        PeerMessage::LearnerReady {
            partition,
            epoch,
            node,
        } => w.part_node(tag::LEARNER_READY, *partition, *epoch, node),
        PeerMessage::CopyPage {
            partition,
            epoch,
            base,
            base_epoch,
            after,
            items,
            done,
            sent_at,
        } => {
            w.u8(tag::COPY_PAGE);
            w.u16(*partition);
            w.u64(*epoch);
            w.u64(*base);
            w.u64(*base_epoch);
            w.opt_bytes(after);
            w.out.extend_from_slice(&(items.len() as u32).to_le_bytes());
            for (k, v) in items {
                w.bytes(k);
                w.bytes(v);
            }
            w.u8(u8::from(*done));
            w.u64(*sent_at);
        }
        PeerMessage::CopyAck {
            partition,
            epoch,
            base,
            last,
        } => {
            w.u8(tag::COPY_ACK);
            w.u16(*partition);
            w.u64(*epoch);
            w.u64(*base);
            w.opt_bytes(last);
        }
    }
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.out.extend_from_slice(b);
    }
    fn opt_bytes(&mut self, b: &Option<Vec<u8>>) {
        match b {
            None => self.u8(0),
            Some(b) => {
                self.u8(1);
                self.bytes(b);
            }
        }
    }
    fn cond(&mut self, c: &Condition) {
        match c {
            Condition::None => self.u8(tag::COND_NONE),
            Condition::IfMatch(v) => {
                self.u8(tag::COND_IF_MATCH);
                self.u64(*v);
            }
            Condition::IfAbsent => self.u8(tag::COND_IF_ABSENT),
            Condition::IfExists => self.u8(tag::COND_IF_EXISTS),
        }
    }
    fn request(&mut self, r: &Request) {
        match r {
            Request::Get { key } => {
                self.u8(tag::GET);
                self.bytes(key);
            }
            Request::Put { key, value, cond } => {
                self.u8(tag::PUT);
                self.bytes(key);
                self.bytes(value);
                self.cond(cond);
            }
            Request::Delete { key, cond } => {
                self.u8(tag::DELETE);
                self.bytes(key);
                self.cond(cond);
            }
            Request::Scan {
                start,
                end,
                after,
                limit,
            } => {
                self.u8(tag::SCAN);
                self.scan_range(start, end, after, *limit as u64);
            }
            Request::Incr { key, by } => {
                self.u8(tag::INCR);
                self.bytes(key);
                self.out.extend_from_slice(&by.to_le_bytes());
            }
            Request::Batch { ops } => {
                self.u8(tag::BATCH);
                self.out
                    .extend_from_slice(&(ops.len() as u32).to_le_bytes());
                for op in ops {
                    match op {
                        BatchOp::Put(k, v) => {
                            self.u8(tag::OP_PUT);
                            self.bytes(k);
                            self.bytes(v);
                        }
                        BatchOp::Delete(k) => {
                            self.u8(tag::OP_DELETE);
                            self.bytes(k);
                        }
                        BatchOp::PutIfAbsent(k, v) => {
                            self.u8(tag::OP_PUT_IF_ABSENT);
                            self.bytes(k);
                            self.bytes(v);
                        }
                    }
                }
            }
        }
    }
    fn response(&mut self, r: &Response) {
        match r {
            Response::Value {
                value,
                version,
                created_ms,
                modified_ms,
            } => {
                self.u8(tag::VALUE);
                self.bytes(value);
                self.u64(*version);
                self.u64(*created_ms);
                self.u64(*modified_ms);
            }
            Response::NotFound => self.u8(tag::NOT_FOUND),
            Response::Accepted => self.u8(tag::ACCEPTED),
            Response::Written { version } => {
                self.u8(tag::WRITTEN);
                self.u64(*version);
            }
            Response::Deleted { version } => {
                self.u8(tag::DELETED);
                self.u64(*version);
            }
            Response::PreconditionFailed { current } => {
                self.u8(tag::PRECONDITION_FAILED);
                match current {
                    None => self.u8(0),
                    Some(v) => {
                        self.u8(1);
                        self.u64(*v);
                    }
                }
            }
            Response::Page { items, next_after } => {
                self.u8(tag::PAGE);
                self.out
                    .extend_from_slice(&(items.len() as u32).to_le_bytes());
                for i in items {
                    self.bytes(&i.key);
                    self.bytes(&i.value);
                    self.u64(i.version);
                }
                self.opt_bytes(next_after);
            }
            Response::Error { kind, message } => {
                self.u8(tag::ERROR);
                self.u8(error_kind_tag(*kind));
                self.bytes(message.as_bytes());
            }
        }
    }
}

/// Connection set-up, then forwarding: a request sent on to its key's owner, and the answer.
/// One method per message, each the message's fields in wire order (see `engine::format`).
impl Writer<'_> {
    /// Always in the current layout (with a version); the version-1 layout is only decoded.
    fn hello(&mut self, version: u32, from: &str, cluster: &str) {
        self.u8(tag::HELLO);
        self.out.extend_from_slice(&version.to_le_bytes());
        self.bytes(from.as_bytes());
        self.bytes(cluster.as_bytes());
    }
    fn forward(&mut self, id: u64, map_version: u64, request: &Request) {
        self.u8(tag::FORWARD);
        self.u64(id);
        self.u64(map_version);
        self.request(request);
    }
    fn reply(&mut self, id: u64, response: &Response) {
        self.u8(tag::REPLY);
        self.u64(id);
        self.response(response);
    }
    fn not_owner(&mut self, id: u64, map_version: u64) {
        self.u8(tag::NOT_OWNER);
        self.u64(id);
        self.u64(map_version);
    }
}

/// Scans: one owner's part of a scan that spans several owners.
impl Writer<'_> {
    /// The head of `ScanParts`, up to its range (see [`Writer::scan_range`]).
    fn scan_parts(&mut self, id: u64, map_version: u64, partitions: &[u16]) {
        self.u8(tag::SCAN_PARTS);
        self.u64(id);
        self.u64(map_version);
        self.out
            .extend_from_slice(&(partitions.len() as u32).to_le_bytes());
        for p in partitions {
            self.out.extend_from_slice(&p.to_le_bytes());
        }
    }
    /// A scan's range and page size: laid out alike in a forwarded `Scan` request and in
    /// `ScanParts`, so that both stay in step.
    fn scan_range(
        &mut self,
        start: &[u8],
        end: &Option<Vec<u8>>,
        after: &Option<Vec<u8>>,
        limit: u64,
    ) {
        self.bytes(start);
        self.opt_bytes(end);
        self.opt_bytes(after);
        self.u64(limit);
    }
}

/// Hand-off: moving a partition to its new owner, and the leader's part in it.
impl Writer<'_> {
    fn fetch_part(&mut self, id: u64, partition: u16, after: &Option<Vec<u8>>, limit: u32) {
        self.u8(tag::FETCH_PART);
        self.u64(id);
        self.u16(partition);
        self.opt_bytes(after);
        self.out.extend_from_slice(&limit.to_le_bytes());
    }
    fn part_page(&mut self, id: u64, partition: u16, items: &[(Vec<u8>, Vec<u8>)], done: bool) {
        self.u8(tag::PART_PAGE);
        self.u64(id);
        self.u16(partition);
        self.out
            .extend_from_slice(&(items.len() as u32).to_le_bytes());
        for (k, v) in items {
            self.bytes(k);
            self.bytes(v);
        }
        self.u8(u8::from(done));
    }
    fn freeze_part(&mut self, id: u64, partition: u16) {
        self.u8(tag::FREEZE_PART);
        self.u64(id);
        self.u16(partition);
    }
    fn part_tail(&mut self, id: u64, partition: u16, items: &[(Vec<u8>, Option<Vec<u8>>)]) {
        self.u8(tag::PART_TAIL);
        self.u64(id);
        self.u16(partition);
        self.out
            .extend_from_slice(&(items.len() as u32).to_le_bytes());
        for (k, v) in items {
            self.bytes(k);
            self.opt_bytes(v);
        }
    }
    fn part_refused(&mut self, id: u64, partition: u16, reason: &str) {
        self.u8(tag::PART_REFUSED);
        self.u64(id);
        self.u16(partition);
        self.bytes(reason.as_bytes());
    }
    fn move_ready(&mut self, partition: u16) {
        self.u8(tag::MOVE_READY);
        self.u16(partition);
    }
    fn decommission(&mut self, node: &str) {
        self.u8(tag::DECOMMISSION);
        self.bytes(node.as_bytes());
    }
    fn part_node(&mut self, tag: u8, partition: u16, epoch: u64, node: &str) {
        self.u8(tag);
        self.u16(partition);
        self.u64(epoch);
        self.bytes(node.as_bytes());
    }
    /// `nums`: epoch, commit, prev_lsn, prev_epoch, sent_at.
    fn replicate(&mut self, partition: u16, nums: [u64; 5], entries: &[LogEntry]) {
        self.u8(tag::REPLICATE);
        self.u16(partition);
        for n in nums {
            self.u64(n);
        }
        self.out
            .extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for e in entries {
            self.u64(e.lsn);
            self.u64(e.epoch);
            self.out
                .extend_from_slice(&(e.ops.len() as u32).to_le_bytes());
            for (k, v) in &e.ops {
                self.bytes(k);
                self.opt_bytes(v);
            }
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(perr(format!(
                "truncated: wanted {n} bytes, {} left",
                self.buf.len()
            )));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ProtocolError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, ProtocolError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn string(&mut self) -> Result<String, ProtocolError> {
        String::from_utf8(self.bytes()?).map_err(|_| perr("a name is not UTF-8"))
    }
    fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>, ProtocolError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?)),
            t => Err(perr(format!("bad option tag {t}"))),
        }
    }
    /// A count of items, each at least `min_item` bytes: checked against what is left so a
    /// lying count cannot make us reserve memory.
    fn count(&mut self, min_item: usize) -> Result<usize, ProtocolError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item) > self.buf.len() {
            return Err(perr(format!("count {n} is larger than the frame")));
        }
        Ok(n)
    }
    fn cond(&mut self) -> Result<Condition, ProtocolError> {
        Ok(match self.u8()? {
            tag::COND_NONE => Condition::None,
            tag::COND_IF_MATCH => Condition::IfMatch(self.u64()?),
            tag::COND_IF_ABSENT => Condition::IfAbsent,
            tag::COND_IF_EXISTS => Condition::IfExists,
            t => return Err(perr(format!("bad condition tag {t}"))),
        })
    }
    fn request(&mut self) -> Result<Request, ProtocolError> {
        Ok(match self.u8()? {
            tag::GET => Request::Get { key: self.bytes()? },
            tag::PUT => Request::Put {
                key: self.bytes()?,
                value: self.bytes()?,
                cond: self.cond()?,
            },
            tag::DELETE => Request::Delete {
                key: self.bytes()?,
                cond: self.cond()?,
            },
            tag::SCAN => Request::Scan {
                start: self.bytes()?,
                end: self.opt_bytes()?,
                after: self.opt_bytes()?,
                limit: usize::try_from(self.u64()?).unwrap_or(usize::MAX),
            },
            tag::BATCH => {
                let n = self.count(5)?;
                let mut ops = Vec::with_capacity(n);
                for _ in 0..n {
                    ops.push(match self.u8()? {
                        tag::OP_PUT => BatchOp::Put(self.bytes()?, self.bytes()?),
                        tag::OP_DELETE => BatchOp::Delete(self.bytes()?),
                        tag::OP_PUT_IF_ABSENT => BatchOp::PutIfAbsent(self.bytes()?, self.bytes()?),
                        t => return Err(perr(format!("bad batch op tag {t}"))),
                    });
                }
                Request::Batch { ops }
            }
            tag::INCR => Request::Incr {
                key: self.bytes()?,
                by: self.u64()? as i64,
            },
            t => return Err(perr(format!("bad request tag {t}"))),
        })
    }
    fn response(&mut self) -> Result<Response, ProtocolError> {
        Ok(match self.u8()? {
            tag::VALUE => Response::Value {
                value: self.bytes()?,
                version: self.u64()?,
                created_ms: self.u64()?,
                modified_ms: self.u64()?,
            },
            tag::NOT_FOUND => Response::NotFound,
            tag::ACCEPTED => Response::Accepted,
            tag::WRITTEN => Response::Written {
                version: self.u64()?,
            },
            tag::DELETED => Response::Deleted {
                version: self.u64()?,
            },
            tag::PRECONDITION_FAILED => Response::PreconditionFailed {
                current: match self.u8()? {
                    0 => None,
                    1 => Some(self.u64()?),
                    t => return Err(perr(format!("bad option tag {t}"))),
                },
            },
            tag::PAGE => {
                let n = self.count(16)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(Item {
                        key: self.bytes()?,
                        value: self.bytes()?,
                        version: self.u64()?,
                    });
                }
                Response::Page {
                    items,
                    next_after: self.opt_bytes()?,
                }
            }
            tag::ERROR => {
                let kind = match error_kind_from_tag(self.u8()?) {
                    Some(k) => k,
                    None => return Err(perr("bad error kind")),
                };
                let message = String::from_utf8_lossy(&self.bytes()?).into_owned();
                Response::Error { kind, message }
            }
            t => return Err(perr(format!("bad response tag {t}"))),
        })
    }
}

/// The messages that carry a list: each count is checked against the frame before anything is
/// reserved for it (see [`Reader::count`]), and each field is read in wire order.
impl Reader<'_> {
    fn scan_parts(&mut self) -> Result<PeerMessage, ProtocolError> {
        let id = self.u64()?;
        let map_version = self.u64()?;
        let n = self.count(2)?;
        let mut partitions = Vec::with_capacity(n);
        for _ in 0..n {
            let b = self.take(2)?;
            partitions.push(u16::from_le_bytes([b[0], b[1]]));
        }
        Ok(PeerMessage::ScanParts {
            id,
            map_version,
            partitions,
            start: self.bytes()?,
            end: self.opt_bytes()?,
            after: self.opt_bytes()?,
            limit: self.u64()?,
        })
    }
    fn part_page(&mut self) -> Result<PeerMessage, ProtocolError> {
        let id = self.u64()?;
        let partition = self.u16()?;
        let n = self.count(8)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push((self.bytes()?, self.bytes()?));
        }
        Ok(PeerMessage::PartPage {
            id,
            partition,
            items,
            done: self.u8()? != 0,
        })
    }
    fn part_tail(&mut self) -> Result<PeerMessage, ProtocolError> {
        let id = self.u64()?;
        let partition = self.u16()?;
        let n = self.count(5)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push((self.bytes()?, self.opt_bytes()?));
        }
        Ok(PeerMessage::PartTail {
            id,
            partition,
            items,
        })
    }
    fn replicate(&mut self) -> Result<PeerMessage, ProtocolError> {
        let partition = self.u16()?;
        let epoch = self.u64()?;
        let commit = self.u64()?;
        let prev_lsn = self.u64()?;
        let prev_epoch = self.u64()?;
        let sent_at = self.u64()?;
        let n = self.count(20)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let lsn = self.u64()?;
            let epoch = self.u64()?;
            let k = self.count(5)?;
            let mut ops = Vec::with_capacity(k);
            for _ in 0..k {
                ops.push((self.bytes()?, self.opt_bytes()?));
            }
            entries.push(LogEntry { lsn, epoch, ops });
        }
        Ok(PeerMessage::Replicate {
            partition,
            epoch,
            commit,
            prev_lsn,
            prev_epoch,
            sent_at,
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<PeerMessage> {
        vec![
            PeerMessage::Hello {
                version: PROTOCOL_VERSION,
                from: "node-a".into(),
                cluster: "prod".into(),
            },
            PeerMessage::Replicate {
                partition: 7,
                epoch: 4,
                commit: 10,
                prev_lsn: 10,
                prev_epoch: 3,
                sent_at: 1_700_000_000_123,
                entries: vec![
                    LogEntry {
                        lsn: 11,
                        epoch: 3,
                        ops: vec![
                            (b"\x00\x07k".to_vec(), Some(vec![2; 40])),
                            (b"\x00\x07j".to_vec(), None),
                        ],
                    },
                    LogEntry {
                        lsn: 12,
                        epoch: 4,
                        ops: vec![],
                    },
                ],
            },
            PeerMessage::ReplicaAck {
                partition: 7,
                epoch: 4,
                applied: 12,
                gap: true,
                lease_from: 1_700_000_000_123,
            },
            PeerMessage::PositionQuery {
                id: 3,
                partitions: vec![0, 7, 4095],
            },
            PeerMessage::Positions {
                id: 3,
                items: vec![(7, 4, 12, 3), (0, 1, 0, 0)],
            },
            PeerMessage::ReplicaLagging {
                partition: 7,
                epoch: 4,
                node: "n2".into(),
            },
            PeerMessage::LearnerReady {
                partition: 7,
                epoch: 4,
                node: "n3".into(),
            },
            PeerMessage::CopyPage {
                partition: 7,
                epoch: 5,
                base: 5000,
                base_epoch: 4,
                after: Some(b"k1".to_vec()),
                items: vec![(b"k2".to_vec(), vec![2; 40]), (b"k3".to_vec(), vec![])],
                done: true,
                sent_at: 123,
            },
            PeerMessage::CopyAck {
                partition: 7,
                epoch: 5,
                base: 5000,
                last: None,
            },
            PeerMessage::Forward {
                id: 9,
                map_version: 3,
                request: Request::Put {
                    key: vec![0, 0xff, b'k'],
                    value: vec![1; 300],
                    cond: Condition::IfMatch(77),
                },
            },
            PeerMessage::Forward {
                id: 10,
                map_version: 3,
                request: Request::Batch {
                    ops: vec![
                        BatchOp::Put(b"a".to_vec(), b"1".to_vec()),
                        BatchOp::Delete(b"b".to_vec()),
                        BatchOp::PutIfAbsent(b"c".to_vec(), b"2".to_vec()),
                    ],
                },
            },
            PeerMessage::Forward {
                id: 12,
                map_version: 4,
                request: Request::Incr {
                    key: b"n".to_vec(),
                    by: -5,
                },
            },
            PeerMessage::Forward {
                id: 11,
                map_version: 4,
                request: Request::Scan {
                    start: b"p".to_vec(),
                    end: Some(b"q".to_vec()),
                    after: None,
                    limit: 10,
                },
            },
            PeerMessage::Reply {
                id: 9,
                response: Response::Page {
                    items: vec![Item {
                        key: b"k".to_vec(),
                        value: b"v".to_vec(),
                        version: 5,
                    }],
                    next_after: Some(b"k".to_vec()),
                },
            },
            PeerMessage::Reply {
                id: 12,
                response: Response::Error {
                    kind: ErrorKind::Unavailable,
                    message: "owner down".into(),
                },
            },
            PeerMessage::NotOwner {
                id: 13,
                map_version: 8,
            },
            PeerMessage::ScanParts {
                id: 14,
                map_version: 8,
                partitions: vec![0, 3, 63],
                start: Vec::new(),
                end: None,
                after: Some(b"m".to_vec()),
                limit: 100,
            },
            PeerMessage::FetchPart {
                id: 15,
                partition: 7,
                after: None,
                limit: 500,
            },
            PeerMessage::PartPage {
                id: 15,
                partition: 7,
                items: vec![(b"k".to_vec(), vec![1, 2, 3]), (Vec::new(), Vec::new())],
                done: true,
            },
            PeerMessage::FreezePart {
                id: 16,
                partition: 7,
            },
            PeerMessage::PartTail {
                id: 16,
                partition: 7,
                items: vec![(b"k".to_vec(), None), (b"j".to_vec(), Some(vec![9]))],
            },
            PeerMessage::PartRefused {
                id: 17,
                partition: 7,
                reason: "not the owner".into(),
            },
            PeerMessage::MoveReady { partition: 7 },
            PeerMessage::Decommission { node: "n3".into() },
        ]
    }

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let msgs = samples();
        let mut stream = Vec::new();
        for m in &msgs {
            encode_frame(m, &mut stream);
        }
        // Fed one byte more at a time, the decoder waits for whole frames and yields them in
        // order.
        let mut got = Vec::new();
        let mut start = 0;
        for end in 0..=stream.len() {
            while let Some((m, used)) = decode_frame(&stream[start..end]).unwrap() {
                got.push(m);
                start += used;
            }
        }
        assert_eq!(got, msgs);
        assert_eq!(start, stream.len());
    }

    #[test]
    fn damage_is_an_error_never_a_panic() {
        let mut frame = Vec::new();
        encode_frame(&samples()[1], &mut frame);
        for i in 0..frame.len() {
            for bit in 0..8 {
                let mut f = frame.clone();
                f[i] ^= 1 << bit;
                if let Ok(Some((m, _))) = decode_frame(&f) {
                    panic!("flip at {i}:{bit} decoded as {m:?}");
                }
            }
        }
        let mut huge = Vec::new();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert!(
            decode_frame(&huge).is_err(),
            "an oversized length is refused at once"
        );
        // A lying count inside a valid frame.
        let mut payload = vec![2u8];
        payload.extend_from_slice(&1u64.to_le_bytes());
        payload.extend_from_slice(&1u64.to_le_bytes());
        payload.push(5);
        payload.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_message(&payload).is_err());
    }

    #[test]
    fn every_error_kind_crosses_the_wire_and_hellos_name_their_version() {
        for kind in ErrorKind::ALL {
            let m = PeerMessage::Reply {
                id: 1,
                response: Response::Error {
                    kind,
                    message: kind.as_str().into(),
                },
            };
            let mut buf = Vec::new();
            encode_frame(&m, &mut buf);
            assert_eq!(decode_frame(&buf).unwrap().map(|(m, _)| m), Some(m));
        }
        let tags: std::collections::BTreeSet<u8> =
            ErrorKind::ALL.into_iter().map(error_kind_tag).collect();
        assert_eq!(
            tags.len(),
            ErrorKind::ALL.len(),
            "error kind tags are distinct"
        );
        // Version 1 had no version field.
        let mut v1 = vec![tag::HELLO_V1];
        for s in ["old", "c"] {
            v1.extend_from_slice(&(s.len() as u32).to_le_bytes());
            v1.extend_from_slice(s.as_bytes());
        }
        assert_eq!(
            decode_message(&v1),
            Ok(PeerMessage::Hello {
                version: 1,
                from: "old".into(),
                cluster: "c".into()
            })
        );
        // A later version may say more than we know.
        let mut buf = Vec::new();
        let future = PeerMessage::Hello {
            version: 9,
            from: "new".into(),
            cluster: "c".into(),
        };
        encode_message(&future, &mut buf);
        buf.extend_from_slice(b"fields of version 9");
        assert_eq!(decode_message(&buf), Ok(future));
    }
}
