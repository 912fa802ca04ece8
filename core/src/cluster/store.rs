//! The conditional store behind every coordinator that is not ZooKeeper (the embedded
//! default's, the simulation's fake, the node's tests): one value and a stamp, written only
//! by a caller that names the current stamp, exactly as ZooKeeper's versioned `setData` (and
//! `create` for stamp -1) behaves.

use super::{ClusterState, CoordEvent};

/// One value with ZooKeeper's version semantics: the stamp is -1 while nothing was written,
/// and goes up by one with every successful write.
#[derive(Clone, Debug)]
pub struct StateStore<T> {
    value: Option<T>,
    stamp: i64,
}

impl<T> Default for StateStore<T> {
    fn default() -> Self {
        StateStore {
            value: None,
            stamp: -1,
        }
    }
}

impl<T: Clone> StateStore<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn value(&self) -> Option<&T> {
        self.value.as_ref()
    }

    pub fn stamp(&self) -> i64 {
        self.stamp
    }

    /// Writes `value` if `expected` is the current stamp; `true` if it did.
    pub fn write(&mut self, value: T, expected: i64) -> bool {
        if expected != self.stamp {
            return false;
        }
        self.value = Some(value);
        self.stamp += 1;
        true
    }

    /// What a coordinator says of a write: nothing when it was made, else why not.
    pub fn write_message(ok: bool) -> &'static str {
        if ok {
            ""
        } else {
            "version changed"
        }
    }

    /// The event that answers a write.
    pub fn write_done(ok: bool) -> CoordEvent {
        CoordEvent::WriteDone {
            ok,
            message: Self::write_message(ok).to_string(),
        }
    }
}

impl StateStore<ClusterState> {
    /// The event that tells a node the current state.
    pub fn state_event(&self) -> CoordEvent {
        CoordEvent::State {
            state: self.value.clone(),
            stamp: self.stamp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_must_name_the_current_stamp() {
        let mut s: StateStore<u32> = StateStore::new();
        assert_eq!((s.value(), s.stamp()), (None, -1));
        assert!(!s.write(1, 0), "nothing was written yet: only -1 creates");
        assert!(s.write(1, -1));
        assert!(!s.write(2, -1), "a stale stamp changes nothing");
        assert_eq!((s.value(), s.stamp()), (Some(&1), 0));
        assert!(s.write(2, 0));
        assert_eq!((s.value(), s.stamp()), (Some(&2), 1));
        assert!(matches!(
            StateStore::<u32>::write_done(false),
            CoordEvent::WriteDone { ok: false, .. }
        ));
    }
}
