//! CPU time used during a measurement by this process and by the local
//! servers it talks to, from `/proc/<pid>/task/*/schedstat`. It tells a
//! side that is short of CPU from one that waits, and which process spends
//! it.

use std::collections::HashMap;

/// CPU time (ns) used during a measurement: by this process, and by each
/// server of [`CpuMeter::start`] (`None` if no process of that name runs
/// on this machine).
#[derive(Clone)]
pub(super) struct Cpu {
    pub(super) process: u64,
    pub(super) servers: Vec<Option<u64>>,
}

/// Reads the CPU time of this process and of every process of each server
/// name at start, and their growth when [`CpuMeter::stop`] is called.
pub(super) struct CpuMeter {
    process_at_start: u64,
    servers: Vec<(&'static str, HashMap<u32, u64>)>,
}

impl CpuMeter {
    /// Starts measuring; `servers` are process names (`comm`), such as
    /// `nats-server` or `postgres` (whose backends are one process each).
    pub(super) fn start(servers: &[&'static str]) -> CpuMeter {
        CpuMeter {
            process_at_start: cpu_ns("self"),
            servers: servers
                .iter()
                .map(|&name| (name, processes_named(name)))
                .collect(),
        }
    }

    /// The CPU time used since [`CpuMeter::start`]. A server process that
    /// started since counts whole; one that exited is not counted.
    pub(super) fn stop(self) -> Cpu {
        let process = cpu_ns("self").saturating_sub(self.process_at_start);
        let servers = self
            .servers
            .iter()
            .map(|(name, at_start)| {
                let now = processes_named(name);
                (!now.is_empty() || !at_start.is_empty()).then(|| {
                    now.iter()
                        .map(|(pid, ns)| ns.saturating_sub(at_start.get(pid).copied().unwrap_or(0)))
                        .sum()
                })
            })
            .collect();
        Cpu { process, servers }
    }
}

/// CPU time (ns) used so far by the live threads of process `pid` (`self`
/// or a number), from `/proc/<pid>/task/*/schedstat`; 0 where unreadable.
fn cpu_ns(pid: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The processes called `name` that run here, with the CPU time each has
/// used so far.
fn processes_named(name: &str) -> HashMap<u32, u64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim() == name).then(|| (pid, cpu_ns(&pid.to_string())))
        })
        .collect()
}
