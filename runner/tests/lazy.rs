//! The lazy flavors end to end with the real engine: a run reported PASS
//! really restored lazily (the daemon's stats, `img/lazy-stats.img`, show
//! pages handed to it and delivered by fault or in the background), not a
//! plain dump and restore reported as PASS; the same over the veth pair,
//! and with the link cut mid-transfer.
//!
//! They need the workspace built (`crust` and the zdtm test programs next
//! to `zdtm`, as `cargo test --workspace` or `cargo build --workspace`
//! leaves them) and root; they fail, saying so, otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{require_root, ZDTM};

/// The directory of the `zdtm` binary, where cargo put `crust` and the
/// test programs too.
fn bin_dir() -> PathBuf {
    Path::new(ZDTM)
        .parent()
        .expect("zdtm has a dir")
        .to_path_buf()
}

fn crust() -> PathBuf {
    let crust = bin_dir().join("crust");
    assert!(
        crust.is_file(),
        "{} is missing: build the workspace (cargo build --release --workspace) first",
        crust.display()
    );
    crust
}

fn zdtm(logs: &Path, args: &[&str]) -> Output {
    let out = Command::new(ZDTM)
        .arg("run")
        .args(args)
        .arg("--keep-img")
        .arg("--log-dir")
        .arg(logs)
        .arg("--crust")
        .arg(crust())
        .env_remove("ZDTM_TESTS_DIR")
        .env_remove("ZDTM_FLAVORS_DIR")
        .output()
        .expect("run zdtm");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "zdtm run {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A field of the daemon's stats image, as `crust show` prints it.
fn stats(images: &Path) -> serde_json::Value {
    let path = images.join("lazy-stats.img");
    let out = Command::new(crust())
        .arg("show")
        .arg(&path)
        .output()
        .expect("crust show");
    assert!(
        out.status.success(),
        "crust show {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["message"].clone()
}

fn count(stats: &serde_json::Value, field: &str) -> u64 {
    stats[field].as_u64().unwrap_or(0)
}

/// The run's daemon was handed pages and delivered them.
fn assert_lazy(work: &Path, images: &Path) {
    let s = stats(images);
    let lazy = count(&s, "pages_lazy");
    let delivered = count(&s, "pages_fault") + count(&s, "pages_background");
    assert!(
        lazy > 0 && delivered > 0,
        "{}: the run was not lazy: {s}",
        work.display()
    );
    // The test's 64 MiB region (16384 pages) went through the daemon.
    assert!(
        lazy >= 16384,
        "{}: only {lazy} lazy pages: {s}",
        work.display()
    );
}

#[test]
fn lazy_flavor_restores_lazily() {
    require_root("lazy_flavor_restores_lazily");
    let logs = tempfile::tempdir().expect("tempdir");
    let out = zdtm(logs.path(), &["-t", "lazy_many_faults", "-f", "lazy"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("PASS lazy_many_faults (lazy) "),
        "{stdout}"
    );
    let work = logs.path().join("lazy_many_faults/lazy");
    assert_lazy(&work, &work.join("img"));

    // --lazy-pages turns the plain dump flavor lazy.
    let out = zdtm(
        logs.path(),
        &["-t", "lazy_fork", "-f", "dump", "--lazy-pages"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("PASS lazy_fork (dump, lazy) "),
        "{stdout}"
    );
    let work = logs.path().join("lazy_fork/dump");
    assert_lazy(&work, &work.join("img"));
}

#[test]
fn remote_lazy_flavors_restore_lazily_over_the_veth() {
    require_root("remote_lazy_flavors_restore_lazily_over_the_veth");
    let logs = tempfile::tempdir().expect("tempdir");
    let out = zdtm(
        logs.path(),
        &[
            "-t",
            "lazy_madvise",
            "-f",
            "remote-lazy",
            "-f",
            "precopy-postcopy",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("PASS lazy_madvise (remote-lazy) "),
        "{stdout}"
    );
    assert!(
        stdout.contains("PASS lazy_madvise (precopy-postcopy) "),
        "{stdout}"
    );
    let work = logs.path().join("lazy_madvise/remote-lazy");
    assert_lazy(&work, &work.join("img"));
    // The daemon ran in the session's namespace, on the far side of the
    // veth pair, and fetched from the dump's address there.
    let log = std::fs::read_to_string(work.join("dump.log")).unwrap_or_default();
    assert!(log.contains(" 10."), "no 10.x address in dump.log:\n{log}");
}

#[test]
fn a_cut_link_loses_nothing() {
    require_root("a_cut_link_loses_nothing");
    let logs = tempfile::tempdir().expect("tempdir");
    // Longer than the engine's TCP_USER_TIMEOUT (3 s): the connection
    // breaks and must be made again.
    let out = zdtm(
        logs.path(),
        &[
            "-t",
            "lazy_many_faults",
            "-f",
            "remote-lazy",
            "--cut-link",
            "5",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("PASS lazy_many_faults (remote-lazy) "),
        "{stdout}"
    );
    let work = logs.path().join("lazy_many_faults/remote-lazy");
    assert_lazy(&work, &work.join("img"));
    // The cut fell inside the transfer: it lasted longer than the cut.
    let s = stats(&work.join("img"));
    assert!(
        count(&s, "total_us") >= 5_000_000,
        "the transfer ended before the link came back: {s}"
    );
}
