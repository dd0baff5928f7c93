//! CPU time of a process under test (Redis, a server instance), from
//! `/proc/<pid>/stat`: user + system time, read before and after a phase.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Instant;

use crate::stats::round3;

/// User + system CPU time of `pid` so far, in seconds; `None` when the
/// process is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = stat_ticks(&stat)?;
    // SAFETY: sysconf only reads a constant of the system.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / per_s.max(1) as f64)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The
/// command name (field 2) may hold spaces and parentheses, so the fields
/// are counted after its closing parenthesis.
fn stat_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU a process used over a phase.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CpuUse {
    pub pid: u32,
    /// User + system seconds (10 ms resolution on Linux).
    pub cpu_s: f64,
    /// Wall-clock length of the phase.
    pub wall_s: f64,
    /// `cpu_s / wall_s` in percent of one core.
    pub percent_of_core: f64,
}

impl fmt::Display for CpuUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.2} CPU s over {:.2} s = {:.1}% of one core (pid {})",
            self.cpu_s, self.wall_s, self.percent_of_core, self.pid
        )
    }
}

/// A reading taken at the start of a phase.
pub struct CpuMeter {
    pid: u32,
    cpu_s: f64,
    at: Instant,
}

impl CpuMeter {
    /// `None` when there is no such process.
    pub fn start(pid: u32) -> Option<CpuMeter> {
        Some(CpuMeter {
            pid,
            cpu_s: cpu_seconds(pid)?,
            at: Instant::now(),
        })
    }

    /// What the process used since `start`; `None` if it went away.
    pub fn stop(&self) -> Option<CpuUse> {
        let cpu_s = cpu_seconds(self.pid)? - self.cpu_s;
        let wall_s = self.at.elapsed().as_secs_f64();
        Some(CpuUse {
            pid: self.pid,
            cpu_s: round3(cpu_s),
            wall_s: round3(wall_s),
            percent_of_core: round3(cpu_s / wall_s.max(1e-3) * 100.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_user_plus_system_ticks() {
        let line = "1234 (redis (x) y) S 1 1234 1234 0 -1 4194560 500 0 0 0 70 30 0 0 20 0 4 0 100";
        assert_eq!(stat_ticks(line), Some(100));
        assert_eq!(stat_ticks("garbage"), None);
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        let me = std::process::id();
        let m = CpuMeter::start(me).unwrap();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        let u = m.stop().unwrap();
        assert!(u.cpu_s >= 0.0 && u.wall_s > 0.0, "{u}");
        assert!(cpu_seconds(u32::MAX).is_none());
    }
}
