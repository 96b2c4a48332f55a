//! Reporting end to end, with the real engine: `--junit` (parsed back
//! with an XML parser), `--json` (every line parsed), the summary table,
//! `--keep-img always|failed|never`, and a deliberately broken test whose
//! failure shows its check, the engine's and the test's logs and a replay
//! command that, run as printed, reproduces that failure alone.
//!
//! The broken test is `zdtm-dummy --mode=fail` (it says so on stderr and
//! reports `FAIL: asked to` after the restore) in a manifest of the test's
//! own, beside `zero_pages` (passes) and `heap` (excluded from `dump`:
//! skipped there). They need the workspace built (`crust` and the test
//! programs next to `zdtm`) and root; they fail, saying so, otherwise.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{require_root, ZDTM};

fn crust() -> PathBuf {
    let crust = Path::new(ZDTM).with_file_name("crust");
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

/// A manifest and a log dir of the test's own.
struct Suite {
    dir: tempfile::TempDir,
}

impl Suite {
    fn new() -> Suite {
        let suite = Suite {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let meta = suite.path().join("meta");
        std::fs::create_dir(&meta).expect("mkdir meta");
        for (name, text) in [
            ("zero_pages", "description = \"passes\"\n"),
            (
                "zdtm-dummy",
                "description = \"broken on purpose\"\nopts = [\"--mode=fail\"]\n",
            ),
            (
                "heap",
                "description = \"skipped in dump\"\nexclude_flavors = [\"dump\"]\n",
            ),
        ] {
            std::fs::write(meta.join(format!("{name}.toml")), text).expect("write metadata");
        }
        suite
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn logs(&self) -> PathBuf {
        self.path().join("logs")
    }

    /// `zdtm run ARGS --tests-dir T --log-dir L --crust C`, from `cwd`.
    fn zdtm_in(&self, cwd: &Path, args: &[&str]) -> Output {
        Command::new(ZDTM)
            .arg("run")
            .args(args)
            .arg("--tests-dir")
            .arg(self.path())
            .arg("--log-dir")
            .arg(self.logs())
            .arg("--crust")
            .arg(crust())
            .current_dir(cwd)
            .env_remove("ZDTM_TESTS_DIR")
            .env_remove("ZDTM_FLAVORS_DIR")
            .output()
            .expect("run zdtm")
    }

    fn zdtm(&self, args: &[&str]) -> Output {
        self.zdtm_in(self.path(), args)
    }
}

/// An XML element, as parsed back by quick-xml.
#[derive(Debug, Default)]
struct Element {
    name: String,
    attrs: HashMap<String, String>,
    text: String,
    children: Vec<Element>,
}

impl Element {
    fn all<'a>(&'a self, name: &str, out: &mut Vec<&'a Element>) {
        if self.name == name {
            out.push(self);
        }
        for c in &self.children {
            c.all(name, out);
        }
    }

    fn find(&self, name: &str) -> Vec<&Element> {
        let mut out = Vec::new();
        self.all(name, &mut out);
        out
    }

    fn attr(&self, name: &str) -> &str {
        self.attrs.get(name).map_or("", String::as_str)
    }
}

/// Parses a whole document (well-formedness checked by the parser: tags
/// matched, entities known, one root).
fn parse_xml(xml: &str) -> Element {
    use quick_xml::events::{BytesStart, Event};
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let element = |e: &BytesStart| Element {
        name: String::from_utf8(e.name().as_ref().to_vec()).expect("utf-8 name"),
        attrs: e
            .attributes()
            .map(|a| {
                let a = a.expect("attribute");
                (
                    String::from_utf8(a.key.as_ref().to_vec()).expect("utf-8 key"),
                    a.unescape_value().expect("attribute value").into_owned(),
                )
            })
            .collect(),
        ..Element::default()
    };
    let mut stack = vec![Element::default()];
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) => stack.push(element(&e)),
            Event::Empty(e) => {
                let done = element(&e);
                stack.last_mut().expect("open").children.push(done);
            }
            Event::End(_) => {
                let done = stack.pop().expect("open element");
                stack.last_mut().expect("parent").children.push(done);
            }
            Event::Text(t) => {
                let t = t.unescape().expect("text");
                stack.last_mut().expect("open").text.push_str(&t);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let mut document = stack.pop().expect("document");
    assert!(stack.is_empty(), "unclosed elements");
    assert_eq!(document.children.len(), 1, "one root element");
    document.children.remove(0)
}

/// The lines of `stdout` from `FAIL TEST (FLAVOR...` to the next result
/// line.
fn failure_block(stdout: &str, test: &str, flavor: &str) -> String {
    let head = format!("FAIL {test} ({flavor}");
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with(&head));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("no {head}: {stdout}"));
    let rest: Vec<&str> = lines.take_while(|l| l.starts_with("    ")).collect();
    format!("{first}\n{}", rest.join("\n"))
}

#[test]
fn junit_json_and_summary_of_a_parallel_run() {
    require_root("junit_json_and_summary_of_a_parallel_run");
    let suite = Suite::new();
    let (junit, json) = (suite.path().join("out/j.xml"), suite.path().join("e.jsonl"));
    let out = suite.zdtm(&[
        "-a",
        "-f",
        "dump",
        "-f",
        "predump-read",
        "-p",
        "2",
        "--junit",
        junit.to_str().expect("utf-8"),
        "--json",
        json.to_str().expect("utf-8"),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));

    // The failure: check, both logs' tails, kept work dir, replay.
    let block = failure_block(&stdout, "zdtm-dummy", "dump");
    let work = suite.logs().join("zdtm-dummy/dump");
    assert!(
        block.starts_with("FAIL zdtm-dummy (dump): test: asked to\n"),
        "{block}"
    );
    for expected in [
        format!(
            "--- last lines of {} ---",
            work.join("restore.log").display()
        ),
        format!("--- last lines of {} ---", work.join("test.log").display()),
        "zdtm-dummy: reporting FAIL as asked (--mode=fail)".to_string(),
        format!("    work dir: {}", work.display()),
        "    replay: ".to_string(),
    ] {
        assert!(block.contains(&expected), "{expected:?} not in:\n{block}");
    }
    assert!(
        work.join("img").is_dir(),
        "the failed run's images are kept"
    );
    assert!(!suite.logs().join("zero_pages").exists(), "passed: removed");

    // The summary: table, slowest, the counts line last.
    let summary: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Summary (test x flavor"))
        .collect();
    let words = |line: &str| {
        line.split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        words(summary[1]),
        ["test", "dump", "predump-read"],
        "{stdout}"
    );
    let row = |name: &str| {
        let line = summary
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row {name}: {stdout}"));
        let w = words(line);
        // name, then per flavor `MARK TIMEs` (or `SKIP`).
        let marks: Vec<String> = w[1..]
            .iter()
            .filter(|x| !x.ends_with('s') || x.as_str() == "SKIP")
            .cloned()
            .collect();
        assert!(
            w[1..]
                .iter()
                .filter(|x| x.ends_with('s') && x.as_str() != "SKIP")
                .all(|t| t.trim_end_matches('s').parse::<f64>().is_ok()),
            "{line}"
        );
        marks
    };
    assert_eq!(row("zero_pages"), ["PASS", "PASS"]);
    assert_eq!(row("zdtm-dummy"), ["FAIL", "FAIL"]);
    assert_eq!(row("heap"), ["SKIP", "PASS"]);
    assert!(
        summary[5].starts_with("Slowest runs (of 5 in ") && summary[5].ends_with("2 at a time):"),
        "{stdout}"
    );
    assert_eq!(summary.len(), 5 + 1 + 5 + 1, "{stdout}");
    assert_eq!(summary[11], "zdtm: 3 passed, 2 failed, 1 skipped");

    // JUnit: parsed back.
    let xml = std::fs::read_to_string(&junit).expect("junit written");
    let root = parse_xml(&xml);
    assert_eq!(root.name, "testsuites");
    assert_eq!(
        (
            root.attr("tests"),
            root.attr("failures"),
            root.attr("skipped")
        ),
        ("6", "2", "1")
    );
    let suites = root.find("testsuite");
    let names: Vec<&str> = suites.iter().map(|s| s.attr("name")).collect();
    assert_eq!(names.len(), 2, "{xml}");
    assert!(
        names.contains(&"dump") && names.contains(&"predump-read"),
        "{xml}"
    );
    let cases = root.find("testcase");
    assert_eq!(cases.len(), 6, "{xml}");
    for case in &cases {
        assert!(case.attr("time").parse::<f64>().is_ok(), "{xml}");
        let classname = case.attr("classname");
        let failures = case.find("failure");
        let skipped = case.find("skipped");
        match case.attr("name") {
            "zdtm-dummy" => {
                assert_eq!(failures.len(), 1, "{xml}");
                assert_eq!(failures[0].attr("message"), "test: asked to");
                assert_eq!(failures[0].attr("type"), "test");
                assert!(failures[0].text.contains("--- last lines of "), "{xml}");
                assert!(
                    failures[0]
                        .text
                        .contains(&format!("-t zdtm-dummy -f {classname} ")),
                    "{xml}"
                );
            }
            "heap" if classname == "dump" => {
                assert_eq!(skipped.len(), 1, "{xml}");
                assert_eq!(skipped[0].attr("message"), "excluded from flavor dump");
            }
            _ => assert!(failures.is_empty() && skipped.is_empty(), "{xml}"),
        }
    }

    // JSON lines: every line an event object.
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&json)
        .expect("json written")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(events.len(), 1 + 6 * 2 + 1);
    assert_eq!(events[0]["type"], "suite_started");
    assert_eq!(
        (events[0]["total"].as_u64(), events[0]["jobs"].as_u64()),
        (Some(6), Some(2))
    );
    let last = &events[events.len() - 1];
    assert_eq!(last["type"], "suite_finished");
    assert_eq!(
        (
            last["passed"].as_u64(),
            last["failed"].as_u64(),
            last["skipped"].as_u64()
        ),
        (Some(3), Some(2), Some(1))
    );
    let mut started = Vec::new();
    let mut statuses = Vec::new();
    for e in &events[1..events.len() - 1] {
        let key = (
            e["test"].as_str().expect("test"),
            e["flavor"].as_str().expect("flavor"),
        );
        match e["type"].as_str() {
            Some("run_started") => started.push(key),
            Some("run_finished") => {
                assert!(started.contains(&key), "finished before started: {e}");
                assert!(e["seconds"].as_f64().is_some(), "{e}");
                assert!(
                    e["replay"].as_str().is_some_and(|r| r.contains(" run -t ")),
                    "{e}"
                );
                let status = e["status"].as_str().expect("status");
                match status {
                    "fail" => {
                        assert_eq!(e["check"], "test", "{e}");
                        assert!(
                            e["detail"]
                                .as_str()
                                .is_some_and(|d| d.starts_with("asked to")),
                            "{e}"
                        );
                        assert!(
                            e["work_dir"]
                                .as_str()
                                .is_some_and(|d| Path::new(d).is_dir()),
                            "{e}"
                        );
                    }
                    "skip" => assert_eq!(e["detail"], "excluded from flavor dump", "{e}"),
                    _ => assert!(e["work_dir"].is_null() && e["check"].is_null(), "{e}"),
                }
                statuses.push((key, status));
            }
            other => panic!("unexpected event type {other:?}: {e}"),
        }
    }
    statuses.sort();
    assert_eq!(
        statuses,
        [
            (("heap", "dump"), "skip"),
            (("heap", "predump-read"), "pass"),
            (("zdtm-dummy", "dump"), "fail"),
            (("zdtm-dummy", "predump-read"), "fail"),
            (("zero_pages", "dump"), "pass"),
            (("zero_pages", "predump-read"), "pass"),
        ]
    );
}

#[test]
fn replay_command_reproduces_the_failure_alone() {
    require_root("replay_command_reproduces_the_failure_alone");
    let suite = Suite::new();
    // A switch that changes the flavor: the replay must repeat it.
    let out = suite.zdtm(&["-a", "-f", "dump", "-f", "predump-read", "--pre", "1"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    let block = failure_block(&stdout, "zdtm-dummy", "predump-read");
    let headline = block.lines().next().expect("headline").to_string();
    assert_eq!(
        headline,
        "FAIL zdtm-dummy (predump-read, pre 1 read): test: asked to"
    );
    let replay = block
        .lines()
        .find_map(|l| l.strip_prefix("    replay: "))
        .unwrap_or_else(|| panic!("no replay line: {block}"))
        .to_string();
    assert!(
        replay.starts_with(&format!(
            "{ZDTM} run -t zdtm-dummy -f predump-read --pre 1 "
        )),
        "{replay}"
    );
    assert!(replay.ends_with(" --keep-img always"), "{replay}");

    // Run it as printed, from elsewhere: just that test in that flavor.
    let desk = tempfile::tempdir().expect("tempdir");
    let again = Command::new("sh")
        .arg("-c")
        .arg(&replay)
        .current_dir(desk.path())
        .env_remove("ZDTM_TESTS_DIR")
        .env_remove("ZDTM_FLAVORS_DIR")
        .output()
        .expect("run the replay command");
    let stdout = text(&again.stdout);
    assert_eq!(
        again.status.code(),
        Some(1),
        "{stdout}{}",
        text(&again.stderr)
    );
    let results: Vec<&str> = stdout
        .lines()
        .filter(|l| ["PASS ", "FAIL ", "SKIP "].iter().any(|p| l.starts_with(p)))
        .collect();
    assert_eq!(results, [headline.as_str()], "{stdout}");
    assert!(
        stdout.ends_with("\nzdtm: 0 passed, 1 failed, 0 skipped\n"),
        "{stdout}"
    );
    let work = desk.path().join("zdtm-logs/zdtm-dummy/predump-read");
    assert!(
        work.join("img/pre1").is_dir() && work.join("test.log").is_file(),
        "the replay keeps its work dir: {stdout}"
    );
    // The replay of the replay is the same command.
    let block = failure_block(&stdout, "zdtm-dummy", "predump-read");
    assert!(block.contains(&format!("    replay: {replay}")), "{block}");
}

#[test]
fn keep_img_modes() {
    require_root("keep_img_modes");
    let suite = Suite::new();
    let (passed, failed) = (
        suite.logs().join("zero_pages/dump"),
        suite.logs().join("zdtm-dummy/dump"),
    );
    // (options, passed run's dir kept, failed run's dir kept)
    let cases: [(&[&str], bool, bool); 5] = [
        (&[], false, true),
        (&["--keep-img", "failed"], false, true),
        (&["--keep-img", "always"], true, true),
        (&["--keep-img"], true, true),
        (&["--keep-img=never"], false, false),
    ];
    for (options, keep_passed, keep_failed) in cases {
        let _ = std::fs::remove_dir_all(suite.logs());
        std::fs::create_dir(suite.logs()).expect("mkdir");
        let mut args = vec!["-t", "zero_pages", "-t", "zdtm-dummy", "-f", "dump"];
        args.extend_from_slice(options);
        let out = suite.zdtm(&args);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{options:?}: {stdout}");
        assert_eq!(
            passed.join("img").is_dir(),
            keep_passed,
            "{options:?}: {stdout}"
        );
        assert_eq!(
            failed.join("img").is_dir(),
            keep_failed,
            "{options:?}: {stdout}"
        );
        let block = failure_block(&stdout, "zdtm-dummy", "dump");
        assert_eq!(
            block.contains("    work dir: "),
            keep_failed,
            "{options:?}: {block}"
        );
        assert!(block.contains("    replay: "), "{options:?}: {block}");
        assert!(
            stdout.ends_with("zdtm: 1 passed, 1 failed, 0 skipped\n"),
            "{stdout}"
        );
    }
}

#[test]
fn a_report_file_that_cannot_be_written_is_a_setup_error() {
    require_root("a_report_file_that_cannot_be_written_is_a_setup_error");
    let suite = Suite::new();
    let blocker = suite.path().join("file");
    std::fs::write(&blocker, "").expect("write");
    let bad = blocker.join("j.xml");
    for option in ["--junit", "--json"] {
        let out = suite.zdtm(&[
            "-t",
            "zero_pages",
            "-f",
            "dump",
            option,
            bad.to_str().expect("utf-8"),
        ]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains(option), "{}", text(&out.stderr));
        assert!(text(&out.stdout).is_empty(), "nothing ran");
    }
}
