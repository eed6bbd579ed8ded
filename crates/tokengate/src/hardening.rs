//! Process hardening, applied first thing in `main`, before any argument,
//! key or card number is in memory.
//!
//! Card numbers, CVCs and unwrapped keys (with the custodian provider, the
//! root key itself) exist in this process's memory. A core dump would copy
//! them, in the clear, to a file outside the encrypted store: the kernel
//! writes one on `SIGABRT`, `SIGSEGV` or `SIGQUIT` wherever `core_pattern`
//! points, and debugging setups often raise `ulimit -c` for every process.
//! So:
//!
//! - `RLIMIT_CORE` is set to 0, soft and hard: no core file, and the process
//!   cannot raise it again (that needs `CAP_SYS_RESOURCE`). A `core_pattern`
//!   pipe handler (systemd-coredump, apport) reads the same limit and stores
//!   nothing.
//! - On Linux the process is marked not dumpable (`PR_SET_DUMPABLE` 0): with
//!   the default `fs.suid_dumpable = 0` the kernel does not dump it at all,
//!   and other processes of the same user can no longer `ptrace` it or read
//!   its `/proc/<pid>/mem` or `environ` (root still can).
//!
//! If either cannot be applied tokengate refuses to run (fail closed).
//!
//! Swap is the other way memory reaches a disk. [`keep_out_of_swap`] runs
//! in `serve` once the configuration is read: with `lock_memory = true` it
//! locks every page of the process in RAM (and refuses to start if it
//! cannot); without it, it warns when the host has swap.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Apply the hardening above to this process. `Err` names what failed.
pub fn apply() -> Result<(), String> {
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .map_err(|e| format!("cannot disable core dumps (RLIMIT_CORE): {e}"))?;
    // Read back: a limit that did not take is a failure too.
    let now = getrlimit(Resource::Core);
    if now.current != Some(0) || now.maximum != Some(0) {
        return Err("cannot disable core dumps: RLIMIT_CORE is not 0 after setting it".into());
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::process::{DumpableBehavior, dumpable_behavior, set_dumpable_behavior};
        set_dumpable_behavior(DumpableBehavior::NotDumpable)
            .map_err(|e| format!("cannot mark the process not dumpable (PR_SET_DUMPABLE): {e}"))?;
        if !matches!(dumpable_behavior(), Ok(DumpableBehavior::NotDumpable)) {
            return Err("cannot mark the process not dumpable: PR_GET_DUMPABLE disagrees".into());
        }
    }
    Ok(())
}

/// What [`keep_out_of_swap`] found and did, for `/metrics`.
#[derive(Clone, Copy, Debug)]
pub struct MemoryProtection {
    pub locked: bool,
    /// Active swap areas on the host.
    pub swap_areas: usize,
}

impl MemoryProtection {
    /// Publish the process protections as gauges (the recorder must be
    /// installed): core dumps are off whenever tokengate runs at all.
    pub fn publish(self) {
        metrics::gauge!("tokengate_process_core_dumps_disabled").set(1.0);
        metrics::gauge!("tokengate_process_memory_locked").set(f64::from(u8::from(self.locked)));
        metrics::gauge!("tokengate_host_swap_areas").set(self.swap_areas as f64);
    }
}

/// `serve`'s defence against swap (see the module docs). `Err` when
/// `lock` is asked for and the memory cannot be locked.
pub fn keep_out_of_swap(lock: bool) -> Result<MemoryProtection, String> {
    let swaps = std::fs::read_to_string("/proc/swaps")
        .map(|t| active_swaps(&t))
        .unwrap_or_default();
    if lock {
        lock_all()?;
        tracing::info!("memory locked: no page of this process can be swapped out");
        // Locked mappings count against a finite limit as a whole (not
        // only their resident pages); without CAP_IPC_LOCK, a mapping made
        // later beyond it fails, and with it an allocation.
        if let Some(limit) = getrlimit(Resource::Memlock).current
            && !can_lock_beyond_the_limit()
        {
            tracing::warn!(
                limit_bytes = limit,
                "lock_memory: the memory-lock limit is finite; unless tokengate has CAP_IPC_LOCK, \
                 allocations beyond it will fail: set it to unlimited (systemd: LimitMEMLOCK=infinity)"
            );
        }
        return Ok(MemoryProtection {
            locked: true,
            swap_areas: swaps.len(),
        });
    }
    if !swaps.is_empty() {
        tracing::warn!(
            swap = %swaps.join(","),
            "swap is active and lock_memory is off: card data and keys in this process's memory may be \
             written to swap; run without swap or with encrypted swap, or set lock_memory = true"
        );
    }
    Ok(MemoryProtection {
        locked: false,
        swap_areas: swaps.len(),
    })
}

/// Every mapping, present and future, locked as its pages are first touched
/// (`MCL_ONFAULT`: the allocator's reserved but unused address space is not
/// made resident).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn lock_all() -> Result<(), String> {
    use rustix::mm::{MlockAllFlags, mlockall};
    mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT).map_err(|e| {
        format!(
            "lock_memory = true, but the memory cannot be locked ({e}); raise the memory-lock limit \
             (systemd: LimitMEMLOCK=infinity; docker run --ulimit memlock=-1) or grant CAP_IPC_LOCK"
        )
    })
}

/// `CAP_IPC_LOCK` in the effective set: locking is then not limited.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn can_lock_beyond_the_limit() -> bool {
    use rustix::thread::{CapabilitySet, capabilities};
    capabilities(None).is_ok_and(|c| c.effective.contains(CapabilitySet::IPC_LOCK))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn can_lock_beyond_the_limit() -> bool {
    false
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn lock_all() -> Result<(), String> {
    Err("lock_memory = true is supported on Linux only".into())
}

/// The devices or files in use as swap, from `/proc/swaps` (a header line,
/// then one line per area).
fn active_swaps(proc_swaps: &str) -> Vec<String> {
    proc_swaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn core_dumps_are_off_for_good_and_the_process_is_not_dumpable() {
        apply().unwrap();
        let limit = getrlimit(Resource::Core);
        assert_eq!((limit.current, limit.maximum), (Some(0), Some(0)));
        #[cfg(target_os = "linux")]
        assert!(matches!(
            rustix::process::dumpable_behavior(),
            Ok(rustix::process::DumpableBehavior::NotDumpable)
        ));
        // Applying twice is fine (the CLI may be started by a hardened parent).
        apply().unwrap();
    }

    #[test]
    fn swap_areas_are_read_from_proc_swaps() {
        let none = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
        assert!(active_swaps(none).is_empty());
        assert!(active_swaps("").is_empty());
        let two = format!(
            "{none}/dev/dm-1                               partition\t8388604\t\t0\t\t-2\n\
             /swapfile                               file\t\t1048572\t\t0\t\t-3\n"
        );
        assert_eq!(active_swaps(&two), ["/dev/dm-1", "/swapfile"]);
    }
}
