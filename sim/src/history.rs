//! Client histories and the per-key linearizability checker.
//!
//! Each key is a register (absent, or holding a value), checked on its own: linearizability
//! is compositional, so a history is linearizable when every key's sub-history is. The search
//! is Wing & Gong's with Lowe's memoisation: depth-first over which pending operation takes
//! effect next, remembering every (set of operations done, register value) already explored.
//!
//! Outcomes that a client could not learn (a timeout, a 5xx, a dropped connection) are
//! *unknown*: such a write may take effect at any point after its call, or never, so it is
//! linearized only if that helps. Reads that failed are dropped: they observed nothing.
//!
//! Times are a logical clock over all clients (one simulated client host, so a total order):
//! operation A precedes B exactly when A returned before B was called.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    Get,
    Put(String),
    Delete,
    /// Write `new` only if the key holds `expect` (`None`: only if it is absent).
    Cas {
        expect: Option<String>,
        new: String,
    },
    /// Add `by` to the key's value read as an integer (absent: 0), as Redis's INCRBY does.
    Incr(i64),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// What a successful read returned.
    Read(Option<String>),
    /// A write that the node acknowledged.
    Ok,
    /// A conditional write the node refused (412): its condition did not hold.
    CasFailed,
    /// A delete of a key that was absent (404): nothing changed.
    NotFound,
    /// What a successful increment answered: the key's new value.
    Counted(i64),
    /// No answer the client could rely on: the write may or may not have happened.
    Unknown,
    /// Refused with an error that says nothing was done (a 503 for a dead owner, say). Such
    /// operations are left out of the check: if one did take effect after all, the reads
    /// around it show a value that nothing wrote.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Op {
    pub client: usize,
    pub node: String,
    pub key: String,
    pub kind: OpKind,
    pub call: u64,
    /// `None` for operations whose outcome is unknown (they never "returned").
    pub ret: Option<u64>,
    pub outcome: Outcome,
    /// What the client got, as text (status and body, or why there was no answer).
    pub detail: String,
    /// Sent over the Redis protocol (else HTTP).
    pub resp: bool,
}

/// A value as printed: without the padding that makes values long.
fn short(v: &str) -> &str {
    v.split("-vvv").next().unwrap_or(v)
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ret = self.ret.map_or("?".to_string(), |r| r.to_string());
        let kind = match &self.kind {
            OpKind::Get => "get".to_string(),
            OpKind::Put(v) => format!("put {}", short(v)),
            OpKind::Delete => "delete".to_string(),
            OpKind::Cas { expect, new } => format!(
                "cas {} -> {}",
                expect.as_deref().map_or("absent", short),
                short(new)
            ),
            OpKind::Incr(by) => format!("incr {by}"),
        };
        let outcome = match &self.outcome {
            Outcome::Read(v) => format!("read {}", v.as_deref().map_or("absent", short)),
            o => format!("{o:?}"),
        };
        let client = if self.client == usize::MAX {
            "final".to_string()
        } else {
            format!("c{}", self.client)
        };
        let detail: String = self.detail.chars().take(120).collect();
        write!(
            f,
            "[{:>5}..{:>5}] {client} via {}: {kind} -> {outcome} ({detail})",
            self.call, ret, self.node
        )
    }
}

/// Why a key's history is not linearizable.
#[derive(Debug)]
pub struct Violation {
    pub key: String,
    pub ops: Vec<Op>,
    pub reason: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key {:?}: {}", self.key, self.reason)?;
        for op in &self.ops {
            writeln!(f, "  {op}")?;
        }
        Ok(())
    }
}

/// Explored states beyond which the search gives up (and reports it, as a failure).
const BUDGET: usize = 5_000_000;

/// Checks every key's history; the first violation found, if any.
pub fn check(ops: &[Op]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for op in ops {
        let observed_nothing = matches!(op.kind, OpKind::Get) && op.outcome == Outcome::Unknown;
        if observed_nothing || op.outcome == Outcome::Failed {
            continue;
        }
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    for (key, mut ops) in by_key {
        ops.sort_by_key(|o| o.call);
        check_key(key, &ops)?;
    }
    Ok(())
}

/// The register's values as small integers: 0 is absent, 1 every value that no read returned
/// and no compare-and-set expected (they constrain nothing by themselves, and merging them keeps
/// the search small), and one id each for the rest. Integers always get their own id, since an
/// increment reads them.
struct Values<'a> {
    observed: BTreeMap<&'a str, ()>,
    ids: BTreeMap<String, u32>,
    /// By id: the value read as an integer (absent counts 0), if it is one.
    num: Vec<Option<i64>>,
}

impl<'a> Values<'a> {
    fn intern(&mut self, s: &str) -> u32 {
        let n = parse_int(s);
        if n.is_none() && !self.observed.contains_key(s) {
            return 1;
        }
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.num.len() as u32;
        self.ids.insert(s.to_string(), id);
        self.num.push(n);
        id
    }

    fn int(&mut self, n: i64) -> u32 {
        self.intern(&n.to_string())
    }
}

/// Redis's integer rules, as far as the workload's values need them.
fn parse_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let plain = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits.len() == 1 || !digits.starts_with('0'))
        && s != "-0";
    if plain {
        s.parse().ok()
    } else {
        None
    }
}

/// A register transition, pre-interned: what one operation does to (and demands of) the key's
/// value. Built once per key by [`transitions`], so the search compares small integers only.
#[derive(Clone, Copy)]
enum Transition {
    Read(u32),
    Write(u32),
    /// A delete that found the key: it must have been present.
    Remove,
    Cas {
        expect: u32,
        new: u32,
        ok: Option<bool>,
    },
    /// An increment, and what it answered (`None`: unknown).
    Incr {
        by: i64,
        result: Option<i64>,
    },
}

impl Transition {
    /// The register's value after this transition from `state`, or `None` if it cannot take
    /// effect there (what the operation observed contradicts `state`). Kept apart from the
    /// search so the register's semantics read in one place; it may intern a new integer.
    fn next(self, state: u32, values: &mut Values<'_>) -> Option<u32> {
        match self {
            Transition::Read(v) => (v == state).then_some(state),
            Transition::Write(v) => Some(v),
            Transition::Remove => (state != 0).then_some(0),
            Transition::Cas { expect, new, ok } => {
                let holds = state == expect;
                match ok {
                    Some(true) => holds.then_some(new),
                    Some(false) => (!holds).then_some(state),
                    None => Some(if holds { new } else { state }),
                }
            }
            Transition::Incr { by, result } => {
                let sum = values.num[state as usize].and_then(|m| m.checked_add(by));
                match (sum, result) {
                    (Some(s), Some(r)) => (s == r).then(|| values.int(s)),
                    (Some(s), None) => Some(values.int(s)),
                    // Not a number: an increment fails and changes nothing.
                    (None, Some(_)) => None,
                    (None, None) => Some(state),
                }
            }
        }
    }
}

/// Checks one key's history: builds the transitions once, then searches for a linearization.
fn check_key(key: &str, ops: &[Op]) -> Result<(), Violation> {
    let mut values = Values {
        observed: observed_values(ops),
        ids: BTreeMap::new(),
        num: vec![Some(0), None],
    };
    let trans = transitions(ops, &mut values);
    let class = interchangeable_classes(ops, &trans);
    search(key, ops, &trans, &class, &mut values)
}

/// The values that some read returned or some compare-and-set expected: only these need an id
/// of their own in [`Values`] (every other value constrains nothing and shares id 1).
fn observed_values(ops: &[Op]) -> BTreeMap<&str, ()> {
    let mut observed: BTreeMap<&str, ()> = BTreeMap::new();
    for op in ops {
        match (&op.kind, &op.outcome) {
            (_, Outcome::Read(Some(v))) => {
                observed.insert(v, ());
            }
            (
                OpKind::Cas {
                    expect: Some(v), ..
                },
                _,
            ) => {
                observed.insert(v, ());
            }
            _ => {}
        }
    }
    observed
}

/// Each operation's [`Transition`], in the order of `ops`. Interning happens here, in this
/// order, so that value ids are assigned before the search starts.
fn transitions(ops: &[Op], values: &mut Values<'_>) -> Vec<Transition> {
    let mut trans = Vec::with_capacity(ops.len());
    for op in ops {
        let t = match (&op.kind, &op.outcome) {
            (OpKind::Get, Outcome::Read(v)) => {
                Transition::Read(v.as_deref().map_or(0, |v| values.intern(v)))
            }
            (OpKind::Get, _) => Transition::Read(0),
            (OpKind::Put(v), _) => Transition::Write(values.intern(v)),
            (OpKind::Delete, Outcome::Ok) => Transition::Remove,
            (OpKind::Delete, Outcome::NotFound) => Transition::Read(0),
            (OpKind::Delete, _) => Transition::Write(0),
            (OpKind::Cas { expect, new }, o) => Transition::Cas {
                expect: expect.as_deref().map_or(0, |v| values.intern(v)),
                new: values.intern(new),
                ok: match o {
                    Outcome::Ok => Some(true),
                    Outcome::CasFailed => Some(false),
                    _ => None,
                },
            },
            (OpKind::Incr(by), o) => Transition::Incr {
                by: *by,
                result: match o {
                    Outcome::Counted(r) => Some(*r),
                    _ => None,
                },
            },
        };
        trans.push(t);
    }
    trans
}

/// Unknown writes with the same effect (an unobserved value, or a delete) are
/// interchangeable once called: of those available, only the first needs trying. This gives
/// each such write its class (the value it writes, 0 or 1); every other operation has none.
fn interchangeable_classes(ops: &[Op], trans: &[Transition]) -> Vec<Option<u32>> {
    (0..ops.len())
        .map(|i| match (ops[i].ret, trans[i]) {
            (None, Transition::Write(v)) if v <= 1 => Some(v),
            _ => None,
        })
        .collect()
}

/// Whether operation `i` is among the linearized ones in `bits`.
fn done(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

/// The depth-first search for a linearization (Wing & Gong, with Lowe's memoisation over
/// (operations done, register value)). Separate from building the transitions so that the
/// search loop reads on its own.
fn search(
    key: &str,
    ops: &[Op],
    trans: &[Transition],
    class: &[Option<u32>],
    values: &mut Values<'_>,
) -> Result<(), Violation> {
    let n = ops.len();
    let words = n.div_ceil(64).max(1);
    let required: Vec<usize> = (0..n).filter(|&i| ops[i].ret.is_some()).collect();
    let mut seen: HashSet<(Vec<u64>, u32)> = HashSet::new();
    let mut stack: Vec<(Vec<u64>, u32)> = vec![(vec![0; words], 0)];
    let mut explored = 0usize;
    // The furthest the search got: how many operations it linearized, and which were left.
    let mut deepest: (u32, Vec<u64>) = (0, vec![0; words]);
    while let Some((bits, state)) = stack.pop() {
        if !seen.insert((bits.clone(), state)) {
            continue;
        }
        explored += 1;
        let depth: u32 = bits.iter().map(|w| w.count_ones()).sum();
        if depth > deepest.0 {
            deepest = (depth, bits.clone());
        }
        if explored > BUDGET {
            return Err(Violation {
                key: key.to_string(),
                ops: ops.to_vec(),
                reason: format!("the checker gave up after {BUDGET} states"),
            });
        }
        if required.iter().all(|&i| done(&bits, i)) {
            return Ok(());
        }
        let horizon = horizon(ops, &bits);
        let mut tried: [bool; 2] = [false; 2];
        for i in 0..n {
            if done(&bits, i) || ops[i].call >= horizon {
                continue;
            }
            if let Some(c) = class[i] {
                if tried[c as usize] {
                    continue;
                }
                tried[c as usize] = true;
            }
            if let Some(s) = trans[i].next(state, values) {
                let mut b = bits.clone();
                b[i / 64] |= 1 << (i % 64);
                stack.push((b, s));
            }
        }
    }
    Err(no_linearization(key, ops, &deepest))
}

/// The earliest return among the operations not yet linearized: whatever is linearized next
/// must have been called before it.
fn horizon(ops: &[Op], bits: &[u64]) -> u64 {
    (0..ops.len())
        .filter(|&i| !done(bits, i))
        .filter_map(|i| ops[i].ret)
        .min()
        .unwrap_or(u64::MAX)
}

/// The report when the search ran out of states to try: it names the first operation the
/// furthest attempt (`deepest`: how many fit, and which were done) could not place.
fn no_linearization(key: &str, ops: &[Op], deepest: &(u32, Vec<u64>)) -> Violation {
    let stuck = (0..ops.len())
        .find(|&i| ops[i].ret.is_some() && !done(&deepest.1, i))
        .map(|i| ops[i].to_string())
        .unwrap_or_default();
    Violation {
        key: key.to_string(),
        ops: ops.to_vec(),
        reason: format!(
            "no linearization exists (a stale read, a lost write, or a deleted key that came \
             back); at best {} operations fit, and then this one cannot: {stuck}",
            deepest.0
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: u64, ret: Option<u64>, kind: OpKind, outcome: Outcome) -> Op {
        Op {
            client: 0,
            node: "n1".into(),
            key: "k".into(),
            kind,
            call,
            ret,
            outcome,
            detail: String::new(),
            resp: false,
        }
    }
    fn put(v: &str) -> OpKind {
        OpKind::Put(v.into())
    }
    fn read(v: Option<&str>) -> Outcome {
        Outcome::Read(v.map(str::to_string))
    }

    #[test]
    fn sequential_history_passes_and_a_stale_read_fails() {
        let good = vec![
            op(1, Some(2), put("a"), Outcome::Ok),
            op(3, Some(4), put("b"), Outcome::Ok),
            op(5, Some(6), OpKind::Get, read(Some("b"))),
        ];
        assert!(check(&good).is_ok());
        let stale = vec![
            op(1, Some(2), put("a"), Outcome::Ok),
            op(3, Some(4), put("b"), Outcome::Ok),
            op(5, Some(6), OpKind::Get, read(Some("a"))),
        ];
        assert!(check(&stale).is_err());
    }

    #[test]
    fn concurrent_writes_may_be_read_in_either_order() {
        let h = vec![
            op(1, Some(4), put("a"), Outcome::Ok),
            op(2, Some(5), put("b"), Outcome::Ok),
            op(6, Some(7), OpKind::Get, read(Some("a"))),
        ];
        assert!(check(&h).is_ok());
        // But two later reads cannot disagree.
        let mut h2 = h.clone();
        h2.push(op(8, Some(9), OpKind::Get, read(Some("b"))));
        assert!(check(&h2).is_err());
    }

    #[test]
    fn a_deleted_key_must_not_come_back_and_a_lost_write_is_caught() {
        let back = vec![
            op(1, Some(2), put("a"), Outcome::Ok),
            op(3, Some(4), OpKind::Delete, Outcome::Ok),
            op(5, Some(6), OpKind::Get, read(Some("a"))),
        ];
        assert!(check(&back).is_err());
        let lost = vec![
            op(1, Some(2), put("a"), Outcome::Ok),
            op(3, Some(4), OpKind::Get, read(None)),
        ];
        assert!(check(&lost).is_err());
    }

    #[test]
    fn unknown_writes_may_or_may_not_happen() {
        let seen = vec![
            op(1, None, put("a"), Outcome::Unknown),
            op(5, Some(6), OpKind::Get, read(Some("a"))),
        ];
        assert!(check(&seen).is_ok());
        let unseen = vec![
            op(1, None, put("a"), Outcome::Unknown),
            op(5, Some(6), OpKind::Get, read(None)),
        ];
        assert!(check(&unseen).is_ok());
        // ...but not before they were called.
        let early = vec![
            op(1, Some(2), OpKind::Get, read(Some("a"))),
            op(5, None, put("a"), Outcome::Unknown),
        ];
        assert!(check(&early).is_err());
    }

    #[test]
    fn a_delete_says_whether_the_key_was_there() {
        let h = vec![
            op(1, Some(2), put("a"), Outcome::Ok),
            op(3, Some(4), OpKind::Delete, Outcome::Ok),
            op(5, Some(6), OpKind::Delete, Outcome::NotFound),
        ];
        assert!(check(&h).is_ok());
        let twice = vec![
            op(1, Some(2), put("a"), Outcome::Ok),
            op(3, Some(4), OpKind::Delete, Outcome::Ok),
            op(5, Some(6), OpKind::Delete, Outcome::Ok),
        ];
        assert!(check(&twice).is_err());
        let missed = vec![
            op(1, Some(2), put("a"), Outcome::Ok),
            op(3, Some(4), OpKind::Delete, Outcome::NotFound),
        ];
        assert!(check(&missed).is_err());
    }

    #[test]
    fn compare_and_set_follows_the_register() {
        let cas = |e: Option<&str>, n: &str| OpKind::Cas {
            expect: e.map(str::to_string),
            new: n.into(),
        };
        let ok = vec![
            op(1, Some(2), cas(None, "a"), Outcome::Ok),
            op(3, Some(4), cas(None, "b"), Outcome::CasFailed),
            op(5, Some(6), cas(Some("a"), "c"), Outcome::Ok),
            op(7, Some(8), OpKind::Get, read(Some("c"))),
        ];
        assert!(check(&ok).is_ok());
        let bad = vec![
            op(1, Some(2), put("a"), Outcome::Ok),
            op(3, Some(4), cas(None, "b"), Outcome::Ok),
        ];
        assert!(check(&bad).is_err());
    }

    #[test]
    fn increments_read_the_register_and_a_lost_one_is_caught() {
        let h = vec![
            op(1, Some(2), OpKind::Incr(1), Outcome::Counted(1)),
            op(3, Some(6), OpKind::Incr(1), Outcome::Counted(3)),
            op(4, Some(5), OpKind::Incr(1), Outcome::Counted(2)),
            op(7, Some(8), OpKind::Get, read(Some("3"))),
        ];
        assert!(check(&h).is_ok());
        // Two increments that both answered 2: one of them was lost.
        let lost = vec![
            op(1, Some(2), put("1"), Outcome::Ok),
            op(3, Some(6), OpKind::Incr(1), Outcome::Counted(2)),
            op(4, Some(5), OpKind::Incr(1), Outcome::Counted(2)),
        ];
        assert!(check(&lost).is_err());
        // An unknown increment may have happened: a later read decides.
        let unknown = vec![
            op(1, Some(2), put("5"), Outcome::Ok),
            op(3, None, OpKind::Incr(2), Outcome::Unknown),
            op(4, Some(5), OpKind::Get, read(Some("7"))),
        ];
        assert!(check(&unknown).is_ok());
        // An increment of a value that is not a number cannot succeed.
        let text = vec![
            op(1, Some(2), put("abc"), Outcome::Ok),
            op(3, Some(4), OpKind::Incr(1), Outcome::Counted(1)),
        ];
        assert!(check(&text).is_err());
    }
}
