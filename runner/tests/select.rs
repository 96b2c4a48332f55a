//! Selection, per-test metadata and the flavor switches end to end, with
//! the real engine and the real test programs: `zdtm list` and `zdtm run`
//! select the same tests (globs, `-x`, `--shard`); metadata a machine does
//! not meet gives SKIP with the reason; `user` runs the test unprivileged;
//! `--iters`, `--page-server` and `--tracker` really run as they say (the
//! kept work dirs show it).
//!
//! They need the workspace built (`crust` and the zdtm test programs next
//! to `zdtm`) and root; they fail, saying so, otherwise.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{require_root, ZDTM};

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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `zdtm ARGS` with the shipped tests and flavors.
fn zdtm(args: &[&str]) -> Output {
    Command::new(ZDTM)
        .args(args)
        .env_remove("ZDTM_TESTS_DIR")
        .env_remove("ZDTM_FLAVORS_DIR")
        .output()
        .expect("run zdtm")
}

/// `zdtm list ARGS`: the names it prints.
fn list(args: &[&str]) -> Vec<String> {
    let mut argv = vec!["list"];
    argv.extend_from_slice(args);
    let out = zdtm(&argv);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).lines().map(str::to_string).collect()
}

/// `zdtm run ARGS --keep-img --log-dir LOGS --crust CRUST`, which must
/// exit 0; its stdout.
fn run(logs: &Path, args: &[&str]) -> String {
    let mut argv = vec!["run"];
    argv.extend_from_slice(args);
    let out = Command::new(ZDTM)
        .args(&argv)
        .arg("--keep-img")
        .arg("--log-dir")
        .arg(logs)
        .arg("--crust")
        .arg(crust())
        .env_remove("ZDTM_TESTS_DIR")
        .env_remove("ZDTM_FLAVORS_DIR")
        .output()
        .expect("run zdtm");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "zdtm {argv:?} failed:\n{stdout}{}",
        text(&out.stderr)
    );
    stdout
}

/// The tests a run's result lines name.
fn ran(stdout: &str) -> BTreeSet<String> {
    stdout
        .lines()
        .filter_map(|l| {
            let rest = l
                .strip_prefix("PASS ")
                .or_else(|| l.strip_prefix("SKIP "))?;
            Some(rest.split(' ').next()?.to_string())
        })
        .collect()
}

#[test]
fn list_selects_like_run() {
    let all = list(&[]);
    assert!(all.len() > 40, "{all:?}");
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "one name a line, sorted");
    assert_eq!(list(&["-a"]), all);
    assert_eq!(list(&["-t", "fpu_*"]), ["fpu_avx", "fpu_sse"]);
    assert_eq!(list(&["-t", "fpu_*", "-x", "avx"]), ["fpu_sse"]);
    assert_eq!(list(&["-t", "fpu_?se", "-t", "heap"]), ["fpu_sse", "heap"]);
    let no_maps = list(&["-x", "^maps_", "-x", "^fpu"]);
    assert!(no_maps
        .iter()
        .all(|t| !t.starts_with("maps_") && !t.starts_with("fpu")));
    assert_eq!(
        no_maps.len() + list(&["-t", "maps_*", "-t", "fpu*"]).len(),
        all.len()
    );
    // Shards partition the selection: every test in exactly one.
    for n in [1usize, 2, 3, 7] {
        let mut seen = Vec::new();
        for i in 1..=n {
            let part = list(&["--shard", &format!("{i}/{n}")]);
            assert!(part.len() >= all.len() / n, "{i}/{n}");
            seen.extend(part);
        }
        seen.sort();
        assert_eq!(seen, all, "{n} shards");
    }
    // Unknown names and globs matching nothing are errors, as in run.
    for bad in [&["-t", "nope"][..], &["-t", "nope*"], &["--shard", "3/2"]] {
        let mut argv = vec!["list"];
        argv.extend_from_slice(bad);
        assert_eq!(zdtm(&argv).status.code(), Some(2), "{bad:?}");
    }
    let flavors = list(&["--flavors"]);
    assert!(flavors.contains(&"dump".to_string()), "{flavors:?}");
}

#[test]
fn run_selects_globs_excludes_and_shards() {
    require_root("run_selects_globs_excludes_and_shards");
    let logs = tempfile::tempdir().expect("tempdir");
    // -t GLOB -x REGEX.
    let out = run(logs.path(), &["-t", "fpu_*", "-x", "avx", "-f", "dump"]);
    assert_eq!(ran(&out), BTreeSet::from(["fpu_sse".to_string()]), "{out}");
    assert!(out.contains("PASS fpu_sse (dump)"), "{out}");
    // The shard a run takes is the one list prints.
    let selection = ["-t", "maps_*", "-t", "heap", "-t", "zero_pages"];
    let mut union = BTreeSet::new();
    for i in 1..=2 {
        let shard = format!("{i}/2");
        let mut args = selection.to_vec();
        args.extend(["--shard", &shard]);
        let listed: BTreeSet<String> = list(&args).into_iter().collect();
        args.extend(["-f", "dump"]);
        let out = run(logs.path(), &args);
        assert_eq!(ran(&out), listed, "shard {shard}: {out}");
        assert!(union.is_disjoint(&listed));
        union.extend(listed);
    }
    let full: BTreeSet<String> = list(&selection).into_iter().collect();
    assert_eq!(union, full);
}

/// A tests dir whose metadata files name real test programs.
fn tests_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("meta")).expect("mkdir");
    for (name, text) in files {
        std::fs::write(dir.path().join("meta").join(format!("{name}.toml")), text)
            .expect("write metadata");
    }
    dir
}

fn has_cap(bit: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapEff");
    eff & (1 << bit) != 0
}

#[test]
fn metadata_skips_with_reasons_and_runs_as_user() {
    require_root("metadata_skips_with_reasons_and_runs_as_user");
    let tests = tests_dir(&[
        (
            "maps_anon",
            "description = \"d\"\nneeds_caps = [\"CAP_SYS_RESOURCE\"]\n",
        ),
        (
            "heap",
            "description = \"d\"\nneeds_kernel = [\"userfaultfd\"]\nuser = \"nobody\"\n",
        ),
        (
            "zero_pages",
            "description = \"d\"\nneeds = [\"no-such-cpu-flag\"]\n",
        ),
    ]);
    // The work dirs must be reachable by the unprivileged user.
    let logs = tempfile::tempdir().expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(logs.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let dir = tests.path().to_str().expect("utf-8");
    let out = run(logs.path(), &["-a", "-f", "dump", "--tests-dir", dir]);
    // Nothing dropped: every test has a result line.
    assert_eq!(ran(&out).len(), 3, "{out}");
    assert!(
        out.contains("SKIP zero_pages (dump): needs no-such-cpu-flag (not in /proc/cpuinfo flags)"),
        "{out}"
    );
    if has_cap(24) {
        assert!(out.contains("PASS maps_anon (dump)"), "{out}");
    } else {
        assert!(
            out.contains(
                "SKIP maps_anon (dump): needs CAP_SYS_RESOURCE (not in the runner's effective \
                 capabilities"
            ),
            "{out}"
        );
    }
    assert!(out.contains("PASS heap (dump)"), "{out}");
    // It ran as nobody: the state captured before the dump says so.
    let before = std::fs::read_to_string(logs.path().join("heap/dump/state-before.txt"))
        .expect("kept state");
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("passwd")
        .expect("nobody exists");
    let uid = nobody.uid.as_raw();
    assert!(
        before.contains(&format!("Uid: {uid} {uid} {uid} {uid}")),
        "{before}"
    );
}

/// The inventory of an image dir, as `crust show` prints it.
fn inventory(dir: &Path) -> serde_json::Value {
    let out = Command::new(crust())
        .arg("show")
        .arg(dir.join("inventory.img"))
        .output()
        .expect("crust show");
    assert!(
        out.status.success(),
        "{}: {}",
        dir.display(),
        text(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["message"].clone()
}

fn pages_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn iters_page_server_and_tracker() {
    require_root("iters_page_server_and_tracker");
    let logs = tempfile::tempdir().expect("tempdir");
    let out = run(
        logs.path(),
        &[
            "-t",
            "heap",
            "-t",
            "trans_churn",
            "-f",
            "predump-read",
            "--iters",
            "2",
            "--page-server",
            "--tracker",
            "content",
        ],
    );
    for test in ["heap", "trans_churn"] {
        assert!(
            out.contains(&format!(
                "PASS {test} (predump-read, tracker content, page-server, iters 2)"
            )),
            "{out}"
        );
        let work = logs.path().join(test).join("predump-read");
        for (img, sent, sfx) in [("img", "sent", ""), ("img-it2", "sent-it2", "-it2")] {
            // Each iteration: three pre-dumps and a dump, each received by a
            // page server of its own (which exited 0), with the pages on the
            // receiving side only; the pre-dumps used the tracker asked for.
            for what in ["pre1", "pre2", "pre3", "dump"] {
                let received = work.join(img).join(what);
                let inv = inventory(&received);
                if what != "dump" {
                    // (The final dump records no tracker: it keeps none.)
                    assert_eq!(inv["tracker"], "content", "{}", received.display());
                }
                assert_eq!(pages_files(&received), 1, "{}", received.display());
                assert_eq!(pages_files(&work.join(sent).join(what)), 0, "{what}");
                assert!(work.join(format!("ps-{what}{sfx}.pid")).is_file());
            }
            assert_eq!(inventory(&work.join(img).join("pre1"))["kind"], "pre-dump");
            assert!(work.join(format!("restore{sfx}.log")).is_file());
            assert!(work.join(format!("state-after{sfx}.txt")).is_file());
        }
    }
}

#[test]
fn lazy_flavors_iterate() {
    require_root("lazy_flavors_iterate");
    let logs = tempfile::tempdir().expect("tempdir");
    let out = run(
        logs.path(),
        &[
            "-t",
            "heap",
            "-f",
            "lazy",
            "-f",
            "remote-lazy",
            "--iters",
            "2",
        ],
    );
    assert!(out.contains("PASS heap (lazy, iters 2)"), "{out}");
    assert!(out.contains("PASS heap (remote-lazy, iters 2)"), "{out}");
    for flavor in ["lazy", "remote-lazy"] {
        let work = logs.path().join("heap").join(flavor);
        assert!(work.join("img-it2/lazy-stats.img").is_file(), "{flavor}");
        assert!(work.join("lazy-it2.log").is_file(), "{flavor}");
    }
}

#[test]
fn unmet_tracker_is_a_skip_with_the_reason() {
    require_root("unmet_tracker_is_a_skip_with_the_reason");
    let logs = tempfile::tempdir().expect("tempdir");
    // Whichever of the two kernel trackers this kernel lacks (6.7+ has
    // uffd-wp; soft-dirty needs CONFIG_MEM_SOFT_DIRTY) is a SKIP with the
    // reason; one it has runs and passes.
    for tracker in ["soft-dirty", "uffd-wp"] {
        let out = run(
            logs.path(),
            &["-t", "heap", "-f", "predump-read", "--tracker", tracker],
        );
        let line = out.lines().next().unwrap_or_default().to_string();
        let skip = format!(
            "SKIP heap (predump-read, tracker {tracker}): tracker {tracker} needs kernel feature"
        );
        let pass = format!("PASS heap (predump-read, tracker {tracker})");
        assert!(line.starts_with(&skip) || line.starts_with(&pass), "{out}");
        if line.starts_with(&pass) {
            let inv = inventory(&logs.path().join("heap/predump-read/img/pre3"));
            assert_eq!(inv["tracker"], tracker);
        }
    }
}
