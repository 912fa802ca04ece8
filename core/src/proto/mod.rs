//! The vocabulary every layer shares: requests, responses and error kinds (this file), the
//! value envelope and the internal key ([`envelope`]), Redis's integer rules ([`int`]), and the
//! peer protocol with its framing ([`peer`]).
//!
//! Whether a request writes, which keys it names, and how it is encoded on the peer wire are
//! each one `match` with no wildcard ([`Request::is_write`], [`Request::keys`],
//! `peer::Writer::request`): a new request type does not compile until each says what it does.

pub mod envelope;
pub mod int;
pub mod peer;
pub mod replog;

use crate::engine::prefix_end;

/// A write's precondition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    None,
    /// The key's current version must be this one.
    IfMatch(u64),
    /// The key must not exist.
    IfAbsent,
    /// The key must exist (`If-Match: *`).
    IfExists,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// Put only if the key does not exist; otherwise the whole batch fails with
    /// `PreconditionFailed` and writes nothing (Redis's MSETNX).
    PutIfAbsent(Vec<u8>, Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Get {
        key: Vec<u8>,
    },
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        cond: Condition,
    },
    Delete {
        key: Vec<u8>,
        cond: Condition,
    },
    /// Keys in `[start, end)` (after `after`, when continuing), at most `limit`.
    Scan {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        after: Option<Vec<u8>>,
        limit: usize,
    },
    Batch {
        ops: Vec<BatchOp>,
    },
    /// Adds `by` to the key's value read as a decimal integer (absent: 0) in one step on the
    /// owner, and answers `Value` with the new number (Redis's INCRBY).
    Incr {
        key: Vec<u8>,
        by: i64,
    },
}

impl Request {
    /// A prefix scan as a range scan.
    pub fn scan_prefix(prefix: Vec<u8>, after: Option<Vec<u8>>, limit: usize) -> Request {
        Request::Scan {
            end: prefix_end(&prefix),
            start: prefix,
            after,
            limit,
        }
    }
}

/// Why a request failed. Every distinction a front-end needs is a kind of its own, so HTTP and
/// RESP map kinds (one `match` each) and never read message text. The message is for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed input (HTTP 400).
    BadRequest,
    /// Over a size limit: key, value or batch (HTTP 413).
    TooLarge,
    /// A batch whose keys live on different nodes: atomic only within one node (HTTP 400).
    SpansNodes,
    /// No partition map yet (no leader, or the node is starting): retry (HTTP 503).
    NotReady,
    /// The node that owns the key's partition is not a live member: retry (HTTP 503).
    OwnerDown,
    /// The key's partition is changing owner (a hand-off, a newer map): retry (HTTP 503).
    Moving,
    /// Writes stall while flushes and compactions catch up: retry soon (HTTP 503). Nothing was
    /// written.
    Stalled,
    /// The request may or may not have been carried out (a forward lost, a failed fsync): the
    /// client must read before it retries a write that is not idempotent (HTTP 503).
    OutcomeUnknown,
    /// Temporarily unable for another reason (the engine is closing, a failed log) (HTTP 503).
    Unavailable,
    /// A bug or a damaged disk (HTTP 500).
    Internal,
}

impl ErrorKind {
    /// Every kind, for tests and for the wire's tag table.
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::BadRequest,
        ErrorKind::TooLarge,
        ErrorKind::SpansNodes,
        ErrorKind::NotReady,
        ErrorKind::OwnerDown,
        ErrorKind::Moving,
        ErrorKind::Stalled,
        ErrorKind::OutcomeUnknown,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
    ];

    /// A stable snake_case name (HTTP's `reason` field, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::SpansNodes => "spans_nodes",
            ErrorKind::NotReady => "not_ready",
            ErrorKind::OwnerDown => "owner_down",
            ErrorKind::Moving => "moving",
            ErrorKind::Stalled => "stalled",
            ErrorKind::OutcomeUnknown => "outcome_unknown",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }

    /// Whether a client should try again later (HTTP 503 with `Retry-After`).
    pub fn is_retryable(self) -> bool {
        match self {
            ErrorKind::NotReady
            | ErrorKind::OwnerDown
            | ErrorKind::Moving
            | ErrorKind::Stalled
            | ErrorKind::OutcomeUnknown
            | ErrorKind::Unavailable => true,
            ErrorKind::BadRequest
            | ErrorKind::TooLarge
            | ErrorKind::SpansNodes
            | ErrorKind::Internal => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Value {
        value: Vec<u8>,
        version: u64,
        created_ms: u64,
        modified_ms: u64,
    },
    NotFound,
    Written {
        version: u64,
    },
    Deleted {
        version: u64,
    },
    PreconditionFailed {
        current: Option<u64>,
    },
    /// An operator's command was taken; it completes in the background.
    Accepted,
    Page {
        items: Vec<Item>,
        /// The last key returned, when more may follow.
        next_after: Option<Vec<u8>>,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

/// Operator commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminCommand {
    /// Move every partition off `node` (it may then be stopped).
    Decommission { node: String },
}

/// `TooLarge` when `len` bytes of `what` are over `max`.
pub fn check_size(what: &str, len: usize, max: usize) -> Result<(), Response> {
    if len > max {
        return Err(err(
            ErrorKind::TooLarge,
            format!("{what} of {len} bytes is over the {max}-byte limit"),
        ));
    }
    Ok(())
}

/// Shorthand for an error response.
pub fn err(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error {
        kind,
        message: message.into(),
    }
}

impl Request {
    /// Whether the request may change data. Writes go through the write gate (their replies,
    /// even refusals, wait for what they were decided on to be durable); reads do not.
    pub fn is_write(&self) -> bool {
        match self {
            Request::Put { .. }
            | Request::Delete { .. }
            | Request::Batch { .. }
            | Request::Incr { .. } => true,
            Request::Get { .. } | Request::Scan { .. } => false,
        }
    }

    /// The user keys the request names, in order (none for a scan, which covers a range).
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            Request::Get { key }
            | Request::Put { key, .. }
            | Request::Delete { key, .. }
            | Request::Incr { key, .. } => vec![key.as_slice()],
            Request::Batch { ops } => ops.iter().map(BatchOp::key).collect(),
            Request::Scan { .. } => Vec::new(),
        }
    }
}

impl BatchOp {
    pub fn key(&self) -> &[u8] {
        match self {
            BatchOp::Put(k, _) | BatchOp::Delete(k) | BatchOp::PutIfAbsent(k, _) => k,
        }
    }
}
