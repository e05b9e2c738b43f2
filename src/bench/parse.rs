//! What the benchmark reads from other programs: valgrind's instruction
//! count, a process's memory, the machine's description.

/// Instructions counted by `valgrind --tool=callgrind` (its stderr line
/// `==PID== Collected : N`), summed over every process it followed.
pub fn callgrind_instructions(stderr: &str) -> Option<u64> {
    let counts: Vec<u64> = stderr
        .lines()
        .filter_map(|l| l.split_once("Collected :").map(|(_, n)| n.trim().replace(',', "")))
        .filter_map(|n| n.parse().ok())
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

/// `VmRSS` of a `/proc/PID/status` text, in KiB.
pub fn rss_kib(status: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok())
}

/// The CPU model from `/proc/cpuinfo`.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "model name").then(|| v.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callgrind_counts_are_summed_over_processes() {
        let out = "==12== Callgrind, a call-graph generating cache profiler\n==12== Events    : Ir\n\
                   ==12== Collected : 351,207\n==12== \n==12== I   refs:      351,207\n==13== Collected : 1000\n";
        assert_eq!(callgrind_instructions(out), Some(352_207));
        assert_eq!(callgrind_instructions("valgrind: no such file"), None);
    }

    #[test]
    fn rss_and_cpu_come_from_proc_texts() {
        assert_eq!(rss_kib("Name:\todfs\nVmPeak:\t  9000 kB\nVmRSS:\t   11008 kB\n"), Some(11008));
        assert_eq!(rss_kib("Name:\tkthread\n"), None);
        assert_eq!(cpu_model("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t: x\n").as_deref(), Some("AMD EPYC"));
    }
}
