//! Deleting partitions this node no longer owns (after a flip, an aborted move, or a restart
//! that cut a clean-up short), a chunk at a time so the node keeps serving meanwhile; and the
//! wipe of a stale copy before a copy (re)starts.

use crate::engine::WriteBatch;
use crate::node::{engine_err, Node, Output};
use crate::proto::envelope;
use crate::proto::Response;

/// Keys deleted per step when dropping a partition this node no longer owns.
const CLEANUP_CHUNK: usize = 2_000;

impl Node {
    /// Deletes up to `max` keys of partition `p` (after user key `after`) from the local
    /// engine. Returns the last key deleted if more may be left.
    pub(crate) fn delete_partition(
        &mut self,
        p: u16,
        max: usize,
        after: Option<&[u8]>,
        out: &mut Vec<Output>,
    ) -> Result<Option<Vec<u8>>, Response> {
        let (lo, hi) = envelope::partition_range(p, &[], None, after);
        // Every applied write, durable or not: a copy restarted while the previous attempt's
        // pages are not yet durable must delete those too, or keys deleted at the old owner in
        // between would outlive the restart here (the simulation found it).
        let snap = if crate::bugs::on(crate::bugs::Bug::WipeOnlyDurable) {
            self.db.snapshot()
        } else {
            self.db.snapshot_latest()
        };
        let it = snap
            .scan(
                lo.as_ref().map(Vec::as_slice),
                hi.as_ref().map(Vec::as_slice),
            )
            .map_err(engine_err)?;
        let mut b = WriteBatch::new();
        let mut n = 0;
        let mut more = None;
        let mut last: Option<Vec<u8>> = None;
        for kv in it {
            let (k, _) = kv.map_err(engine_err)?;
            if n == max {
                more = last
                    .take()
                    .map(|k: Vec<u8>| envelope::user_key(&k).to_vec());
                break;
            }
            last = Some(k.clone());
            b.delete(k);
            n += 1;
        }
        if n > 0 {
            let seq = self.db.write_deferred(b).map_err(engine_err)?;
            self.gate.applied(seq);
            // Nobody waits for these deletes, but a persist must make them durable and visible.
            self.gate.persist_upto(seq, out);
        }
        Ok(more)
    }

    /// Partitions handed away: delete a chunk at a time.
    pub(crate) fn cleanup_tick(&mut self, out: &mut Vec<Output>) {
        if let Some((&p, after)) = self.ho.cleanup.iter().next() {
            let after = after.clone();
            match self.delete_partition(p, CLEANUP_CHUNK, after.as_deref(), out) {
                Ok(Some(last)) => {
                    self.ho.cleanup.insert(p, Some(last));
                }
                Ok(None) | Err(_) => {
                    self.ho.cleanup.remove(&p);
                }
            }
        }
    }
}
