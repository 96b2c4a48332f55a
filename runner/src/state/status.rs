//! `/proc/PID/status`: the fields that must survive a checkpoint/restore.

/// The compared fields, in report order: identity, credentials (`Uid` and
/// `Gid` hold real, effective, saved and fs ids; `Groups` the supplementary
/// groups), signals, capabilities, no_new_privs, seccomp (mode and number
/// of filters), THP disable (`THP_enabled`, PR_SET_THP_DISABLE), the
/// speculation-control prctls, the tagged-address mask, x86 thread
/// features (shadow stack, where the kernel shows them) and CPU and memory
/// node affinity (the list forms; the mask forms say the same). Left out
/// on purpose: `State` and `TracerPid` (the runner's own ptrace stop),
/// `SigQ` and every counter or memory statistic (they legitimately
/// change), `Ngid` (the NUMA balancer's choice), `Kthread`,
/// `CoreDumping`.
pub const COMPARED_FIELDS: &[&str] = &[
    "Name",
    "Umask",
    "Tgid",
    "Pid",
    "PPid",
    "NStgid",
    "NSpid",
    "NSpgid",
    "NSsid",
    "Uid",
    "Gid",
    "Groups",
    "Threads",
    "SigPnd",
    "ShdPnd",
    "SigBlk",
    "SigIgn",
    "SigCgt",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
    "Seccomp_filters",
    "THP_enabled",
    "Speculation_Store_Bypass",
    "SpeculationIndirectBranch",
    "untag_mask",
    "x86_Thread_features",
    "x86_Thread_features_locked",
    "Cpus_allowed_list",
    "Mems_allowed_list",
];

/// The fields of [`COMPARED_FIELDS`] that belong to each thread rather than
/// to the process: compared for every thread but the main one (whose values
/// are the process's lines), from `/proc/PID/task/TID/status`.
pub const THREAD_FIELDS: &[&str] = &[
    "Name",
    "Uid",
    "Gid",
    "Groups",
    "SigPnd",
    "SigBlk",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
    "Seccomp_filters",
    "Speculation_Store_Bypass",
    "SpeculationIndirectBranch",
    "x86_Thread_features",
    "x86_Thread_features_locked",
    "Cpus_allowed_list",
    "Mems_allowed_list",
];

/// The [`THREAD_FIELDS`] present in `fields`, in that order.
pub fn select_thread(fields: &[(String, String)]) -> Vec<(String, String)> {
    THREAD_FIELDS
        .iter()
        .filter_map(|name| fields.iter().find(|(k, _)| k == name).cloned())
        .collect()
}

/// Every `Key: value` line, values with runs of whitespace collapsed to one
/// space (`Uid:\t0\t0\t0\t0` gives `("Uid", "0 0 0 0")`).
pub fn parse(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| {
            let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
            (key.trim().to_string(), value)
        })
        .collect()
}

/// The [`COMPARED_FIELDS`] present in `fields`, in that order.
pub fn select(fields: &[(String, String)]) -> Vec<(String, String)> {
    COMPARED_FIELDS
        .iter()
        .filter_map(|name| fields.iter().find(|(k, _)| k == name).cloned())
        .collect()
}

/// The state letter (`R`, `S`, `T`, `t`, `Z`...) of a status text.
pub fn state_letter(text: &str) -> Option<char> {
    parse(text)
        .into_iter()
        .find(|(k, _)| k == "State")
        .and_then(|(_, v)| v.chars().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\n\
        Pid:\t42\nPPid:\t1\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n\
        NSpid:\t42\nThreads:\t1\nSigQ:\t0/63432\nSigPnd:\t0000000000000000\n\
        SigBlk:\t0000000000010000\nVmRSS:\t  1024 kB\n";

    #[test]
    fn parses_and_normalises_whitespace() {
        let fields = parse(SAMPLE);
        assert!(fields.contains(&("Uid".into(), "0 0 0 0".into())));
        assert!(fields.contains(&("Groups".into(), "".into())));
        assert!(fields.contains(&("VmRSS".into(), "1024 kB".into())));
        assert_eq!(state_letter(SAMPLE), Some('S'));
        assert_eq!(state_letter("Name:\tx\n"), None);
    }

    #[test]
    fn thread_fields_are_compared_fields() {
        for f in THREAD_FIELDS {
            assert!(COMPARED_FIELDS.contains(f), "{f}");
        }
        let keys: Vec<_> = select_thread(&parse(SAMPLE))
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["Name", "Uid", "Gid", "Groups", "SigPnd", "SigBlk"]);
    }

    #[test]
    fn selects_compared_fields_in_order() {
        let selected = select(&parse(SAMPLE));
        let keys: Vec<_> = selected.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "Name", "Umask", "Tgid", "Pid", "PPid", "NSpid", "Uid", "Gid", "Groups", "Threads",
                "SigPnd", "SigBlk"
            ]
        );
        assert!(!keys.contains(&"State"));
        assert!(!keys.contains(&"TracerPid"));
        assert!(!keys.contains(&"SigQ"));
    }
}
