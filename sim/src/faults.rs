//! Faults: drawn per seed (or scripted for a named scenario), and the per-link bookkeeping that
//! lets overlapping faults on one link end when the last of them does.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{node_name, Config, Rng, Scenario, STARTUP};

/// A fault and when it starts and ends (relative to the start of the run).
#[derive(Clone, Debug)]
pub(crate) enum Fault {
    Crash {
        node: usize,
    },
    /// Both ways: messages are held, then delivered on release (TCP retransmits after a
    /// partition heals).
    Partition {
        a: String,
        b: String,
    },
    /// One way: messages from `from` to `to` are dropped.
    OneWay {
        from: String,
        to: String,
    },
    /// The node's session traffic is held: its session expires if this lasts.
    CoordinatorCutOff {
        node: usize,
    },
    /// The node reaches only its clients: not the coordinator, not the other nodes.
    Isolate {
        node: usize,
    },
    /// `Isolate` of whichever node leads when the fault starts.
    IsolateLeader,
    /// A crash that loses the node's disk for good: it comes back on an empty one (with
    /// replicas only: without them, its keys are gone by design).
    Wipe {
        node: usize,
    },
    /// The node stops for a while (a long GC pause, a stopped VM): nothing reaches it and
    /// nothing leaves it, then everything held is delivered at once. Drawn longer than a
    /// read lease, so a paused primary wakes up deposed.
    Pause {
        node: usize,
    },
}

fn scripted_faults(cfg: &Config, scenario: Scenario) -> Vec<(Duration, Duration, Fault)> {
    let at = |ms: u64| STARTUP + Duration::from_millis(ms);
    match scenario {
        Scenario::InsertsRacingFlush | Scenario::CompactionOfLiveAndDeleted => Vec::new(),
        Scenario::CrashAfterUnflushedDelete => (0..cfg.nodes)
            .map(|n| {
                let start = 1500 + 2000 * n as u64;
                (at(start), at(start + 800), Fault::Crash { node: n })
            })
            .collect(),
        Scenario::LeaderCutOffFromCoordinator => {
            vec![(at(2000), at(6000), Fault::IsolateLeader)]
        }
    }
}

pub(crate) fn draw_faults(cfg: &Config, rng: &mut Rng) -> Vec<(Duration, Duration, Fault)> {
    if let Some(s) = cfg.scenario {
        return scripted_faults(cfg, s);
    }
    let mut out = Vec::new();
    if !cfg.faults {
        return out;
    }
    let phase = cfg.fault_phase.as_millis() as u64;
    let count = 1 + rng.below(4);
    for _ in 0..count {
        let start = STARTUP + Duration::from_millis(rng.below(phase * 2 / 3));
        let n = cfg.total_nodes();
        let node = rng.below(n as u64) as usize;
        let other = (node + 1 + rng.below(n as u64 - 1) as usize) % n;
        let (fault, len) = match rng.below(100) {
            // With replicas, a crash may lose the disk, and a node may pause past its lease.
            0..=29 if cfg.crashes && cfg.replication_factor > 1 && rng.chance(30) => {
                (Fault::Wipe { node }, rng.ms(300, 3000))
            }
            65..=84 if cfg.replication_factor > 1 && rng.chance(40) => {
                (Fault::Pause { node }, rng.ms(2500, 5000))
            }
            0..=29 if cfg.crashes => (Fault::Crash { node }, rng.ms(300, 3000)),
            0..=29 => (Fault::CoordinatorCutOff { node }, rng.ms(300, 3000)),
            30..=49 => {
                let b = if rng.chance(25) {
                    "client".to_string()
                } else {
                    node_name(other)
                };
                (
                    Fault::Partition {
                        a: node_name(node),
                        b,
                    },
                    rng.ms(300, 4000),
                )
            }
            50..=64 => (
                Fault::OneWay {
                    from: node_name(node),
                    to: node_name(other),
                },
                rng.ms(300, 3000),
            ),
            65..=84 => (Fault::CoordinatorCutOff { node }, rng.ms(500, 4000)),
            _ => (Fault::Isolate { node }, rng.ms(500, 4000)),
        };
        let end = (start + len).min(STARTUP + cfg.fault_phase);
        out.push((start, end, fault));
    }
    out.sort_by_key(|(s, _, _)| *s);
    out
}

/// The network faults in force, counted per link, so that overlapping faults on one link end
/// when the last of them does.
#[derive(Default)]
pub(crate) struct Links {
    /// Both ways, held (sorted pair).
    held: BTreeMap<(String, String), usize>,
    /// One way, dropped (from, to).
    cut: BTreeMap<(String, String), usize>,
}

fn sorted(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

impl Links {
    pub(crate) fn hold(&mut self, sim: &turmoil::Sim<'_>, a: &str, b: &str) {
        let n = self.held.entry(sorted(a, b)).or_default();
        if *n == 0 {
            sim.hold(a, b);
        }
        *n += 1;
    }

    pub(crate) fn release(&mut self, sim: &turmoil::Sim<'_>, a: &str, b: &str) {
        let key = sorted(a, b);
        if let Some(n) = self.held.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&key);
                sim.release(a, b);
            }
        }
    }

    pub(crate) fn cut(&mut self, sim: &turmoil::Sim<'_>, from: &str, to: &str) {
        let n = self
            .cut
            .entry((from.to_string(), to.to_string()))
            .or_default();
        if *n == 0 {
            sim.partition_oneway(from, to);
        }
        *n += 1;
    }

    pub(crate) fn mend(&mut self, sim: &turmoil::Sim<'_>, from: &str, to: &str) {
        let key = (from.to_string(), to.to_string());
        if let Some(n) = self.cut.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.cut.remove(&key);
                sim.repair_oneway(from, to);
            }
        }
    }

    /// Puts back the faults in force on `host`'s links (after they were partitioned and
    /// repaired around a crash).
    pub(crate) fn restore(&self, sim: &turmoil::Sim<'_>, host: &str) {
        for (a, b) in self.held.keys() {
            if a == host || b == host {
                sim.hold(a.as_str(), b.as_str());
            }
        }
        for (from, to) in self.cut.keys() {
            if from == host || to == host {
                sim.partition_oneway(from.as_str(), to.as_str());
            }
        }
    }
}

pub(crate) enum Action {
    Start(Fault),
    End(Fault),
}
