//! The reporters: consumers of [`Event`]s.
//!
//! - [`Terminal`]: the result lines on stdout, as each run finishes (see
//!   [`crate::report`]); on a terminal, a live progress line on stderr
//!   (`[done/total] running: a (dump), b (lazy), 1 failed`), redrawn at
//!   each event and erased before anything else is printed; at the end
//!   the summary: a table test x flavor with each run's verdict and
//!   time, the slowest runs, and exactly `zdtm: N passed, N failed, N
//!   skipped` as the last line.
//! - [`Junit`] (`--junit FILE`): JUnit XML, one `<testsuite>` per flavor,
//!   one `<testcase>` per run (`classname` the flavor, `name` the test),
//!   written when the session ends.
//! - [`JsonLines`] (`--json FILE`): one JSON object per event and line,
//!   written (and flushed) as the events come.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::events::{Event, Reporter};
use crate::report::{Outcome, Summary, Verdict};

/// Runs listed as the slowest in the summary.
pub const SLOWEST: usize = 10;

/// Where a [`Terminal`] writes.
pub type Sink = Box<dyn Write + Send>;

/// The terminal: result lines, the progress line, the summary.
pub struct Terminal {
    out: Sink,
    /// Where the progress line goes (stderr when it is a terminal).
    progress: Option<Sink>,
    /// Columns of the progress line.
    width: usize,
    total: usize,
    jobs: usize,
    done: usize,
    failed: usize,
    /// (test, flavor) of the runs going on, in start order.
    running: Vec<(String, String)>,
    /// Every run started so far, in start order.
    started: Vec<(String, String)>,
    outcomes: Vec<Outcome>,
    /// Whether a progress line is on the screen.
    drawn: bool,
}

impl Terminal {
    /// Result lines and summary on `out`; a progress line on `progress`
    /// (if any), at most `width` columns wide.
    pub fn new(out: Sink, progress: Option<Sink>, width: usize) -> Terminal {
        Terminal {
            out,
            progress,
            width: width.max(20),
            total: 0,
            jobs: 1,
            done: 0,
            failed: 0,
            running: Vec::new(),
            started: Vec::new(),
            outcomes: Vec::new(),
            drawn: false,
        }
    }

    /// On stdout; the progress line on stderr when stderr is a terminal.
    pub fn stdio() -> Terminal {
        use std::io::IsTerminal as _;
        let progress: Option<Sink> = std::io::stderr()
            .is_terminal()
            .then(|| Box::new(std::io::stderr()) as Sink);
        Terminal::new(Box::new(std::io::stdout()), progress, terminal_width())
    }

    fn erase(&mut self) {
        if let (true, Some(p)) = (self.drawn, self.progress.as_mut()) {
            let _ = p.write_all(b"\r\x1b[K");
            let _ = p.flush();
        }
        self.drawn = false;
    }

    fn draw(&mut self) {
        let line = progress_line(
            self.done,
            self.total,
            &self.running,
            self.failed,
            self.width - 1,
        );
        if let Some(p) = self.progress.as_mut() {
            let _ = write!(p, "\r\x1b[K{line}");
            let _ = p.flush();
            self.drawn = true;
        }
    }

    fn print(&mut self, text: &str) {
        self.erase();
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }
}

/// The progress line, cut to `width` characters.
pub fn progress_line(
    done: usize,
    total: usize,
    running: &[(String, String)],
    failed: usize,
    width: usize,
) -> String {
    let mut line = format!("[{done}/{total}]");
    if !running.is_empty() {
        let names: Vec<String> = running.iter().map(|(t, f)| format!("{t} ({f})")).collect();
        let _ = write!(line, " running: {}", names.join(", "));
    }
    let tail = if failed > 0 {
        format!(", {failed} failed")
    } else {
        String::new()
    };
    let chars = line.chars().count() + tail.chars().count();
    if chars > width {
        let keep = width.saturating_sub(tail.chars().count() + 3);
        line = line.chars().take(keep).collect::<String>() + "...";
    }
    line + &tail
}

/// The terminal's width (80 when unknown).
fn terminal_width() -> usize {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a `winsize` to the pointer, which points
    // to a live one; on a descriptor that is not a terminal it fails and
    // writes nothing.
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        80
    }
}

impl Reporter for Terminal {
    fn event(&mut self, event: &Event) {
        match event {
            Event::SuiteStarted { total, jobs } => {
                self.total = *total;
                self.jobs = *jobs;
                self.draw();
            }
            Event::RunStarted { test, flavor } => {
                self.running.push((test.clone(), flavor.clone()));
                self.started.push((test.clone(), flavor.clone()));
                self.draw();
            }
            Event::RunFinished { outcome } => {
                self.done += 1;
                if matches!(outcome.verdict, Verdict::Fail(_)) {
                    self.failed += 1;
                }
                if let Some(i) = self
                    .running
                    .iter()
                    .position(|(t, f)| *t == outcome.test && *f == outcome.flavor)
                {
                    self.running.remove(i);
                }
                self.print(&outcome.render());
                self.outcomes.push(outcome.clone());
                self.draw();
            }
            Event::SuiteFinished { summary, elapsed } => {
                in_start_order(&mut self.outcomes, &self.started);
                let text = render_summary(&self.outcomes, summary, *elapsed, self.jobs);
                self.print(&text);
            }
        }
    }

    fn finish(&mut self) -> Result<(), String> {
        self.erase();
        Ok(())
    }
}

/// Sorts `outcomes` (which come as runs finish) in the order their runs
/// started (the order of the jobs, tests first, then flavors).
pub fn in_start_order(outcomes: &mut [Outcome], started: &[(String, String)]) {
    outcomes.sort_by_key(|o| {
        started
            .iter()
            .position(|(t, f)| *t == o.test && *f == o.flavor)
            .unwrap_or(usize::MAX)
    });
}

/// A verdict's mark.
fn mark(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "PASS",
        Verdict::Fail(_) => "FAIL",
        Verdict::Skip(_) => "SKIP",
    }
}

/// Names in order of first appearance.
fn first_seen<'a>(names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for n in names {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// The summary: the table test x flavor, the slowest runs, the counts
/// line (last, with its newline).
pub fn render_summary(
    outcomes: &[Outcome],
    summary: &Summary,
    elapsed: Duration,
    jobs: usize,
) -> String {
    let mut out = String::new();
    if !outcomes.is_empty() {
        let tests = first_seen(outcomes.iter().map(|o| o.test.as_str()));
        let flavors = first_seen(outcomes.iter().map(|o| o.flavor.as_str()));
        let cells: HashMap<(&str, &str), String> = outcomes
            .iter()
            .map(|o| {
                let cell = match o.verdict {
                    Verdict::Skip(_) => "SKIP".to_string(),
                    _ => format!("{} {:.2}s", mark(&o.verdict), o.elapsed.as_secs_f64()),
                };
                ((o.test.as_str(), o.flavor.as_str()), cell)
            })
            .collect();
        let first = tests
            .iter()
            .map(|t| t.len())
            .chain(["test".len()])
            .max()
            .unwrap_or(4);
        let widths: Vec<usize> = flavors
            .iter()
            .map(|f| {
                tests
                    .iter()
                    .filter_map(|t| cells.get(&(*t, *f)).map(String::len))
                    .chain([f.len(), 1])
                    .max()
                    .unwrap_or(1)
            })
            .collect();
        let _ = writeln!(out, "Summary (test x flavor, wall time of each run):");
        let row = |out: &mut String, first_cell: &str, cells: &[&str]| {
            let mut line = format!("  {first_cell:first$}");
            for (cell, width) in cells.iter().zip(&widths) {
                let _ = write!(line, "  {cell:width$}");
            }
            let _ = writeln!(out, "{}", line.trim_end());
        };
        row(&mut out, "test", &flavors);
        for t in &tests {
            let line: Vec<&str> = flavors
                .iter()
                .map(|f| cells.get(&(*t, *f)).map_or("-", String::as_str))
                .collect();
            row(&mut out, t, &line);
        }
        let mut ran: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| !matches!(o.verdict, Verdict::Skip(_)))
            .collect();
        ran.sort_by_key(|o| std::cmp::Reverse(o.elapsed));
        if !ran.is_empty() {
            let _ = writeln!(
                out,
                "Slowest runs (of {} in {:.1}s wall time, {jobs} at a time):",
                ran.len(),
                elapsed.as_secs_f64()
            );
            for o in ran.iter().take(SLOWEST) {
                let _ = writeln!(
                    out,
                    "  {:>8.2}s  {} {} ({})",
                    o.elapsed.as_secs_f64(),
                    mark(&o.verdict),
                    o.test,
                    o.flavor
                );
            }
        }
    }
    let _ = writeln!(out, "{}", summary.render());
    out
}

/// Creates a report file (its directory too).
fn create(path: &Path) -> Result<File, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// `--junit FILE`.
pub struct Junit {
    path: PathBuf,
    file: Option<File>,
    started: Vec<(String, String)>,
    outcomes: Vec<Outcome>,
    elapsed: Duration,
}

impl Junit {
    /// Creates `path` now (so that a path that cannot be written is a
    /// setup error before anything runs); it is written at the end.
    pub fn create(path: &Path) -> Result<Junit, String> {
        Ok(Junit {
            file: Some(create(path)?),
            path: path.to_path_buf(),
            started: Vec::new(),
            outcomes: Vec::new(),
            elapsed: Duration::ZERO,
        })
    }
}

impl Reporter for Junit {
    fn event(&mut self, event: &Event) {
        match event {
            Event::RunStarted { test, flavor } => self.started.push((test.clone(), flavor.clone())),
            Event::RunFinished { outcome } => self.outcomes.push(outcome.clone()),
            Event::SuiteFinished { elapsed, .. } => self.elapsed = *elapsed,
            Event::SuiteStarted { .. } => {}
        }
    }

    fn finish(&mut self) -> Result<(), String> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        in_start_order(&mut self.outcomes, &self.started);
        let xml = render_junit(&self.outcomes, self.elapsed);
        let mut w = BufWriter::new(file);
        w.write_all(xml.as_bytes())
            .and_then(|()| w.flush())
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }
}

/// `text` escaped for XML text and attribute values; characters XML 1.0
/// cannot hold at all become U+FFFD.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if u32::from(c) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The JUnit XML of a session.
pub fn render_junit(outcomes: &[Outcome], elapsed: Duration) -> String {
    let count = |os: &[&Outcome]| {
        let failures = os
            .iter()
            .filter(|o| matches!(o.verdict, Verdict::Fail(_)))
            .count();
        let skipped = os
            .iter()
            .filter(|o| matches!(o.verdict, Verdict::Skip(_)))
            .count();
        (os.len(), failures, skipped)
    };
    let all: Vec<&Outcome> = outcomes.iter().collect();
    let (tests, failures, skipped) = count(&all);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"zdtm\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" \
         skipped=\"{skipped}\" time=\"{:.3}\">",
        elapsed.as_secs_f64()
    );
    for flavor in first_seen(outcomes.iter().map(|o| o.flavor.as_str())) {
        let runs: Vec<&Outcome> = outcomes.iter().filter(|o| o.flavor == flavor).collect();
        let (tests, failures, skipped) = count(&runs);
        let time: f64 = runs.iter().map(|o| o.elapsed.as_secs_f64()).sum();
        let flavor = xml_escape(flavor);
        let _ = writeln!(
            out,
            "  <testsuite name=\"{flavor}\" tests=\"{tests}\" failures=\"{failures}\" \
             errors=\"0\" skipped=\"{skipped}\" time=\"{time:.3}\">"
        );
        for o in runs {
            let _ = write!(
                out,
                "    <testcase name=\"{}\" classname=\"{flavor}\" time=\"{:.3}\"",
                xml_escape(&o.test),
                o.elapsed.as_secs_f64()
            );
            match &o.verdict {
                Verdict::Pass => out.push_str("/>\n"),
                Verdict::Skip(reason) => {
                    let _ = writeln!(
                        out,
                        ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                        xml_escape(reason)
                    );
                }
                Verdict::Fail(failures) => {
                    let (check, summary) = failures.first().map_or(("unknown", ""), |f| {
                        (f.check.as_str(), f.detail.lines().next().unwrap_or(""))
                    });
                    let _ = writeln!(
                        out,
                        ">\n      <failure message=\"{}\" type=\"{}\">{}</failure>\n    \
                         </testcase>",
                        xml_escape(&format!("{check}: {summary}")),
                        xml_escape(check),
                        xml_escape(&o.render())
                    );
                }
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// `--json FILE`.
pub struct JsonLines {
    path: PathBuf,
    file: BufWriter<File>,
    error: Option<String>,
}

impl JsonLines {
    /// Creates `path` now; each event is appended as it comes.
    pub fn create(path: &Path) -> Result<JsonLines, String> {
        Ok(JsonLines {
            file: BufWriter::new(create(path)?),
            path: path.to_path_buf(),
            error: None,
        })
    }
}

/// The JSON object of an event.
pub fn event_json(event: &Event) -> Value {
    match event {
        Event::SuiteStarted { total, jobs } => {
            json!({"type": "suite_started", "total": total, "jobs": jobs})
        }
        Event::RunStarted { test, flavor } => {
            json!({"type": "run_started", "test": test, "flavor": flavor})
        }
        Event::RunFinished { outcome: o } => {
            let (status, check, detail, failures) = match &o.verdict {
                Verdict::Pass => ("pass", None, None, Vec::new()),
                Verdict::Skip(reason) => ("skip", None, Some(reason.clone()), Vec::new()),
                Verdict::Fail(failures) => (
                    "fail",
                    failures.first().map(|f| f.check.clone()),
                    failures.first().map(|f| f.detail.clone()),
                    failures
                        .iter()
                        .map(|f| json!({"check": f.check, "detail": f.detail}))
                        .collect(),
                ),
            };
            json!({
                "type": "run_finished",
                "test": o.test,
                "flavor": o.flavor,
                "status": status,
                "seconds": o.elapsed.as_secs_f64(),
                "check": check,
                "detail": detail,
                "failures": failures,
                "work_dir": o.work_dir.as_ref().map(|d| d.to_string_lossy().into_owned()),
                "replay": o.replay,
            })
        }
        Event::SuiteFinished { summary, elapsed } => json!({
            "type": "suite_finished",
            "passed": summary.passed,
            "failed": summary.failed,
            "skipped": summary.skipped,
            "seconds": elapsed.as_secs_f64(),
        }),
    }
}

impl Reporter for JsonLines {
    fn event(&mut self, event: &Event) {
        if self.error.is_some() {
            return;
        }
        let line = event_json(event).to_string();
        let written = writeln!(self.file, "{line}").and_then(|()| self.file.flush());
        if let Err(e) = written {
            self.error = Some(format!("cannot write {}: {e}", self.path.display()));
        }
    }

    fn finish(&mut self) -> Result<(), String> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Failure;
    use std::sync::{Arc, Mutex};

    fn outcome(test: &str, flavor: &str, verdict: Verdict, ms: u64) -> Outcome {
        Outcome {
            test: test.into(),
            flavor: flavor.into(),
            verdict,
            elapsed: Duration::from_millis(ms),
            work_dir: None,
            replay: String::new(),
        }
    }

    /// A shared buffer to write to.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf-8")
        }
    }

    #[test]
    fn progress_lines() {
        let running = vec![
            ("a".to_string(), "dump".to_string()),
            ("b".to_string(), "lazy".to_string()),
        ];
        assert_eq!(
            progress_line(3, 10, &running, 0, 80),
            "[3/10] running: a (dump), b (lazy)"
        );
        assert_eq!(
            progress_line(3, 10, &running, 2, 80),
            "[3/10] running: a (dump), b (lazy), 2 failed"
        );
        let cut = progress_line(3, 10, &running, 2, 30);
        assert_eq!(cut, "[3/10] running: a..., 2 failed");
        assert_eq!(cut.chars().count(), 30);
        assert_eq!(progress_line(10, 10, &[], 0, 80), "[10/10]");
    }

    #[test]
    fn terminal_draws_progress_only_on_its_progress_sink() {
        let (out, progress) = (Buf::default(), Buf::default());
        let mut t = Terminal::new(Box::new(out.clone()), Some(Box::new(progress.clone())), 80);
        t.event(&Event::SuiteStarted { total: 2, jobs: 2 });
        t.event(&Event::RunStarted {
            test: "a".into(),
            flavor: "dump".into(),
        });
        t.event(&Event::RunFinished {
            outcome: outcome("a", "dump", Verdict::Pass, 420),
        });
        t.event(&Event::SuiteFinished {
            summary: Summary {
                passed: 1,
                failed: 0,
                skipped: 0,
            },
            elapsed: Duration::from_secs(1),
        });
        t.finish().expect("finish");
        let out = out.text();
        assert!(out.starts_with("PASS a (dump) 0.42s\n"), "{out}");
        assert!(
            out.ends_with("zdtm: 1 passed, 0 failed, 0 skipped\n"),
            "{out}"
        );
        assert!(!out.contains('\r'), "{out:?}");
        let progress = progress.text();
        assert!(
            progress.contains("\r\x1b[K[0/2] running: a (dump)"),
            "{progress:?}"
        );
        assert!(progress.contains("\r\x1b[K[1/2]"), "{progress:?}");
        assert!(
            progress.ends_with("\r\x1b[K"),
            "erased at the end: {progress:?}"
        );
    }

    #[test]
    fn summary_table_and_slowest() {
        let outcomes = vec![
            outcome("alpha", "dump", Verdict::Pass, 420),
            outcome(
                "alpha",
                "predump-read",
                Verdict::Fail(vec![Failure::new("memory", "x")]),
                1500,
            ),
            outcome("beta_long_name", "dump", Verdict::Skip("no".into()), 0),
        ];
        let summary = Summary::of(&outcomes);
        let text = render_summary(&outcomes, &summary, Duration::from_millis(2500), 2);
        assert_eq!(
            text,
            "Summary (test x flavor, wall time of each run):\n\
             \x20 test            dump        predump-read\n\
             \x20 alpha           PASS 0.42s  FAIL 1.50s\n\
             \x20 beta_long_name  SKIP        -\n\
             Slowest runs (of 2 in 2.5s wall time, 2 at a time):\n\
             \x20     1.50s  FAIL alpha (predump-read)\n\
             \x20     0.42s  PASS alpha (dump)\n\
             zdtm: 1 passed, 1 failed, 1 skipped\n"
        );
        assert_eq!(
            render_summary(&[], &Summary::default(), Duration::ZERO, 1),
            "zdtm: 0 passed, 0 failed, 0 skipped\n"
        );
    }

    #[test]
    fn summary_follows_the_start_order() {
        let out = Buf::default();
        let mut t = Terminal::new(Box::new(out.clone()), None, 80);
        t.event(&Event::SuiteStarted { total: 2, jobs: 2 });
        for test in ["b", "a"] {
            t.event(&Event::RunStarted {
                test: test.into(),
                flavor: "dump".into(),
            });
        }
        for test in ["a", "b"] {
            t.event(&Event::RunFinished {
                outcome: outcome(test, "dump", Verdict::Pass, 10),
            });
        }
        t.event(&Event::SuiteFinished {
            summary: Summary::default(),
            elapsed: Duration::ZERO,
        });
        let text = out.text();
        let rows: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("Summary"))
            .skip(2)
            .take(2)
            .collect();
        assert_eq!(rows, ["  b     PASS 0.01s", "  a     PASS 0.01s"], "{text}");
    }

    #[test]
    fn xml_escaping() {
        assert_eq!(
            xml_escape("a<b>&\"c\" 'd'\u{1}\te\n"),
            "a&lt;b&gt;&amp;&quot;c&quot; &apos;d&apos;\u{fffd}\te\n"
        );
    }

    #[test]
    fn junit_document() {
        let mut failed = outcome(
            "t<1>",
            "dump, pre 2 read",
            Verdict::Fail(vec![Failure::new("maps", "1 differ\n- a & b")]),
            1250,
        );
        failed.replay = "zdtm run -t 't<1>' -f dump --pre 2 --keep-img always".into();
        let xml = render_junit(
            &[
                failed,
                outcome("ok", "lazy", Verdict::Pass, 10),
                outcome("sk", "lazy", Verdict::Skip("needs \"avx\"".into()), 0),
            ],
            Duration::from_secs(3),
        );
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"zdtm\" tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"1\" time=\"3.000\">\n"), "{xml}");
        assert!(
            xml.contains("  <testsuite name=\"dump, pre 2 read\" tests=\"1\" failures=\"1\""),
            "{xml}"
        );
        assert!(xml.contains("<testcase name=\"t&lt;1&gt;\" classname=\"dump, pre 2 read\" time=\"1.250\">\n      <failure message=\"maps: 1 differ\" type=\"maps\">FAIL t&lt;1&gt; (dump, pre 2 read): maps: 1 differ\n    - a &amp; b\n    replay: zdtm run -t &apos;t&lt;1&gt;&apos;"), "{xml}");
        assert!(
            xml.contains("<testcase name=\"ok\" classname=\"lazy\" time=\"0.010\"/>\n"),
            "{xml}"
        );
        assert!(
            xml.contains("<skipped message=\"needs &quot;avx&quot;\"/>"),
            "{xml}"
        );
        assert!(xml.ends_with("  </testsuite>\n</testsuites>\n"), "{xml}");
    }

    #[test]
    fn json_objects() {
        let mut o = outcome(
            "t",
            "dump",
            Verdict::Fail(vec![
                Failure::new("test", "FAIL: x"),
                Failure::new("maps", "y"),
            ]),
            500,
        );
        o.work_dir = Some("/w/t/dump".into());
        o.replay = "zdtm run -t t -f dump --keep-img always".into();
        let v = event_json(&Event::RunFinished { outcome: o });
        assert_eq!(v["type"], "run_finished");
        assert_eq!(v["status"], "fail");
        assert_eq!(v["check"], "test");
        assert_eq!(v["detail"], "FAIL: x");
        assert_eq!(v["failures"][1]["check"], "maps");
        assert_eq!(v["seconds"], 0.5);
        assert_eq!(v["work_dir"], "/w/t/dump");
        assert_eq!(v["replay"], "zdtm run -t t -f dump --keep-img always");
        let v = event_json(&Event::RunFinished {
            outcome: outcome("t", "dump", Verdict::Skip("r".into()), 0),
        });
        assert_eq!(
            (v["status"].as_str(), v["detail"].as_str()),
            (Some("skip"), Some("r"))
        );
        assert!(v["check"].is_null() && v["work_dir"].is_null());
        let v = event_json(&Event::RunStarted {
            test: "t".into(),
            flavor: "lazy".into(),
        });
        assert_eq!(
            (v["type"].as_str(), v["test"].as_str(), v["flavor"].as_str()),
            (Some("run_started"), Some("t"), Some("lazy"))
        );
    }
}
