//! The `zdtm` binary end to end, with fake crust scripts (the real engine
//! is driven by the lead's integration test). `zdtm run` needs root: those
//! tests fail, saying so, without it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use common::{require_root, script, DUMMY, ZDTM};

/// Tests that write scripts and start processes run one at a time: an
/// executable being written while another thread forks can fail to exec
/// (ETXTBSY).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let setup = Setup {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        std::fs::create_dir(setup.flavors()).expect("mkdir");
        std::fs::write(
            setup.flavors().join("dump.toml"),
            "name = \"dump\"\ndescription = \"Full dump\"\n",
        )
        .expect("write flavor");
        std::fs::create_dir(setup.meta()).expect("mkdir");
        setup.meta_file("alpha", "description = \"first test\"\n");
        setup.meta_file(
            "beta",
            "description = \"excluded one\"\nexclude_flavors = [\"dump\"]\n",
        );
        setup
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn flavors(&self) -> PathBuf {
        self.path().join("flavors")
    }

    fn meta(&self) -> PathBuf {
        self.path().join("meta")
    }

    /// Writes `meta/NAME.toml`.
    fn meta_file(&self, name: &str, text: &str) {
        std::fs::write(self.meta().join(format!("{name}.toml")), text).expect("write metadata");
    }

    /// Leaves only these metadata files.
    fn only_meta(&self, files: &[(&str, &str)]) {
        std::fs::remove_dir_all(self.meta()).expect("rm meta");
        std::fs::create_dir(self.meta()).expect("mkdir");
        for (name, text) in files {
            self.meta_file(name, text);
        }
    }

    fn logs(&self) -> PathBuf {
        self.path().join("logs")
    }

    /// A fake crust: `dump_body` / `restore_body` run with `$pid` (dump's
    /// -t), `$log` (-o) and `$pidfile` (restore's --pidfile) set.
    fn crust(&self, dump_body: &str, restore_body: &str) -> PathBuf {
        script(
            &self.path().join("crust"),
            &format!(
                "cmd=$1; shift\n\
                 while [ $# -gt 0 ]; do\n\
                 case $1 in -t) pid=$2; shift;; -o) log=$2; shift;; --pidfile) pidfile=$2; shift;; esac\n\
                 shift\n\
                 done\n\
                 case $cmd in\n\
                 dump) {dump_body};;\n\
                 restore) {restore_body};;\n\
                 esac\n"
            ),
        )
    }

    fn zdtm(&self, args: &[&str]) -> Output {
        Command::new(ZDTM)
            .args(args)
            .arg("--tests-dir")
            .arg(self.path())
            .arg("--flavors-dir")
            .arg(self.flavors())
            .env_remove("ZDTM_TESTS_DIR")
            .env_remove("ZDTM_FLAVORS_DIR")
            .output()
            .expect("run zdtm")
    }

    fn run_dummy(&self, crust: &Path, dummy_args: &[&str]) -> Output {
        let mut args = vec!["run", "--bin", DUMMY, "--crust"];
        let crust = crust.to_str().expect("utf-8 path");
        args.push(crust);
        let logs = self.logs();
        let logs = logs.to_str().expect("utf-8 path");
        args.extend(["--log-dir", logs]);
        for a in dummy_args {
            args.extend(["--bin-arg", a]);
        }
        self.zdtm(&args)
    }

    fn work_dir(&self) -> PathBuf {
        self.logs().join("zdtm-dummy").join("dump")
    }

    /// A manifest with one test, `zdtm-dummy` (found next to zdtm, where
    /// cargo put it), with these extra keys.
    fn dummy_manifest(&self, keys: &str) {
        self.only_meta(&[(
            "zdtm-dummy",
            &format!("description = \"d\"\ntimeout_secs = 5\n{keys}"),
        )]);
    }

    fn argv_log(&self) -> PathBuf {
        self.path().join("argv.log")
    }

    /// A fake crust that appends each invocation to `argv.log`, with the
    /// step the test had acknowledged then (`step=-`: none), then runs the
    /// body of its command with `$pid` (-t), `$dir` (-D) and `$log` (-o).
    fn logging_crust(&self, pre_dump_body: &str, dump_body: &str, restore_body: &str) -> PathBuf {
        script(
            &self.path().join("crust"),
            &format!(
                "cmd=$1; shift; all=\"$*\"\n\
                 echo \"$cmd $all step=$(cat test.out.step 2>/dev/null || echo -)\" >> {argv}\n\
                 while [ $# -gt 0 ]; do\n\
                 case $1 in -t) pid=$2; shift;; -D) dir=$2; shift;; -o) log=$2; shift;; --pidfile) pidfile=$2; shift;; esac\n\
                 shift\n\
                 done\n\
                 case $cmd in\n\
                 pre-dump) {pre_dump_body};;\n\
                 dump) {dump_body};;\n\
                 restore) {restore_body};;\n\
                 esac\n",
                argv = self.argv_log().display()
            ),
        )
    }

    /// [`Setup::logging_crust`] with a `lazy-pages` command too.
    fn lazy_crust(&self, dump_body: &str, lazy_body: &str) -> PathBuf {
        script(
            &self.path().join("crust"),
            &format!(
                "cmd=$1; shift; all=\"$*\"\n\
                 echo \"$cmd $all step=$(cat test.out.step 2>/dev/null || echo -)\" >> {argv}\n\
                 while [ $# -gt 0 ]; do\n\
                 case $1 in -t) pid=$2; shift;; -D) dir=$2; shift;; -o) log=$2; shift;; --pidfile) pidfile=$2; shift;; esac\n\
                 shift\n\
                 done\n\
                 case $cmd in\n\
                 dump) {dump_body};;\n\
                 lazy-pages) {lazy_body};;\n\
                 restore) {FAILING_RESTORE};;\n\
                 esac\n",
                argv = self.argv_log().display()
            ),
        )
    }

    /// `zdtm run -t zdtm-dummy` with this crust and these options.
    fn run_test(&self, crust: &Path, options: &[&str]) -> Output {
        let logs = self.logs();
        let mut args = vec![
            "run",
            "-t",
            "zdtm-dummy",
            "--crust",
            crust.to_str().expect("utf-8"),
            "--log-dir",
            logs.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(options);
        self.zdtm(&args)
    }

    /// The invocations logged by [`Setup::logging_crust`], with the work dir
    /// written `W` and the test's pid `PID`.
    fn invocations(&self, work: &Path) -> Vec<String> {
        let pid = std::fs::read_to_string(work.join("test.pid")).expect("kept pidfile");
        let pid = format!(" {} ", pid.trim());
        let work = work.to_str().expect("utf-8");
        std::fs::read_to_string(self.argv_log())
            .unwrap_or_default()
            .lines()
            .map(|l| l.replace(work, "W").replace(&pid, " PID "))
            .collect()
    }
}

/// A fake crust's successful dump: it kills the task, as crust does.
const KILLING_DUMP: &str = "kill -9 $pid; echo dumped > $log; exit 0";
/// A fake crust's restore: it cannot restore.
const FAILING_RESTORE: &str = "echo \"no restore here\" > $log; exit 1";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The pid in the kept pidfile no longer runs the dummy.
fn assert_daemon_gone(work: &Path) {
    let pid = std::fs::read_to_string(work.join("test.pid")).expect("kept pidfile");
    let pid = pid.trim();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        !text(&cmdline).contains("zdtm-dummy"),
        "test daemon {pid} still runs"
    );
}

#[test]
fn list_shows_tests_and_flavors() {
    let setup = Setup::new();
    let out = setup.zdtm(&["list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "alpha\nbeta\n");
    let out = setup.zdtm(&["list", "--flavors"]);
    assert_eq!(text(&out.stdout), "dump\n");
    let out = setup.zdtm(&["list", "-v"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("  alpha  first test\n"), "{stdout}");
    assert!(
        stdout.contains("  beta   excluded one [not under dump]\n"),
        "{stdout}"
    );
    assert!(stdout.contains("Flavors ("), "{stdout}");
    assert!(stdout.contains("  dump  Full dump\n"), "{stdout}");
}

#[test]
fn bad_files_are_setup_errors() {
    let setup = Setup::new();
    setup.meta_file("a", "description = \"d\"\ntimeout = 3\n");
    let out = setup.zdtm(&["list"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("meta/a.toml: "), "{stderr}");
    assert!(stderr.contains("unknown field `timeout`"), "{stderr}");
    // A bad file name, with the reason.
    setup.only_meta(&[("a b", "description = \"d\"\n")]);
    let out = setup.zdtm(&["list"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("meta/a b.toml: invalid test name"),
        "{stderr}"
    );
    // The old single-file manifest is refused, not ignored.
    setup.only_meta(&[]);
    std::fs::write(setup.path().join("tests.toml"), "").expect("write");
    let out = setup.zdtm(&["list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("tests.toml: the single-file manifest is no longer read"));

    let setup = Setup::new();
    std::fs::write(
        setup.flavors().join("dump.toml"),
        "name = \"dump\"\ndescription = \"d\"\nlazy = \"remote\"\nlink_cut = 3\n",
    )
    .expect("write");
    let out = setup.zdtm(&["list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown field `link_cut`"));

    // A value the runner does not know is rejected too.
    std::fs::write(
        setup.flavors().join("dump.toml"),
        "name = \"dump\"\ndescription = \"d\"\nlazy = \"eager\"\n",
    )
    .expect("write");
    let out = setup.zdtm(&["list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown variant `eager`"));
}

#[test]
fn usage_errors_exit_2() {
    let setup = Setup::new();
    let out = setup.zdtm(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    let out = setup.zdtm(&["run", "-a", "-j", "0"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn run_checks_names_and_crust() {
    require_root("run_checks_names_and_crust");
    let _serial = serial();
    let setup = Setup::new();
    let crust = setup.crust("exit 1", "exit 1");
    let crust = crust.to_str().expect("utf-8");

    let out = setup.zdtm(&["run", "-t", "nope", "--crust", crust]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown test \"nope\""));

    let out = setup.zdtm(&["run", "-a", "-f", "lazy", "--crust", crust]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown flavor \"lazy\""));

    let out = setup.zdtm(&["run", "-a", "--crust", "/nonexistent/crust"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("engine binary /nonexistent/crust: does not exist"),
        "{stderr}"
    );
}

#[test]
fn excluded_flavor_is_skipped() {
    require_root("excluded_flavor_is_skipped");
    let _serial = serial();
    let setup = Setup::new();
    let crust = setup.crust("exit 1", "exit 1");
    let logs = setup.logs();
    let out = setup.zdtm(&[
        "run",
        "-t",
        "beta",
        "--crust",
        crust.to_str().expect("utf-8"),
        "--log-dir",
        logs.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "SKIP beta (dump): excluded from flavor dump\n\
         Summary (test x flavor, wall time of each run):\n\
         \x20 test  dump\n\
         \x20 beta  SKIP\n\
         zdtm: 0 passed, 0 failed, 1 skipped\n"
    );
    assert!(!logs.exists(), "an empty log dir is left behind");
}

#[test]
fn failed_dump_is_reported_and_cleaned_up() {
    require_root("failed_dump_is_reported_and_cleaned_up");
    let _serial = serial();
    let setup = Setup::new();
    let crust = setup.crust("echo \"cannot dump $pid\" > $log; exit 1", "exit 1");
    let out = setup.run_dummy(&crust, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.starts_with("FAIL zdtm-dummy (dump): dump: crust dump exited with status 1\n"),
        "{stdout}"
    );
    assert!(stdout.contains("cannot dump "), "{stdout}");
    let work = setup.work_dir();
    assert!(
        stdout.contains(&format!("work dir: {}", work.display())),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("zdtm: 0 passed, 1 failed, 0 skipped\n"),
        "{stdout}"
    );
    assert!(work.join("state-before.txt").exists());
    assert_daemon_gone(&work);
}

#[test]
fn failed_restore_is_reported() {
    require_root("failed_restore_is_reported");
    let _serial = serial();
    let setup = Setup::new();
    // The dump "succeeds" by killing the task, as crust does.
    let crust = setup.crust(
        "kill -9 $pid; echo dumped > $log; exit 0",
        "echo \"no images\" > $log; exit 7",
    );
    let out = setup.run_dummy(&crust, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.starts_with("FAIL zdtm-dummy (dump): restore: crust restore exited with status 7\n"),
        "{stdout}"
    );
    assert!(stdout.contains("no images"), "{stdout}");
    assert_daemon_gone(&setup.work_dir());
}

#[test]
fn dump_that_leaves_the_task_alive_is_a_failure() {
    require_root("dump_that_leaves_the_task_alive_is_a_failure");
    let _serial = serial();
    let setup = Setup::new();
    setup.only_meta(&[("zdtm-dummy", "description = \"d\"\ntimeout_secs = 1\n")]);
    // -t looks binaries up next to zdtm, where cargo put zdtm-dummy.
    let crust = setup.crust("exit 0", "exit 1");
    let logs = setup.logs();
    let out = setup.zdtm(&[
        "run",
        "-t",
        "zdtm-dummy",
        "--crust",
        crust.to_str().expect("utf-8"),
        "--log-dir",
        logs.to_str().expect("utf-8"),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.starts_with("FAIL zdtm-dummy (dump): dump: crust dump succeeded but task "),
        "{stdout}"
    );
    assert_daemon_gone(&setup.work_dir());
}

#[test]
fn launch_failures_are_reported() {
    require_root("launch_failures_are_reported");
    let _serial = serial();
    let setup = Setup::new();
    let crust = setup.crust("exit 1", "exit 1");
    for (mode, expected) in [
        (
            "--mode=launcher-fail",
            "FAIL zdtm-dummy (dump): launch: the test launcher exited with status 3\n",
        ),
        (
            "--mode=no-pidfile",
            "FAIL zdtm-dummy (dump): launch: the launcher exited 0 but the pidfile ",
        ),
    ] {
        let out = setup.run_dummy(&crust, &[mode]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        assert!(stdout.starts_with(expected), "{mode}: {stdout}");
    }
}

#[test]
fn hanging_launcher_is_killed_with_its_daemon() {
    require_root("hanging_launcher_is_killed_with_its_daemon");
    let _serial = serial();
    let setup = Setup::new();
    setup.only_meta(&[(
        "zdtm-dummy",
        "description = \"d\"\ntimeout_secs = 1\nopts = [\"--mode=launcher-hang\"]\n",
    )]);
    let crust = setup.crust("exit 1", "exit 1");
    let logs = setup.logs();
    let out = setup.zdtm(&[
        "run",
        "-t",
        "zdtm-dummy",
        "--crust",
        crust.to_str().expect("utf-8"),
        "--log-dir",
        logs.to_str().expect("utf-8"),
    ]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.starts_with(
            "FAIL zdtm-dummy (dump): launch: the test launcher did not exit within 1s"
        ),
        "{stdout}"
    );
    // The run's cleanup got the daemon, not the final sweep.
    assert!(!stderr.contains("leftover"), "{stderr}");
    let work = setup.work_dir();
    let work = work.to_str().expect("utf-8");
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        assert!(
            !text(&cmdline).contains(work),
            "{:?} still runs",
            entry.path()
        );
    }
}

#[test]
fn pre_dump_sequence_and_steps() {
    require_root("pre_dump_sequence_and_steps");
    let _serial = serial();
    let setup = Setup::new();
    std::fs::write(
        setup.flavors().join("pre2.toml"),
        "name = \"pre2\"\ndescription = \"two read pre-dumps\"\npre_dumps = 2\n\
         pre_dump_mode = \"read\"\n",
    )
    .expect("write flavor");
    setup.dummy_manifest("steps = true\nopts = [\"--steps\"]\n");
    let crust = setup.logging_crust(
        "echo pre-dumped > $log; exit 0",
        KILLING_DUMP,
        FAILING_RESTORE,
    );
    let out = setup.run_test(&crust, &["-f", "pre2"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    // The fake crust cannot restore: everything before that went through.
    assert!(
        stdout.starts_with("FAIL zdtm-dummy (pre2): restore: crust restore exited with status 1\n"),
        "{stdout}"
    );
    let work = setup.logs().join("zdtm-dummy").join("pre2");
    // pre1, step 1, pre2, step 2, the tracker's fd read from pre2's
    // inventory, dump on top of pre2, restore from dump.
    assert_eq!(
        setup.invocations(&work),
        [
            "pre-dump -t PID -D W/img/pre1 --pre-dump-mode read --track-mem -o W/pre1.log -v step=-",
            "pre-dump -t PID -D W/img/pre2 --prev-images-dir ../pre1 --pre-dump-mode read \
             --track-mem -o W/pre2.log -v step=1",
            "show W/img/pre2/inventory.img step=-",
            "dump -t PID -D W/img/dump --track-mem --prev-images-dir ../pre2 -o W/dump.log -v step=2",
            "restore -D W/img/dump -d --pidfile W/restore.pid --leave-stopped -o W/restore.log step=2",
        ]
    );
    for dir in ["img/pre1", "img/pre2", "img/dump"] {
        assert!(work.join(dir).is_dir(), "{dir}");
    }
    for log in ["pre1.log", "pre2.log", "dump.log", "state-before.txt"] {
        assert!(work.join(log).is_file(), "{log}");
    }
    assert_daemon_gone(&work);

    // --pre on the plain dump flavor, with the mode overridden too; the
    // result line says what ran.
    std::fs::remove_file(setup.argv_log()).expect("rm");
    let out = setup.run_test(
        &crust,
        &["-f", "dump", "--pre", "3", "--pre-dump-mode", "splice"],
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("FAIL zdtm-dummy (dump, pre 3 splice): restore: "),
        "{stdout}"
    );
    let calls = setup.invocations(&setup.work_dir());
    let summary: Vec<String> = calls
        .iter()
        .map(|c| {
            let words: Vec<&str> = c.split(' ').collect();
            let value = |flag: &str| {
                words
                    .iter()
                    .position(|w| *w == flag)
                    .map_or("", |i| words[i + 1])
            };
            let (dir, prev, mode) = (
                value("-D"),
                value("--prev-images-dir"),
                value("--pre-dump-mode"),
            );
            format!(
                "{} {dir} {prev} {mode} {}",
                words[0],
                words[words.len() - 1]
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "pre-dump W/img/pre1  splice step=-",
            "pre-dump W/img/pre2 ../pre1 splice step=1",
            "pre-dump W/img/pre3 ../pre2 splice step=2",
            "show    step=-",
            "dump W/img/dump ../pre3  step=3",
            "restore W/img/dump   step=3",
        ]
    );
}

#[test]
fn no_steps_without_pre_dumps_or_without_the_key() {
    require_root("no_steps_without_pre_dumps_or_without_the_key");
    let _serial = serial();
    let setup = Setup::new();
    let crust = setup.logging_crust("exit 0", KILLING_DUMP, FAILING_RESTORE);

    // A steps test under the plain dump: no step requested.
    setup.dummy_manifest("steps = true\nopts = [\"--steps\"]\n");
    let out = setup.run_test(&crust, &[]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("FAIL zdtm-dummy (dump): restore: "),
        "{stdout}"
    );
    assert_eq!(
        setup.invocations(&setup.work_dir()),
        [
            "dump -t PID -D W/img -o W/dump.log -v step=-",
            "restore -D W/img -d --pidfile W/restore.pid --leave-stopped -o W/restore.log step=-",
        ]
    );

    // A test without steps under pre-dumps: never signalled (this dummy
    // does not handle the step signal: it would die of it).
    std::fs::remove_file(setup.argv_log()).expect("rm");
    setup.dummy_manifest("");
    let out = setup.run_test(&crust, &["--pre", "2"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("FAIL zdtm-dummy (dump, pre 2 splice): restore: "),
        "{stdout}"
    );
    let calls = setup.invocations(&setup.work_dir());
    assert_eq!(calls.len(), 5, "{calls:?}");
    assert!(calls.iter().all(|c| c.ends_with(" step=-")), "{calls:?}");
}

#[test]
fn pre_dump_and_step_failures() {
    require_root("pre_dump_and_step_failures");
    let _serial = serial();
    let setup = Setup::new();
    setup.dummy_manifest("steps = true\nopts = [\"--steps\"]\n");

    // The second pre-dump fails.
    let crust = setup.logging_crust(
        "case $dir in */pre2) echo \"cannot pre-dump $pid\" > $log; exit 4;; esac; exit 0",
        KILLING_DUMP,
        FAILING_RESTORE,
    );
    let out = setup.run_test(&crust, &["--pre", "2", "--pre-dump-mode", "read"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.starts_with(
            "FAIL zdtm-dummy (dump, pre 2 read): pre-dump 2: crust pre-dump exited with status 4\n"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("cannot pre-dump "), "{stdout}");
    assert!(stdout.contains("pre2.log ---"), "{stdout}");
    assert_daemon_gone(&setup.work_dir());

    // A pre-dump that kills the task.
    let crust = setup.logging_crust("kill -9 $pid; exit 0", KILLING_DUMP, FAILING_RESTORE);
    let out = setup.run_test(&crust, &["--pre", "1"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(
            "FAIL zdtm-dummy (dump, pre 1 splice): pre-dump 1: crust pre-dump \
                            succeeded but the task "
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("killed by SIGKILL: a pre-dump must leave it running"),
        "{stdout}"
    );

    // A steps test that does not handle the step signal dies of it.
    setup.dummy_manifest("steps = true\n");
    let crust = setup.logging_crust("exit 0", KILLING_DUMP, FAILING_RESTORE);
    let out = setup.run_test(&crust, &["--pre", "2"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(
            "FAIL zdtm-dummy (dump, pre 2 splice): step 1: the test killed by SIGRTMAX-1 \
             instead of taking step 1 (does it handle ZDTM_STEP_SIGNAL, SIGRTMAX-1?)\n"
        ),
        "{stdout}"
    );
    assert_daemon_gone(&setup.work_dir());
}

#[test]
fn unused_pre_dump_mode_is_a_usage_error() {
    require_root("unused_pre_dump_mode_is_a_usage_error");
    let _serial = serial();
    let setup = Setup::new();
    let crust = setup.crust("exit 1", "exit 1");
    let out = setup.run_test(&crust, &["--pre-dump-mode", "read"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--pre-dump-mode read: none of the selected flavors (dump) pre-dumps"),
        "{stderr}"
    );
    assert!(!setup.argv_log().exists());
}

#[test]
fn list_shows_pre_dumps_and_steps() {
    let setup = Setup::new();
    std::fs::write(
        setup.flavors().join("pre2.toml"),
        "name = \"pre2\"\ndescription = \"two read pre-dumps\"\npre_dumps = 2\n\
         pre_dump_mode = \"read\"\n",
    )
    .expect("write flavor");
    setup.dummy_manifest("steps = true\ncontinuous = true\n");
    let out = setup.zdtm(&["list", "-v"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("  zdtm-dummy  d [steps, continuous]\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  pre2  two read pre-dumps [pre 2 read]\n"),
        "{stdout}"
    );
}

/// A fake lazy-pages daemon: a sleeper (its pid in the pidfile), and the
/// network namespace it ran in, in `netns.txt`.
const FAKE_LAZY_PAGES: &str = "ip netns identify $$ > netns.txt; sleep 300 & echo $! > $pidfile; \
                               echo listening > $log; exit 0";

fn pid_in(path: &Path) -> nix::unistd::Pid {
    let text = std::fs::read_to_string(path).expect("pidfile");
    nix::unistd::Pid::from_raw(text.trim().parse().expect("a pid"))
}

fn assert_gone(pid: nix::unistd::Pid, what: &str) {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(!text(&cmdline).contains("sleep"), "{what} {pid} still runs");
}

#[test]
fn lazy_sequence() {
    require_root("lazy_sequence");
    let _serial = serial();
    let setup = Setup::new();
    std::fs::write(
        setup.flavors().join("lazy.toml"),
        "name = \"lazy\"\ndescription = \"lazy\"\nlazy = \"local\"\n",
    )
    .expect("write flavor");
    setup.dummy_manifest("");
    let crust = setup.lazy_crust(KILLING_DUMP, FAKE_LAZY_PAGES);
    let out = setup.run_test(&crust, &["-f", "lazy"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.starts_with("FAIL zdtm-dummy (lazy): restore: crust restore exited with status 1\n"),
        "{stdout}"
    );
    let work = setup.logs().join("zdtm-dummy").join("lazy");
    assert_eq!(
        setup.invocations(&work),
        [
            "dump -t PID -D W/img -o W/dump.log -v step=-",
            "lazy-pages -D W/img -d --pidfile W/lazy.pid -o W/lazy.log -v step=-",
            "restore -D W/img --lazy-pages -d --pidfile W/restore.pid --leave-stopped -o \
             W/restore.log step=-",
        ]
    );
    // Local: the daemon ran in the runner's own network namespace.
    assert_eq!(
        std::fs::read_to_string(work.join("netns.txt"))
            .expect("netns.txt")
            .trim(),
        ""
    );
    // The failed run killed its daemon.
    assert_gone(pid_in(&work.join("lazy.pid")), "the lazy-pages daemon");

    // The dump flavor with --lazy-pages: the same, labelled.
    std::fs::remove_file(setup.argv_log()).expect("rm");
    let out = setup.run_test(&crust, &["-f", "dump", "--lazy-pages"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("FAIL zdtm-dummy (dump, lazy): restore: "),
        "{stdout}"
    );
    let calls = setup.invocations(&setup.work_dir());
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls[1].starts_with("lazy-pages -D W/img -d "), "{calls:?}");
}

#[test]
fn remote_lazy_sequence() {
    require_root("remote_lazy_sequence");
    let _serial = serial();
    let setup = Setup::new();
    std::fs::write(
        setup.flavors().join("rl.toml"),
        "name = \"rl\"\ndescription = \"remote lazy\"\npre_dumps = 1\nlazy = \"remote\"\n",
    )
    .expect("write flavor");
    setup.dummy_manifest("");
    // The lazy dump kills the task and leaves a process serving pages,
    // its pid in the --pidfile (`crust dump --help` mentions it).
    let dump = "[ -n \"$pid\" ] || { echo --pidfile; exit 0; }; kill -9 $pid; \
                sleep 300 & echo $! > $pidfile; cp $pidfile server.pid; echo dumped > $log; exit 0";
    let crust = setup.lazy_crust(dump, FAKE_LAZY_PAGES);
    let out = setup.zdtm(&[
        "run",
        "-t",
        "zdtm-dummy",
        "--crust",
        crust.to_str().expect("utf-8"),
        "--log-dir",
        setup.logs().to_str().expect("utf-8"),
    ]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    // Only rl runs the task; dump runs too (the plain flavor).
    assert!(
        stdout.contains("FAIL zdtm-dummy (rl): restore: crust restore exited with status 1\n"),
        "{stdout}{stderr}"
    );
    let work = setup.logs().join("zdtm-dummy").join("rl");
    let calls: Vec<String> = setup
        .invocations(&work)
        .into_iter()
        // " W/": the work dir replaced; a bare "W/" also matched the
        // other flavor's calls whenever the temp dir's random name ended
        // in W (/tmp/.tmpZkalYW/logs/...: CI failed so once).
        .filter(|c| c.contains(" W/"))
        .collect();
    let netns = std::fs::read_to_string(work.join("netns.txt")).expect("netns.txt");
    let netns = netns.trim();
    assert!(netns.starts_with("zdtm-"), "{netns:?}");
    // The address and port of the dump are those the daemon fetches from.
    assert!(calls[0].starts_with("pre-dump "), "{calls:?}");
    assert!(calls[1].starts_with("show "), "{calls:?}");
    let words: Vec<&str> = calls[2].split(' ').collect();
    let value = |flag: &str| {
        let i = words.iter().position(|w| *w == flag).expect(flag);
        words[i + 1].to_string()
    };
    let (address, port) = (value("--address"), value("--port"));
    assert!(address.starts_with("10."), "{address}");
    assert_eq!(
        calls[2..],
        [
            format!(
                "dump -t PID -D W/img/dump --track-mem --prev-images-dir ../pre1 --lazy-pages \
                 --address {address} --port {port} -d --pidfile W/dump.pid -o W/dump.log -v step=-"
            ),
            format!(
                "lazy-pages -D W/img/dump --page-server --address {address} --port {port} -d \
                 --pidfile W/lazy.pid -o W/lazy.log -v step=-"
            ),
            "restore -D W/img/dump --lazy-pages -d --pidfile W/restore.pid --leave-stopped -o \
             W/restore.log step=-"
                .to_string(),
        ],
        "{calls:?}"
    );
    // Both serving processes were killed, the namespace and the veth pair
    // are gone.
    assert_gone(pid_in(&work.join("lazy.pid")), "the lazy-pages daemon");
    assert_gone(pid_in(&work.join("server.pid")), "the dump's server");
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(
        !text(&list.stdout).contains(netns),
        "{netns} left: {}",
        text(&list.stdout)
    );
    let links = Command::new("ip").args(["link"]).output().expect("ip link");
    let host_if = format!("zdtm{}s", &netns["zdtm-".len()..]);
    assert!(!text(&links.stdout).contains(&host_if), "{host_if} left");
}

#[test]
fn cut_link_needs_a_remote_flavor() {
    require_root("cut_link_needs_a_remote_flavor");
    let _serial = serial();
    let setup = Setup::new();
    let crust = setup.crust("exit 1", "exit 1");
    let out = setup.run_test(&crust, &["--cut-link", "2"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--cut-link 2: none of the selected flavors is remote lazy"),
        "{stderr}"
    );
    let out = setup.run_test(&crust, &["--lazy-pages", "--remote-lazy-pages"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn snaps_are_chained_leave_running_dumps() {
    require_root("snaps_are_chained_leave_running_dumps");
    let _serial = serial();
    let setup = Setup::new();
    std::fs::write(
        setup.flavors().join("pre2.toml"),
        "name = \"pre2\"\ndescription = \"two pre-dumps\"\npre_dumps = 2\n",
    )
    .expect("write flavor");
    setup.dummy_manifest("");
    // A snapshot (--leave-running) leaves the task alone; the final dump
    // kills it.
    let crust = setup.logging_crust(
        "exit 1",
        &format!("case \"$all\" in *--leave-running*) exit 0;; esac; {KILLING_DUMP}"),
        FAILING_RESTORE,
    );
    let out = setup.run_test(&crust, &["-f", "pre2", "--snaps", "--tracker", "content"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("FAIL zdtm-dummy (pre2, snaps, tracker content): restore: "),
        "{stdout}{}",
        text(&out.stderr)
    );
    let work = setup.logs().join("zdtm-dummy").join("pre2");
    assert_eq!(
        setup.invocations(&work),
        [
            "dump -t PID -D W/img/pre1 -o W/pre1.log -v --leave-running --track-mem \
             --tracker content step=-",
            "dump -t PID -D W/img/pre2 --track-mem --prev-images-dir ../pre1 -o W/pre2.log -v \
             --leave-running --tracker content step=-",
            "show W/img/pre2/inventory.img step=-",
            "dump -t PID -D W/img/dump --track-mem --prev-images-dir ../pre2 -o W/dump.log -v \
             --tracker content step=-",
            "restore -D W/img/dump -d --pidfile W/restore.pid --leave-stopped -o W/restore.log step=-",
        ]
    );
    assert_daemon_gone(&work);

    // --snaps, like --pre-dump-mode and --tracker, needs a flavor that
    // pre-dumps.
    for switch in [&["--snaps"][..], &["--tracker", "uffd-wp"]] {
        let mut args = vec!["-f", "dump"];
        args.extend_from_slice(switch);
        let out = setup.run_test(&crust, &args);
        assert_eq!(out.status.code(), Some(2), "{switch:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("none of the selected flavors (dump) pre-dumps"),
            "{stderr}"
        );
    }
}
