//! Reading a process's memory and CPU time from /proc: resident set
//! (split into anonymous, file-backed and shared memory), proportional set
//! size, the part of both that is shared memfd mappings (on the simulated
//! host: granted and mapped pages, grant tables), threads, open files and
//! mappings. Reading only; nothing here changes the process.

use std::fs;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    /// VmRSS, KiB.
    pub rss: u64,
    /// RssAnon, KiB.
    pub anon: u64,
    /// RssShmem, KiB.
    pub shmem: u64,
    /// Pss from smaps_rollup, KiB (0 if unavailable).
    pub pss: u64,
    /// Rss of the memfd mappings (shared memory of the simulated host), KiB.
    pub memfd_rss: u64,
    /// Pss of the memfd mappings, KiB.
    pub memfd_pss: u64,
    /// Threads.
    pub threads: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Memory mappings (VMAs).
    pub vmas: u64,
}

impl Mem {
    /// Reads process `pid` now.
    pub fn read(pid: u32) -> Mem {
        let mut m = Mem::default();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        for line in status.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let n = first_number(v);
            match k {
                "VmRSS" => m.rss = n,
                "RssAnon" => m.anon = n,
                "RssShmem" => m.shmem = n,
                "Threads" => m.threads = n,
                _ => {}
            }
        }
        let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        for line in rollup.lines() {
            if let Some(v) = line.strip_prefix("Pss:") {
                m.pss = first_number(v);
            }
        }
        // Per mapping: a header line "start-end perms offset dev inode name"
        // and then "Key: value kB" lines.
        let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
        let mut in_memfd = false;
        for line in smaps.lines() {
            if is_vma_header(line) {
                m.vmas += 1;
                in_memfd = line
                    .split_whitespace()
                    .nth(5)
                    .is_some_and(|name| name.starts_with("/memfd:"));
            } else if in_memfd {
                if let Some(v) = line.strip_prefix("Rss:") {
                    m.memfd_rss += first_number(v);
                } else if let Some(v) = line.strip_prefix("Pss:") {
                    m.memfd_pss += first_number(v);
                }
            }
        }
        m.fds = fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        m
    }

    /// Sum of several processes' readings.
    pub fn sum(all: &[Mem]) -> Mem {
        let mut s = Mem::default();
        for m in all {
            s.rss += m.rss;
            s.anon += m.anon;
            s.shmem += m.shmem;
            s.pss += m.pss;
            s.memfd_rss += m.memfd_rss;
            s.memfd_pss += m.memfd_pss;
            s.threads += m.threads;
            s.fds += m.fds;
            s.vmas += m.vmas;
        }
        s
    }

    /// The fields as (name, value, unit) for reports.
    pub fn fields(&self) -> [(&'static str, f64, &'static str); 9] {
        [
            ("RSS", self.rss as f64, "KiB"),
            ("RssAnon", self.anon as f64, "KiB"),
            ("RssShmem", self.shmem as f64, "KiB"),
            ("Pss", self.pss as f64, "KiB"),
            ("memfd Rss", self.memfd_rss as f64, "KiB"),
            ("memfd Pss", self.memfd_pss as f64, "KiB"),
            ("threads", self.threads as f64, ""),
            ("fds", self.fds as f64, ""),
            ("mappings", self.vmas as f64, ""),
        ]
    }
}

fn first_number(s: &str) -> u64 {
    s.split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or(0)
}

/// "7f1c2a000000-7f1c2a021000 rw-p ..." (field lines are "Key:   n kB").
fn is_vma_header(line: &str) -> bool {
    line.split_whitespace().next().is_some_and(|w| {
        w.split_once('-').is_some_and(|(a, b)| {
            !a.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_hexdigit())
        })
    })
}

/// User + system CPU time of process `pid` so far, in milliseconds.
pub fn cpu_ms(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start at ')'.
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|w| w.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after
    // ')' (state is the first there), in USER_HZ ticks: 100 per second
    // on Linux whatever the kernel's HZ.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    ticks as f64 * 10.0
}
