//! The prototype's failures, replayed as named scenarios: each runs a few seeds with its
//! scripted faults, passes every checker, and shows that the situation it names happened.

use corecache_sim::{run, Config, Report, Scenario};

fn scenario(s: Scenario) -> Vec<Report> {
    let rs: Vec<Report> = (0..5)
        .map(|seed| run(&Config::scenario(seed, s)).unwrap_or_else(|f| panic!("{s:?}: {f}")))
        .collect();
    for r in &rs {
        println!(
            "{s:?} seed {}: {} ops, {} acknowledged writes ({} deletes), {} unknown, {} flushes, \
             {} compactions, {} crashes, {} leader changes",
            r.seed,
            r.ops,
            r.acknowledged_writes,
            r.acknowledged_deletes,
            r.unknown,
            r.flushes,
            r.compactions,
            r.crashes,
            r.leader_changes
        );
    }
    rs
}

#[test]
fn inserts_racing_a_memtable_flush_lose_nothing() {
    let rs = scenario(Scenario::InsertsRacingFlush);
    for r in &rs {
        // Writes kept coming while memtables were flushed under them, and every acknowledged
        // one is there (the checker read them back).
        assert!(r.flushes >= 10, "too few flushes: {r:?}");
        assert!(r.acknowledged_writes >= 500, "too few writes: {r:?}");
        assert_eq!(r.unknown, 0, "writes stalled or failed: {r:?}");
    }
}

#[test]
fn a_crash_after_an_unflushed_delete_does_not_bring_the_key_back() {
    let rs = scenario(Scenario::CrashAfterUnflushedDelete);
    for r in &rs {
        assert_eq!(r.crashes, 3, "{r:?}");
    }
    // Deletes were acknowledged and the key was later read as absent through the crashes
    // (the linearizability check holds every read to the last acknowledged write).
    let deletes: usize = rs.iter().map(|r| r.acknowledged_deletes).sum();
    assert!(deletes > 100, "too few acknowledged deletes: {deletes}");
}

#[test]
fn compacting_a_key_live_in_one_table_and_deleted_in_a_newer_one_keeps_it_deleted() {
    let rs = scenario(Scenario::CompactionOfLiveAndDeleted);
    for r in &rs {
        assert!(r.compactions >= 3, "too few compactions: {r:?}");
        assert!(r.acknowledged_deletes > 20, "too few deletes: {r:?}");
    }
}

#[test]
fn a_leader_cut_off_from_the_coordinator_while_clients_reach_it_is_replaced() {
    let rs = scenario(Scenario::LeaderCutOffFromCoordinator);
    for r in &rs {
        assert_eq!(r.leader_isolations, 1, "{r:?}");
        assert!(r.leader_changes >= 1, "no new leader: {r:?}");
    }
}
