//! Returning freed heap memory to the kernel.
//!
//! glibc's allocator keeps memory freed by the process in its arenas (one per thread
//! that allocated, up to 8 per core) and gives back to the kernel only what is free at
//! the very top of an arena. Start-up allocates and frees a lot on many threads (the
//! OpenAPI documents are rebuilt as each built-in CRD is served, add-on manifests are
//! parsed and applied, informers list every kind), and bursts of work later (a LIST of
//! thousands of objects) do the same, so an idle server kept ~10 MB of freed memory
//! resident: about a third of its anonymous memory. [`spawn_trimmer`] asks the
//! allocator to release the free pages of every arena (`malloc_trim(0)`) a few times
//! after start-up and then once a minute.
//!
//! Invariants: only free memory is released (no object is moved or freed); a trim costs
//! a walk over the free chunks of each arena (well under a millisecond for the heaps of
//! an idle server) and runs on a blocking thread, never on an async worker. On targets
//! whose allocator is not glibc's, the trimmer is not started.

use std::time::Duration;

/// The delays between trims: start-up settles within seconds (CRDs served, add-ons
/// applied, informers synced), so the first trims come early; later ones catch
/// what bursts of requests leave behind.
const EARLY: [Duration; 3] = [
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(15),
];

/// The period of the trims after the early ones.
const PERIOD: Duration = Duration::from_secs(60);

/// The delay before trim number `n` (0-based) of the schedule.
fn delay(n: usize) -> Duration {
    EARLY.get(n).copied().unwrap_or(PERIOD)
}

/// Releases the allocator's free pages to the kernel; true if any memory was released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() -> bool {
    // SAFETY: malloc_trim only reads and updates glibc's own allocator state under its
    // arena locks; it has no preconditions on the caller.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Releases the allocator's free pages to the kernel (nothing to do on this target).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

/// Starts the trimmer on the current tokio runtime: [`trim`] after 5, 15 and 30 s,
/// then every minute, until the runtime shuts down.
pub fn spawn_trimmer() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    tokio::spawn(async {
        for n in 0.. {
            tokio::time::sleep(delay(n)).await;
            let started = std::time::Instant::now();
            match tokio::task::spawn_blocking(trim).await {
                Ok(released) => tracing::debug!(
                    released,
                    us = started.elapsed().as_micros() as u64,
                    "heap trimmed"
                ),
                Err(_) => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_early_then_periodic() {
        let total: Duration = (0..3).map(delay).sum();
        assert_eq!(total, Duration::from_secs(30));
        assert_eq!(delay(3), PERIOD);
        assert_eq!(delay(1000), PERIOD);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn trim_releases_freed_memory() {
        fn resident_kb() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").expect("status");
            status
                .lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .expect("RssAnon")
        }
        // Many small blocks (below the mmap threshold, so they live in the arena),
        // touched, then freed except the last one (which pins the arena's top, so
        // glibc's automatic top trimming cannot release the rest).
        let mut blocks: Vec<Vec<u8>> = (0..4096).map(|_| vec![1u8; 16 * 1024]).collect();
        let keep = blocks.pop();
        drop(blocks);
        let before = resident_kb();
        assert!(trim(), "malloc_trim released nothing");
        let after = resident_kb();
        assert!(
            after + 16 * 1024 < before,
            "RssAnon {before} kB -> {after} kB: expected at least 16 MB released"
        );
        drop(keep);
    }
}
