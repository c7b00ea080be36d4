//! The standard `process_*` series (as the Go and Java clients export
//! them), read from `/proc/self` when `/metrics` is scraped: nothing is
//! kept or updated between scrapes. On other systems the collector
//! exports nothing.
//!
//! | metric | type | from |
//! |---|---|---|
//! | `process_cpu_seconds_total` | counter | user + system time (`/proc/self/stat`) |
//! | `process_resident_memory_bytes` | gauge | `VmRSS` (`/proc/self/status`) |
//! | `process_virtual_memory_bytes` | gauge | `vsize` (`/proc/self/stat`) |
//! | `process_open_fds` | gauge | entries of `/proc/self/fd` |
//! | `process_max_fds` | gauge | the soft `Max open files` (`/proc/self/limits`) |
//! | `process_start_time_seconds` | gauge | Unix time: boot time (`/proc/stat`) + start ticks |
//! | `process_threads` | gauge | `num_threads` (`/proc/self/stat`) |
//!
//! Clock ticks are `USER_HZ`, which Linux fixes at 100 for user space on
//! every architecture it exports `/proc` times for (the Go client assumes
//! the same).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// `USER_HZ`: the unit of the times in `/proc/<pid>/stat`.
const TICKS_PER_SECOND: f64 = 100.0;

/// Why a `/proc` file could not be read into a value.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("reading {path}: {source}")]
    Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: unexpected format")]
    Format(&'static str),
}

/// What `/proc/self/stat` says (the fields the collector exports).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub cpu_seconds: f64,
    pub threads: i64,
    /// Clock ticks after boot.
    pub start_ticks: u64,
    pub virtual_bytes: u64,
}

/// Parse `/proc/<pid>/stat`. The command name (field 2) is in parentheses
/// and may hold spaces or parentheses itself: the fields are counted from
/// the last `)`.
pub fn parse_stat(text: &str) -> Result<Stat, ProcError> {
    const WHAT: &str = "/proc/self/stat";
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or(ProcError::Format(WHAT))?;
    // rest[0] is field 3 (state): field n is rest[n - 3].
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let field = |n: usize| -> Result<u64, ProcError> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or(ProcError::Format(WHAT))
    };
    let (utime, stime) = (field(14)?, field(15)?);
    Ok(Stat {
        cpu_seconds: (utime + stime) as f64 / TICKS_PER_SECOND,
        threads: i64::try_from(field(20)?).map_err(|_| ProcError::Format(WHAT))?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
    })
}

/// `VmRSS` of `/proc/<pid>/status`, in bytes.
pub fn parse_resident_bytes(status: &str) -> Result<u64, ProcError> {
    const WHAT: &str = "/proc/self/status";
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or(ProcError::Format(WHAT))?;
    let kib: u64 = line
        .trim()
        .strip_suffix("kB")
        .and_then(|n| n.trim().parse().ok())
        .ok_or(ProcError::Format(WHAT))?;
    Ok(kib * 1024)
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits` (`None`:
/// unlimited).
pub fn parse_max_fds(limits: &str) -> Result<Option<u64>, ProcError> {
    const WHAT: &str = "/proc/self/limits";
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .ok_or(ProcError::Format(WHAT))?;
    match line.split_ascii_whitespace().next() {
        Some("unlimited") => Ok(None),
        Some(n) => n.parse().map(Some).map_err(|_| ProcError::Format(WHAT)),
        None => Err(ProcError::Format(WHAT)),
    }
}

/// `btime` of `/proc/stat`: the boot time, in Unix seconds.
pub fn parse_boot_time(stat: &str) -> Result<u64, ProcError> {
    const WHAT: &str = "/proc/stat";
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or(ProcError::Format(WHAT))
}

fn read(path: &'static str) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|source| ProcError::Read { path, source })
}

fn open_fds() -> Result<i64, ProcError> {
    const PATH: &str = "/proc/self/fd";
    let dir = std::fs::read_dir(PATH).map_err(|source| ProcError::Read { path: PATH, source })?;
    // The directory handle being read is one of the entries: not counted.
    Ok((dir.count() as i64 - 1).max(0))
}

/// One scrape's reading of `/proc/self`: each value that could be read.
#[derive(Debug, Default)]
struct Reading {
    stat: Option<Stat>,
    resident_bytes: Option<u64>,
    open_fds: Option<i64>,
    max_fds: Option<u64>,
    start_time_seconds: Option<f64>,
}

fn ok<T>(r: Result<T, ProcError>) -> Option<T> {
    r.map_err(|e| tracing::debug!(error = %e, "process metric not read"))
        .ok()
}

impl Reading {
    fn now() -> Reading {
        let stat = ok(read("/proc/self/stat").and_then(|t| parse_stat(&t)));
        let boot = ok(read("/proc/stat").and_then(|t| parse_boot_time(&t)));
        Reading {
            stat,
            resident_bytes: ok(read("/proc/self/status").and_then(|t| parse_resident_bytes(&t))),
            open_fds: ok(open_fds()),
            max_fds: ok(read("/proc/self/limits").and_then(|t| parse_max_fds(&t))).flatten(),
            start_time_seconds: stat
                .zip(boot)
                .map(|(s, b)| b as f64 + s.start_ticks as f64 / TICKS_PER_SECOND),
        }
    }
}

/// The `process_*` collector (registered by [`super::Metrics`]). Help
/// texts end with a full stop, as the registry writes its own.
#[derive(Debug, Default)]
pub struct ProcessCollector;

fn gauge<V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: Option<V>,
) -> Result<(), std::fmt::Error>
where
    V: prometheus_client::encoding::EncodeGaugeValue,
{
    let Some(v) = value else { return Ok(()) };
    let g = ConstGauge::new(v);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if !cfg!(target_os = "linux") {
            return Ok(());
        }
        let r = Reading::now();
        if let Some(s) = r.stat {
            let c = ConstCounter::new(s.cpu_seconds);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                c.metric_type(),
            )?)?;
        }
        let e = &mut encoder;
        gauge(
            e,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            r.resident_bytes.map(|b| b as f64),
        )?;
        gauge(
            e,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            r.stat.map(|s| s.virtual_bytes as f64),
        )?;
        gauge(
            e,
            "process_open_fds",
            "Number of open file descriptors.",
            r.open_fds,
        )?;
        gauge(
            e,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            r.max_fds.map(|n| n as f64),
        )?;
        gauge(
            e,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            r.start_time_seconds,
        )?;
        gauge(
            e,
            "process_threads",
            "Number of OS threads in the process.",
            r.stat.map(|s| s.threads),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name with a space and a `)` of its own.
        let text = "4242 (trp) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 7 0 123456 987654321 2048 18446744073709551615";
        let s = parse_stat(text).unwrap();
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.threads, 7);
        assert_eq!(s.start_ticks, 123456);
        assert_eq!(s.virtual_bytes, 987654321);
        assert!(matches!(parse_stat("4242 (trp"), Err(ProcError::Format(_))));
        assert!(matches!(
            parse_stat("1 (a) S 1 2"),
            Err(ProcError::Format(_))
        ));
    }

    #[test]
    fn status_limits_and_boot_time() {
        let status = "Name:\ttrp\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t7\n";
        assert_eq!(parse_resident_bytes(status).unwrap(), 1234 * 1024);
        assert!(parse_resident_bytes("Name:\ttrp\n").is_err());
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits).unwrap(), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_fds(unlimited).unwrap(), None);
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n").unwrap(),
            1_700_000_000
        );
        assert!(parse_boot_time("cpu 1\n").is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_as_alive() {
        let r = Reading::now();
        let stat = r.stat.expect("/proc/self/stat");
        assert!(stat.threads >= 1);
        assert!(stat.virtual_bytes > 0);
        assert!(r.resident_bytes.expect("VmRSS") > 0);
        // Stdin, stdout and stderr at least (the test harness keeps them).
        assert!(r.open_fds.expect("/proc/self/fd") >= 3);
        // Started after 2020 (a Unix time, not ticks since boot).
        assert!(r.start_time_seconds.expect("start time") > 1.5e9);
    }
}
