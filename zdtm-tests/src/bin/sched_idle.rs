//! As `sched_attrs`, with SCHED_IDLE (and SCHED_RESET_ON_FORK, nice 7, one
//! CPU, oom_score_adj 321, a timer slack): the same after restore.

#[path = "sched_attrs.rs"]
#[allow(dead_code)]
mod sched_attrs;

fn main() {
    zdtm::run(
        |_| sched_attrs::setup_policy(libc::SCHED_IDLE),
        sched_attrs::check,
    )
}
