//! Engine-neutral runs, end to end with the real engine: `--engine PATH`
//! (and its alias `--crust`), the engine's kind told by its file name, by
//! its `--version` output or by `--engine-kind`; `--bin PATH -- ARGS`; and
//! CRIU's `--filename` / `--dirname` convention with a small C test
//! program written and compiled here.
//!
//! They need the workspace built (`crust` next to `zdtm`, as `cargo build
//! --release --workspace` leaves it), a C compiler (`cc`) and root; they
//! fail, saying so, otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{require_root, DUMMY, ZDTM};

/// `crust`, next to `zdtm` where cargo put it.
fn crust() -> PathBuf {
    let crust = Path::new(ZDTM)
        .parent()
        .expect("zdtm has a dir")
        .join("crust");
    assert!(
        crust.is_file(),
        "{} is missing: build the workspace (cargo build --release --workspace) first",
        crust.display()
    );
    crust
}

/// `zdtm run ARGS --log-dir LOGS -f dump` with the source tree's flavors.
fn zdtm(logs: &Path, args: &[&str]) -> Output {
    Command::new(ZDTM)
        .arg("run")
        .args(["-f", "dump", "--log-dir"])
        .arg(logs)
        .args(args)
        .env_remove("ZDTM_TESTS_DIR")
        .env_remove("ZDTM_FLAVORS_DIR")
        .output()
        .expect("run zdtm")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_pass(out: &Output, line: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.lines().any(|l| l.starts_with(line)),
        "expected a line starting {line:?}:\n{}",
        text(out)
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn engine_by_path_and_alias() {
    require_root("engine_by_path_and_alias");
    let tmp = tempfile::tempdir().expect("tempdir");
    let crust = crust();
    for option in ["--engine", "--crust"] {
        let out = zdtm(tmp.path(), &["--bin", DUMMY, option, path_str(&crust)]);
        assert_pass(&out, "PASS zdtm-dummy (dump)");
    }
}

#[test]
fn engine_kind_by_version_or_flag() {
    require_root("engine_kind_by_version_or_flag");
    let tmp = tempfile::tempdir().expect("tempdir");
    // A name that tells nothing: the kind comes from `--version`.
    let engine = tmp.path().join("engine-under-test");
    std::fs::copy(crust(), &engine).expect("copy crust");
    let logs = tmp.path().join("logs");
    let out = zdtm(&logs, &["--bin", DUMMY, "--engine", path_str(&engine)]);
    assert_pass(&out, "PASS zdtm-dummy (dump)");
    let out = zdtm(
        &logs,
        &[
            "--bin",
            DUMMY,
            "--engine",
            path_str(&engine),
            "--engine-kind",
            "crust",
        ],
    );
    assert_pass(&out, "PASS zdtm-dummy (dump)");

    // Neither its name nor its `--version` says what it is.
    let unknown = common::script(&tmp.path().join("mystery"), "echo 'mystery 1.0'\n");
    let out = zdtm(&logs, &["--bin", DUMMY, "--engine", path_str(&unknown)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(2) && stderr.contains("--engine-kind crust|criu"),
        "{}",
        text(&out)
    );
}

/// crust driven as a CRIU-kind engine: CRIU's command lines (`-v4`,
/// `--shell-job`, `check --feature mem_dirty_track`) run unchanged, and
/// suite tests pass in a dump and both pre-dump flavors. `session_pgrp`
/// checks that `--shell-job` changes nothing in a session leader's
/// restore; `maps_anon` and `heap` carry memory through the pre-dumps.
#[test]
fn crust_as_criu_kind_engine() {
    require_root("crust_as_criu_kind_engine");
    let tmp = tempfile::tempdir().expect("tempdir");
    let crust = crust();
    // The probe the CRIU driver runs, then CRIU's spellings by hand.
    let check = Command::new(&crust)
        .args(["check", "--feature", "mem_dirty_track"])
        .output()
        .expect("crust check");
    let dirty_track = check.status.success();
    let dump_help = Command::new(&crust)
        .args(["dump", "-v4", "-j", "--shell-job", "--help"])
        .output()
        .expect("crust dump --help");
    assert!(dump_help.status.success(), "{}", text(&dump_help));
    let out = Command::new(ZDTM)
        .arg("run")
        .args(["-t", "session_pgrp", "-t", "maps_anon", "-t", "heap"])
        .args(["-f", "dump", "-f", "predump-read", "-f", "predump-splice"])
        .args(["--engine", path_str(&crust), "--engine-kind", "criu"])
        .arg("--log-dir")
        .arg(tmp.path())
        .env_remove("ZDTM_TESTS_DIR")
        .env_remove("ZDTM_FLAVORS_DIR")
        .output()
        .expect("run zdtm");
    for test in ["session_pgrp", "maps_anon", "heap"] {
        assert_pass(&out, &format!("PASS {test} (dump)"));
        for flavor in ["predump-read", "predump-splice"] {
            // Pre-dumps run where `check --feature mem_dirty_track` says
            // the kernel tracks; skipped with that reason otherwise.
            let want = if dirty_track { "PASS" } else { "SKIP" };
            assert_pass(&out, &format!("{want} {test} ({flavor})"));
        }
    }
}

#[test]
fn bin_args_after_double_dash() {
    require_root("bin_args_after_double_dash");
    let tmp = tempfile::tempdir().expect("tempdir");
    let crust = crust();
    let base = ["--bin", DUMMY, "--engine", path_str(&crust)];
    // Both forms reach the test, --bin-arg ones first (the last --mode
    // wins).
    let out = zdtm(
        tmp.path(),
        &[
            &base[..],
            &["--bin-arg", "--mode=pass", "--", "--mode=fail"],
        ]
        .concat(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.code() == Some(1) && stdout.contains("FAIL zdtm-dummy (dump): test: asked to"),
        "{}",
        text(&out)
    );
    let out = zdtm(
        tmp.path(),
        &[
            &base[..],
            &["--bin-arg", "--mode=fail", "--", "--mode=pass"],
        ]
        .concat(),
    );
    assert_pass(&out, "PASS zdtm-dummy (dump)");
}

/// A test in C, as CRIU's zdtm tests are written: it takes
/// `--pidfile=`, `--outfile=` and `--filename=` or `--dirname=`, creates
/// that file (or that directory and a file in it), keeps it open across
/// the checkpoint, and on SIGTERM checks that the path still names the
/// open file and that its contents are intact.
const C_TEST: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static volatile int term;
static void on_term(int sig) { (void)sig; term = 1; }

static int verdict(const char *outfile, const char *text) {
    FILE *f = fopen(outfile, "w");
    if (!f) return 1;
    fprintf(f, "%s\n", text);
    return fclose(f) != 0;
}

int main(int argc, char **argv) {
    const char *pidfile = NULL, *outfile = NULL, *filename = NULL, *dirname = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strncmp(argv[i], "--pidfile=", 10)) pidfile = argv[i] + 10;
        else if (!strncmp(argv[i], "--outfile=", 10)) outfile = argv[i] + 10;
        else if (!strncmp(argv[i], "--filename=", 11)) filename = argv[i] + 11;
        else if (!strncmp(argv[i], "--dirname=", 10)) dirname = argv[i] + 10;
        else { fprintf(stderr, "unknown argument %s\n", argv[i]); return 2; }
    }
    if (!pidfile || !outfile || (!filename == !dirname)) {
        fprintf(stderr, "need --pidfile, --outfile and one of --filename, --dirname\n");
        return 2;
    }
    int p[2];
    if (pipe(p)) return 1;
    pid_t pid = fork();
    if (pid < 0) return 1;
    if (pid > 0) {
        char c, tmp[4096];
        close(p[1]);
        if (read(p[0], &c, 1) != 1) return 1;
        while (read(p[0], &c, 1) > 0) {}
        snprintf(tmp, sizeof tmp, "%s.tmp", pidfile);
        FILE *f = fopen(tmp, "w");
        if (!f) return 1;
        fprintf(f, "%d\n", pid);
        if (fclose(f) || rename(tmp, pidfile)) return 1;
        return 0;
    }
    close(p[0]);
    setsid();
    char path[4096];
    if (dirname) {
        if (mkdir(dirname, 0700)) { perror("mkdir"); return 1; }
        snprintf(path, sizeof path, "%s/data", dirname);
    } else {
        snprintf(path, sizeof path, "%s", filename);
    }
    int fd = open(path, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) { perror("open"); return 1; }
    if (write(fd, "zdtm\n", 5) != 5) return 1;
    struct stat before;
    if (fstat(fd, &before)) return 1;
    signal(SIGTERM, on_term);
    if (write(p[1], "r", 1) != 1) return 1;
    close(p[1]);
    while (!term) syscall(SYS_futex, &term, FUTEX_WAIT, 0, NULL, NULL, 0);
    char buf[8] = {0};
    struct stat now, named;
    if (pread(fd, buf, 5, 0) != 5 || strcmp(buf, "zdtm\n"))
        return verdict(outfile, "FAIL: contents changed");
    if (fstat(fd, &now) || stat(path, &named) || now.st_ino != named.st_ino)
        return verdict(outfile, "FAIL: the path no longer names the open file");
    return verdict(outfile, "PASS");
}
"#;

/// Compiles [`C_TEST`] as `dir/name`.
fn c_test(dir: &Path, name: &str) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, C_TEST).expect("write C source");
    let bin = dir.join(name);
    let out = Command::new("cc")
        .arg("-O1")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("run cc (a C compiler is needed)");
    assert!(out.status.success(), "cc failed:\n{}", text(&out));
    bin
}

#[test]
fn filename_and_dirname_conventions() {
    require_root("filename_and_dirname_conventions");
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = c_test(tmp.path(), "c_file");
    let crust = crust();
    let logs = tmp.path().join("logs");
    for (switch, is_dir) in [("--bin-filename", false), ("--bin-dirname", true)] {
        let out = zdtm(
            &logs,
            &[
                "--bin",
                path_str(&bin),
                switch,
                "--engine",
                path_str(&crust),
                "--keep-img",
            ],
        );
        assert_pass(&out, "PASS c_file (dump)");
        // The test made its file (directory) where the runner said.
        let made = logs.join("c_file").join("dump").join("c_file.test");
        let meta = std::fs::metadata(&made).expect("the test's --filename/--dirname path");
        assert_eq!(meta.is_dir(), is_dir, "{}", made.display());
        let log = std::fs::read_to_string(logs.join("c_file/dump/test.log")).unwrap_or_default();
        assert!(log.is_empty(), "the test complained: {log}");
    }
    // Without either, the program refuses to start: a launch failure.
    let out = zdtm(
        &logs,
        &["--bin", path_str(&bin), "--engine", path_str(&crust)],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.code() == Some(1) && stdout.contains("launch"),
        "{}",
        text(&out)
    );
}
