//! Leveled compaction: which tables to merge (a pure function of the table set), and the merge.
//!
//! Level 0 holds flushed tables, newest first, whose key ranges may overlap. Levels 1.. each hold
//! tables with disjoint key ranges, sorted by key; level `i` may hold `level1_bytes ×
//! multiplier^(i-1)` bytes. When level 0 reaches `l0_trigger` tables, all of them merge into
//! level 1 with the level-1 tables they overlap. Otherwise the level most over its target sends one
//! table (round-robin through the key space) down into the tables it overlaps one level deeper.
//! A table that overlaps nothing below moves down without being rewritten.
//!
//! A tombstone is dropped by a merge only when no deeper level holds a table overlapping the
//! merge's key range: then no older version exists for it to hide.

/// What the picker needs to know of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableShape {
    pub number: u64,
    pub size: u64,
    pub smallest: Vec<u8>,
    pub largest: Vec<u8>,
}

impl TableShape {
    fn overlaps(&self, lo: &[u8], hi: &[u8]) -> bool {
        self.smallest.as_slice() <= hi && self.largest.as_slice() >= lo
    }
}

/// Level sizing knobs.
#[derive(Clone, Copy, Debug)]
pub struct LevelConfig {
    pub l0_trigger: usize,
    pub level1_bytes: u64,
    pub multiplier: u64,
    pub num_levels: usize,
}

/// A compaction to run: merge `inputs` (from `level`) with `overlapping` (from `level + 1`)
/// into new tables at `level + 1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactionPlan {
    pub level: usize,
    pub inputs: Vec<u64>,
    pub overlapping: Vec<u64>,
    /// No table deeper than the output level overlaps: tombstones can go.
    pub drop_tombstones: bool,
    /// The inputs overlap nothing at the output level (nor each other): move, don't rewrite.
    pub trivial_move: bool,
    /// The largest key of the inputs, for the round-robin pointer.
    pub largest: Vec<u8>,
}

fn key_range<'a>(tables: impl Iterator<Item = &'a TableShape>) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut range: Option<(Vec<u8>, Vec<u8>)> = None;
    for t in tables {
        range = Some(match range {
            None => (t.smallest.clone(), t.largest.clone()),
            Some((lo, hi)) => (lo.min(t.smallest.clone()), hi.max(t.largest.clone())),
        });
    }
    range
}

pub fn target_bytes(cfg: &LevelConfig, level: usize) -> u64 {
    let mut t = cfg.level1_bytes;
    for _ in 1..level {
        t = t.saturating_mul(cfg.multiplier);
    }
    t
}

/// Picks the next compaction, or `None` when every level is within its budget.
/// `pointers[i]` is the largest key of the last table compacted out of level `i`.
pub fn pick(
    levels: &[Vec<TableShape>],
    cfg: &LevelConfig,
    pointers: &[Vec<u8>],
) -> Option<CompactionPlan> {
    let last = cfg.num_levels.min(levels.len()).saturating_sub(1);
    let mut best: Option<(f64, usize)> = None;
    for (level, tables) in levels.iter().enumerate().take(last) {
        let score = if level == 0 {
            tables.len() as f64 / cfg.l0_trigger.max(1) as f64
        } else {
            let bytes: u64 = tables.iter().map(|t| t.size).sum();
            bytes as f64 / target_bytes(cfg, level).max(1) as f64
        };
        if score >= 1.0 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, level));
        }
    }
    let (_, level) = best?;
    let inputs: Vec<&TableShape> = if level == 0 {
        levels[0].iter().collect()
    } else {
        let pointer = pointers.get(level).map(Vec::as_slice).unwrap_or(&[]);
        let tables = &levels[level];
        let next = tables
            .iter()
            .find(|t| pointer.is_empty() || t.smallest.as_slice() > pointer)
            .or_else(|| tables.first())?;
        vec![next]
    };
    plan_for(levels, level, inputs)
}

fn plan_for(
    levels: &[Vec<TableShape>],
    level: usize,
    inputs: Vec<&TableShape>,
) -> Option<CompactionPlan> {
    let (lo, hi) = key_range(inputs.iter().copied())?;
    let out = level + 1;
    let overlapping: Vec<&TableShape> = levels
        .get(out)
        .map(|ts| ts.iter().filter(|t| t.overlaps(&lo, &hi)).collect())
        .unwrap_or_default();
    let (all_lo, all_hi) = key_range(inputs.iter().chain(overlapping.iter()).copied())?;
    let deeper_overlap = levels
        .iter()
        .skip(out + 1)
        .any(|ts| ts.iter().any(|t| t.overlaps(&all_lo, &all_hi)));
    let inputs_disjoint = {
        let mut sorted: Vec<&TableShape> = inputs.clone();
        sorted.sort_by(|a, b| a.smallest.cmp(&b.smallest));
        sorted.windows(2).all(|w| w[0].largest < w[1].smallest)
    };
    Some(CompactionPlan {
        level,
        inputs: inputs.iter().map(|t| t.number).collect(),
        overlapping: overlapping.iter().map(|t| t.number).collect(),
        drop_tombstones: !deeper_overlap,
        trivial_move: overlapping.is_empty() && inputs_disjoint,
        largest: hi,
    })
}

/// A plan that merges every table into one level (an explicit full compaction): the deepest
/// level that holds anything, or level 1.
pub fn plan_full(levels: &[Vec<TableShape>]) -> Option<(usize, Vec<u64>)> {
    let all: Vec<u64> = levels.iter().flatten().map(|t| t.number).collect();
    if all.is_empty() {
        return None;
    }
    let bottom = levels
        .iter()
        .rposition(|ts| !ts.is_empty())
        .unwrap_or(1)
        .max(1);
    Some((bottom, all))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(number: u64, lo: &str, hi: &str, size: u64) -> TableShape {
        TableShape {
            number,
            size,
            smallest: lo.as_bytes().to_vec(),
            largest: hi.as_bytes().to_vec(),
        }
    }

    const CFG: LevelConfig = LevelConfig {
        l0_trigger: 2,
        level1_bytes: 100,
        multiplier: 10,
        num_levels: 4,
    };

    #[test]
    fn nothing_to_do_within_budgets() {
        let levels = vec![
            vec![t(1, "a", "c", 10)],
            vec![t(2, "a", "z", 50)],
            vec![],
            vec![],
        ];
        assert_eq!(pick(&levels, &CFG, &[]), None);
    }

    #[test]
    fn level0_merges_into_overlapping_level1_and_keeps_tombstones_above_data() {
        let levels = vec![
            vec![t(5, "b", "d", 10), t(4, "c", "f", 10)],
            vec![t(1, "a", "b", 20), t(2, "e", "g", 20), t(3, "h", "k", 20)],
            vec![t(6, "a", "z", 500)],
            vec![],
        ];
        let p = pick(&levels, &CFG, &[]).unwrap();
        assert_eq!(p.level, 0);
        assert_eq!(p.inputs, vec![5, 4]);
        assert_eq!(p.overlapping, vec![1, 2]);
        assert!(
            !p.drop_tombstones,
            "level 2 holds older data under the range"
        );
        assert!(!p.trivial_move);
    }

    #[test]
    fn oversized_level_moves_one_table_round_robin() {
        let levels = vec![
            vec![],
            vec![t(1, "a", "c", 80), t(2, "d", "f", 80)],
            vec![t(3, "e", "e", 10)],
            vec![],
        ];
        let p = pick(&levels, &CFG, &[]).unwrap();
        assert_eq!((p.level, p.inputs.clone()), (1, vec![1]));
        assert!(p.trivial_move && p.drop_tombstones);
        let p2 = pick(&levels, &CFG, &[vec![], p.largest.clone()]).unwrap();
        assert_eq!(p2.inputs, vec![2]);
        assert_eq!(p2.overlapping, vec![3]);
        assert!(!p2.trivial_move);
    }

    #[test]
    fn full_plan_targets_the_deepest_level() {
        let levels = vec![
            vec![t(4, "a", "b", 1)],
            vec![],
            vec![t(1, "a", "z", 1)],
            vec![],
        ];
        assert_eq!(plan_full(&levels), Some((2, vec![4, 1])));
        let only_l0 = vec![vec![t(4, "a", "b", 1)], vec![], vec![], vec![]];
        assert_eq!(plan_full(&only_l0), Some((1, vec![4])));
        assert_eq!(plan_full(&[vec![], vec![]]), None);
    }
}
