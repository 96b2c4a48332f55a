//! Events: how the runner core tells the reporters what happens.
//!
//! The core ([`crate::session`] and the workers running
//! [`crate::run::run_one`]) emits [`Event`]s on a channel; the session's
//! main thread hands each one to every [`Reporter`] (the terminal, a
//! `--junit` file, a `--json` file: see [`crate::reporters`]). Reporters
//! see nothing else of the core: what they print or write is made of the
//! events alone.
//!
//! Also here: the replay command of a run ([`replay_command`]), the exact
//! one-line command that runs just that test in just that flavor again.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

use crate::report::{Outcome, Summary};

/// What happens during `zdtm run`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The session starts: `total` runs, `jobs` at a time.
    SuiteStarted {
        /// Runs to do (tests x flavors, skipped ones included).
        total: usize,
        /// Runs in parallel.
        jobs: usize,
    },
    /// A run starts.
    RunStarted {
        /// Test name.
        test: String,
        /// Flavor label (as in result lines).
        flavor: String,
    },
    /// A run is over (every run has a `RunStarted` first, skipped ones
    /// too).
    RunFinished {
        /// Its outcome.
        outcome: Outcome,
    },
    /// Every run is over and the session's processes are gone.
    SuiteFinished {
        /// The counts.
        summary: Summary,
        /// Wall time of the session.
        elapsed: Duration,
    },
}

/// Something that consumes the events.
pub trait Reporter: Send {
    /// Takes one event.
    fn event(&mut self, event: &Event);
    /// After the last event: writes what is left; `Err` says what could
    /// not be written.
    fn finish(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// Every reporter of a session.
#[derive(Default)]
pub struct Reporters(pub Vec<Box<dyn Reporter>>);

impl Reporters {
    /// Hands `event` to every reporter, in order.
    pub fn event(&mut self, event: &Event) {
        for r in &mut self.0 {
            r.event(event);
        }
    }

    /// Finishes every reporter; the errors, if any.
    pub fn finish(&mut self) -> Vec<String> {
        self.0.iter_mut().filter_map(|r| r.finish().err()).collect()
    }
}

/// Options of `zdtm run` a replay command leaves out: they select tests
/// and flavors (the replay names its own), or only say how to report or
/// how many runs at once (long names; short ones below).
const NOT_REPLAYED_LONG: &[&str] = &[
    "all", "test", "exclude", "shard", "flavor", "jobs", "junit", "json", "keep-img", "log-dir",
];
/// The same, by short name.
const NOT_REPLAYED_SHORT: &[char] = &['a', 't', 'x', 'f', 'j', 'p'];

/// The switches of `zdtm run`'s command line (`matches` of `run`, the
/// subcommand `run`) that a replay command repeats: every option given
/// on the command line except those of [`NOT_REPLAYED_LONG`], in the
/// order of the command's definition, each as `--long VALUE` (relative
/// paths of `PATH` and `DIR` options made absolute), then the positional
/// arguments after `--`. New switches of the flavors or the engine are
/// therefore repeated without being listed here.
pub fn replay_switches(run: &Command, matches: &ArgMatches) -> Vec<String> {
    let cwd = std::env::current_dir().ok();
    let mut words = Vec::new();
    let mut trailing = Vec::new();
    for arg in run.get_arguments() {
        let id = arg.get_id().as_str();
        if matches.value_source(id) != Some(ValueSource::CommandLine) {
            continue;
        }
        let long = arg.get_long();
        if long.is_some_and(|l| NOT_REPLAYED_LONG.contains(&l))
            || arg
                .get_short()
                .is_some_and(|s| NOT_REPLAYED_SHORT.contains(&s))
        {
            continue;
        }
        let is_path = arg
            .get_value_names()
            .is_some_and(|names| names.iter().any(|n| *n == "PATH" || *n == "DIR"));
        let value = |raw: &std::ffi::OsStr| -> String {
            let path = Path::new(raw);
            let raw = match (&cwd, is_path && path.is_relative()) {
                // (components() drops the `.` of `dir/.`)
                (Some(cwd), true) => cwd
                    .join(path)
                    .components()
                    .collect::<PathBuf>()
                    .into_os_string(),
                _ => raw.to_os_string(),
            };
            raw.to_string_lossy().into_owned()
        };
        let name = match (long, arg.get_short()) {
            (Some(long), _) => format!("--{long}"),
            (None, Some(short)) => format!("-{short}"),
            (None, None) => {
                // Positional: after `--`, at the end.
                if let Some(values) = matches.get_raw(id) {
                    trailing.extend(values.map(value));
                }
                continue;
            }
        };
        if !arg.get_action().takes_values() {
            // A flag, given once or more.
            let count = match arg.get_action() {
                clap::ArgAction::Count => usize::from(matches.get_count(id)),
                _ => 1,
            };
            for _ in 0..count.max(1) {
                words.push(name.clone());
            }
            continue;
        }
        let Some(occurrences) = matches.get_raw_occurrences(id) else {
            continue;
        };
        for occurrence in occurrences {
            let values: Vec<String> = occurrence.map(value).collect();
            if values.is_empty() {
                words.push(name.clone());
            }
            for v in values {
                words.push(name.clone());
                words.push(v);
            }
        }
    }
    if !trailing.is_empty() {
        words.push("--".to_string());
        words.extend(trailing);
    }
    words
}

/// How the replay command names the `zdtm` binary: as it was run (made
/// absolute when it was a relative path), `zdtm` when unknown.
pub fn program_name(argv0: Option<OsString>) -> String {
    let Some(argv0) = argv0 else {
        return "zdtm".to_string();
    };
    let path = PathBuf::from(&argv0);
    if path.is_relative() && path.components().count() > 1 {
        if let Ok(cwd) = std::env::current_dir() {
            return cwd.join(path).to_string_lossy().into_owned();
        }
    }
    argv0.to_string_lossy().into_owned()
}

/// The command that runs `test` (none for a `--bin` run, whose
/// `--bin` is among the switches) in flavor `flavor` (its name: the
/// command-line switches in `switches` change it as they did) and keeps
/// the work dir, quoted for a POSIX shell.
pub fn replay_command(
    program: &str,
    test: Option<&str>,
    flavor: &str,
    switches: &[String],
) -> String {
    let mut words: Vec<&str> = vec![program, "run"];
    if let Some(test) = test {
        words.extend(["-t", test]);
    }
    words.extend(["-f", flavor]);
    let trailing = switches.iter().position(|w| w == "--");
    let (options, rest) = switches.split_at(trailing.unwrap_or(switches.len()));
    words.extend(options.iter().map(String::as_str));
    words.extend(["--keep-img", "always"]);
    words.extend(rest.iter().map(String::as_str));
    words
        .into_iter()
        .map(shell_quote)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `word` quoted for a POSIX shell, unchanged when it needs no quotes.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::CommandFactory;

    fn switches(args: &[&str]) -> Vec<String> {
        let mut argv = vec!["zdtm", "run"];
        argv.extend_from_slice(args);
        let cli = Cli::command();
        let matches = cli.clone().try_get_matches_from(argv).expect("parses");
        let (_, sub) = matches.subcommand().expect("run");
        let run = cli.find_subcommand("run").expect("run").clone();
        replay_switches(&run, sub)
    }

    #[test]
    fn replay_repeats_the_switches_that_change_flavors() {
        assert!(switches(&["-a"]).is_empty());
        assert!(switches(&[
            "-t",
            "x",
            "-f",
            "dump",
            "-p",
            "2",
            "--keep-img",
            "--junit",
            "j",
            "--json",
            "e",
            "--log-dir",
            "l"
        ])
        .is_empty());
        assert_eq!(
            switches(&[
                "-a",
                "--pre-dump-mode",
                "read",
                "--pre",
                "2",
                "--lazy-pages"
            ]),
            ["--pre", "2", "--pre-dump-mode", "read", "--lazy-pages"]
        );
        let cwd = std::env::current_dir().expect("cwd");
        let abs = |p: &str| cwd.join(p).to_string_lossy().into_owned();
        assert_eq!(
            switches(&["-a", "--tests-dir", "."]),
            [
                "--tests-dir".to_string(),
                cwd.to_string_lossy().into_owned()
            ]
        );
        assert_eq!(
            switches(&["-a", "--crust", "t/crust", "--tests-dir=/abs/tests"]),
            [
                "--engine".to_string(),
                abs("t/crust"),
                "--tests-dir".into(),
                "/abs/tests".into()
            ]
        );
        assert_eq!(
            switches(&["--bin", "b", "--bin-arg", "--mode=fail", "--bin-arg", "x y"]),
            [
                "--bin".to_string(),
                abs("b"),
                "--bin-arg".into(),
                "--mode=fail".into(),
                "--bin-arg".into(),
                "x y".into()
            ]
        );
    }

    #[test]
    fn replay_command_lines() {
        assert_eq!(
            replay_command("zdtm", Some("maps_anon"), "dump", &[]),
            "zdtm run -t maps_anon -f dump --keep-img always"
        );
        let s: Vec<String> = ["--pre", "2", "--bin-arg", "it's", "--", "a b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            replay_command("/x/zdtm", None, "predump-read", &s),
            "/x/zdtm run -f predump-read --pre 2 --bin-arg 'it'\\''s' --keep-img always -- 'a b'"
        );
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a;b"), "'a;b'");
    }

    #[test]
    fn program_names() {
        assert_eq!(program_name(None), "zdtm");
        assert_eq!(program_name(Some("zdtm".into())), "zdtm");
        assert_eq!(program_name(Some("/usr/bin/zdtm".into())), "/usr/bin/zdtm");
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(
            program_name(Some("target/release/zdtm".into())),
            cwd.join("target/release/zdtm").to_string_lossy()
        );
    }
}
