//! Process and build metrics, read at scrape time: `hello_sidecar_build_info` and the standard `process_*`
//! families (names as the Prometheus client libraries' process collectors use them).
//!
//! Linux only: read from `/proc/self` (proc(5)); elsewhere only the build info and the start time appear.
//! `/proc/self/stat` counts CPU time in clock ticks of `USER_HZ`, which the kernel fixes at 100 for user space
//! on every architecture Linux supports (times(2)), so no `sysconf` call is needed.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
};

/// Clock ticks per second in `/proc` times (`USER_HZ`).
const USER_HZ: f64 = 100.0;

/// Encodes `hello_sidecar_build_info` and the process families.
#[derive(Debug)]
pub struct ProcessCollector {
    /// When the process started, seconds since the Unix epoch (from `/proc`, or when this collector was made).
    start_time: f64,
}

impl Default for ProcessCollector {
    fn default() -> Self {
        let fallback = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        Self { start_time: read_start_time().unwrap_or(fallback) }
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let build = [("version", env!("CARGO_PKG_VERSION")), ("git_sha", env!("HELLO_SIDECAR_GIT_SHA"))];
        enc.encode_descriptor(
            "hello_sidecar_build",
            "The running build: its version and git commit (unknown when built outside a git checkout); always 1.",
            None,
            MetricType::Info,
        )?
        .encode_info(&build)?;
        let stat = Stat::read();
        if let Some(cpu) = stat.as_ref().map(|s| s.cpu_seconds) {
            enc.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, f64>(&cpu, None)?;
        }
        if let Some(rss) = read_rss_bytes() {
            enc.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&rss)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            // The directory handle read_dir holds is one of the entries; it is not the process's own.
            let open = fds.count().saturating_sub(1) as u64;
            enc.encode_descriptor("process_open_fds", "Number of open file descriptors.", None, MetricType::Gauge)?
                .encode_gauge(&open)?;
        }
        if let Some(max) = read_max_fds() {
            enc.encode_descriptor(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&max)?;
        }
        enc.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&self.start_time)
    }
}

/// The fields of `/proc/self/stat` used here.
struct Stat {
    cpu_seconds: f64,
    /// Clock ticks after boot when the process started.
    start_ticks: u64,
}

impl Stat {
    fn read() -> Option<Self> {
        parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
    }
}

/// Parses `/proc/<pid>/stat` (proc(5)): the command name (field 2) is in parentheses and may hold spaces, so
/// fields are counted after its closing parenthesis; utime and stime are fields 14 and 15, starttime field 22.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let (utime, stime, start_ticks) = (field(14)?, field(15)?, field(22)?);
    Some(Stat { cpu_seconds: (utime + stime) as f64 / USER_HZ, start_ticks })
}

/// The boot time (`btime` of `/proc/stat`) plus the process's start ticks.
fn read_start_time() -> Option<f64> {
    let stat = Stat::read()?;
    let proc_stat = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: f64 = proc_stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    Some(btime + stat.start_ticks as f64 / USER_HZ)
}

/// `VmRSS` of `/proc/self/status`, in bytes (the file gives kB; no page size needed).
fn read_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().strip_suffix("kB")?.trim();
    kb.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
fn read_max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits.lines().find_map(|l| l.strip_prefix("Max open files"))?.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_a_command_name_with_spaces_and_parentheses() {
        let line = "42 (a b) c) S 1 42 42 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0 1048166 3133440 394 0";
        let s = parse_stat(line).expect("parses");
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.start_ticks, 1048166);
        assert!(parse_stat("42 (x) S 1").is_none());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_memory_and_open_files() {
        assert!(read_rss_bytes().is_some_and(|b| b > 0));
        assert!(read_max_fds().is_some_and(|n| n > 0));
        assert!(read_start_time().is_some_and(|t| t > 1.6e9));
    }
}
