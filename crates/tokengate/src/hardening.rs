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
//! Memory locking against swap is left to the host (no swap, or encrypted
//! swap): see docs/operator-guide.md.

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
}
