//! Speculation control (PR_SET_SPECULATION_CTRL) as /proc/PID/status
//! shows it. A per-task state ("thread mitigated"...) is set back with
//! prctl; any other value is system-wide, so a task can only be restored
//! where the restoring engine (whose state a forked stub inherits) shows
//! the same.

/// PR_SPEC_STORE_BYPASS, PR_SPEC_INDIRECT_BRANCH.
const STORE_BYPASS: u64 = 0;
const INDIRECT_BRANCH: u64 = 1;
const PR_SPEC_ENABLE: u64 = 1 << 1;
const PR_SPEC_DISABLE: u64 = 1 << 2;
const PR_SPEC_FORCE_DISABLE: u64 = 1 << 3;

/// The prctl (which, value) that puts a task in the state `line`
/// (e.g. "Speculation_Store_Bypass:\tthread mitigated") shows, if the
/// state is per task.
pub(crate) fn settable(line: &str) -> Option<(u64, u64)> {
    let (key, value) = line.split_once(':')?;
    let which = match key {
        "Speculation_Store_Bypass" => STORE_BYPASS,
        "SpeculationIndirectBranch" => INDIRECT_BRANCH,
        _ => return None,
    };
    let value = match (which, value.trim()) {
        (STORE_BYPASS, "thread force mitigated") => PR_SPEC_FORCE_DISABLE,
        (STORE_BYPASS, "thread mitigated") => PR_SPEC_DISABLE,
        (STORE_BYPASS, "thread vulnerable") => PR_SPEC_ENABLE,
        (INDIRECT_BRANCH, "conditional force disabled") => PR_SPEC_FORCE_DISABLE,
        (INDIRECT_BRANCH, "conditional disabled") => PR_SPEC_DISABLE,
        (INDIRECT_BRANCH, "conditional enabled") => PR_SPEC_ENABLE,
        _ => return None,
    };
    Some((which, value))
}

/// The Speculation* lines of a status file.
pub(crate) fn lines(status: &str) -> Vec<&str> {
    status
        .lines()
        .filter(|l| l.starts_with("Speculation"))
        .collect()
}

/// The lines of `theirs` that neither match `ours` nor can be set by
/// prctl: what a restore by this engine could not reproduce.
pub(crate) fn unreachable<'a>(theirs: &[&'a str], ours: &[&str]) -> Vec<&'a str> {
    theirs
        .iter()
        .filter(|l| !ours.contains(l) && settable(l).is_none())
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_task_states_are_settable() {
        assert_eq!(
            settable("Speculation_Store_Bypass:\tthread force mitigated"),
            Some((STORE_BYPASS, PR_SPEC_FORCE_DISABLE))
        );
        assert_eq!(
            settable("SpeculationIndirectBranch:\tconditional enabled"),
            Some((INDIRECT_BRANCH, PR_SPEC_ENABLE))
        );
        assert_eq!(settable("Speculation_Store_Bypass:\tvulnerable"), None);
        let ours = ["Speculation_Store_Bypass:\tvulnerable"];
        let theirs = [
            "Speculation_Store_Bypass:\tglobally mitigated",
            "SpeculationIndirectBranch:\tconditional disabled",
        ];
        assert_eq!(unreachable(&theirs, &ours), [theirs[0]]);
    }
}
