//! The command line.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::driver::EngineKind;
use crate::flavors::{Lazy, Overrides, PreDumpMode, Tracker, MAX_ITERS, MAX_PRE_DUMPS};
use crate::report::KeepImg;
use crate::select::Shard;

/// zdtm: checkpoint/restore conformance harness for crust.
///
/// Exit status: 0 when every run passed (or was skipped), 1 when at least
/// one failed, 2 on usage or setup errors (bad manifest or flavor file,
/// unknown test or flavor, crust missing, not root, a --junit or --json
/// file that cannot be written), 130 when interrupted.
#[derive(Debug, Parser)]
#[command(name = "zdtm", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Cmd {
    /// List the tests of the manifest and the flavors.
    List(ListArgs),
    /// Run tests: launch, dump, restore, compare, check (needs root).
    Run(RunArgs),
}

/// Where the manifest and flavors are.
#[derive(Debug, Clone, Args)]
pub struct Dirs {
    /// Directory holding meta/ (one NAME.toml per test) [default: $ZDTM_TESTS_DIR, else the
    /// source tree's zdtm-tests/].
    #[arg(long, value_name = "DIR")]
    pub tests_dir: Option<PathBuf>,
    /// Directory of flavor files [default: $ZDTM_FLAVORS_DIR, else the
    /// source tree's flavors/].
    #[arg(long, value_name = "DIR")]
    pub flavors_dir: Option<PathBuf>,
}

/// `zdtm list`: the selected tests' names, one a line.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Every test (the default).
    #[arg(short = 'a', long = "all")]
    pub all: bool,
    /// Only this test, or the tests matching this glob (repeatable).
    #[arg(short = 't', long = "test", value_name = "NAME")]
    pub tests: Vec<String>,
    /// Leave out the tests matching this regex (repeatable).
    #[arg(short = 'x', long = "exclude", value_name = "REGEX")]
    pub exclude: Vec<String>,
    /// Only shard I of N of the selection (sorted by name, dealt in turn).
    #[arg(long = "shard", value_name = "I/N")]
    pub shard: Option<Shard>,
    /// Describe the selected tests (metadata) and list the flavors.
    #[arg(short = 'v', long = "verbose", conflicts_with = "flavor_names")]
    pub verbose: bool,
    /// Print the flavor names, one a line, instead of the tests.
    #[arg(long = "flavors")]
    pub flavor_names: bool,
    #[command(flatten)]
    pub dirs: Dirs,
}

/// `zdtm run`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("what").required(true).args(["all", "tests", "bin"])))]
pub struct RunArgs {
    /// Run every test of the manifest.
    #[arg(short = 'a', long = "all")]
    pub all: bool,
    /// Run this test, or the tests matching this glob (`*`, `?`,
    /// `[...]`; repeatable).
    #[arg(short = 't', long = "test", value_name = "NAME")]
    pub tests: Vec<String>,
    /// Leave out the tests whose name matches this regex (unanchored;
    /// repeatable).
    #[arg(
        short = 'x',
        long = "exclude",
        value_name = "REGEX",
        conflicts_with = "bin"
    )]
    pub exclude: Vec<String>,
    /// Run only shard I of N of the selected tests (sorted by name, test k
    /// in shard ((k-1) mod N)+1), for a CI matrix.
    #[arg(long = "shard", value_name = "I/N", conflicts_with = "bin")]
    pub shard: Option<Shard>,
    /// Run this binary, which follows the test protocol (named after its
    /// file name).
    #[arg(long = "bin", value_name = "PATH")]
    pub bin: Option<PathBuf>,
    /// Extra argument for the --bin binary (repeatable).
    #[arg(
        long = "bin-arg",
        value_name = "ARG",
        requires = "bin",
        conflicts_with_all = ["all", "tests"],
        allow_hyphen_values = true
    )]
    pub bin_args: Vec<String>,
    /// Pass the --bin binary `--filename=WORKDIR/NAME.test` (CRIU's zdtm
    /// convention for tests that work on a file).
    #[arg(
        long = "bin-filename",
        requires = "bin",
        conflicts_with_all = ["all", "tests", "bin_dirname"]
    )]
    pub bin_filename: bool,
    /// Pass the --bin binary `--dirname=WORKDIR/NAME.test` (CRIU's zdtm
    /// convention for tests that work on a directory).
    #[arg(long = "bin-dirname", requires = "bin", conflicts_with_all = ["all", "tests"])]
    pub bin_dirname: bool,
    /// After `--`: more arguments for the --bin binary (after any
    /// --bin-arg).
    #[arg(
        last = true,
        value_name = "ARGS",
        requires = "bin",
        conflicts_with_all = ["all", "tests"]
    )]
    pub bin_trailing: Vec<String>,
    /// Run under this flavor (repeatable; `all`: every flavor) [default:
    /// every flavor].
    #[arg(short = 'f', long = "flavor", value_name = "FLAVOR")]
    pub flavors: Vec<String>,
    /// N pre-dumps (the task keeps running) before the final dump, in
    /// every selected flavor (0: none).
    #[arg(
        long = "pre",
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_PRE_DUMPS))
    )]
    pub pre: Option<u32>,
    /// How every selected flavor that pre-dumps (after --pre) copies
    /// memory.
    #[arg(long = "pre-dump-mode", value_name = "MODE")]
    pub pre_dump_mode: Option<PreDumpMode>,
    /// Every selected flavor restores lazily, its pages served from the
    /// images by `crust lazy-pages` (post-copy, local).
    #[arg(long = "lazy-pages", conflicts_with = "remote_lazy_pages")]
    pub lazy_pages: bool,
    /// Every selected flavor dumps lazily (`crust dump --lazy-pages`) and
    /// restores lazily, its pages served by the dump over a veth pair to
    /// `crust lazy-pages --page-server` in a network namespace of its own.
    #[arg(long = "remote-lazy-pages")]
    pub remote_lazy_pages: bool,
    /// The dirty tracker of every selected flavor that pre-dumps (`crust
    /// pre-dump/dump --tracker`).
    #[arg(long = "tracker", value_name = "NAME")]
    pub tracker: Option<Tracker>,
    /// Pre-dumps and dumps send their pages to a `crust page-server`
    /// (started by the runner on 127.0.0.1 for each of them), whose
    /// images are restored.
    #[arg(long = "page-server")]
    pub page_server: bool,
    /// Checkpoint and restore each test N times in a row (the state
    /// compared after each restore).
    #[arg(
        long = "iters",
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_ITERS))
    )]
    pub iters: Option<u32>,
    /// In every selected flavor that pre-dumps, the pre-dumps are full
    /// snapshots instead (`crust dump --leave-running --track-mem`, each
    /// on top of the previous one), as CRIU's zdtm --snaps.
    #[arg(long = "snaps")]
    pub snaps: bool,
    /// With remote lazy flavors: set the veth link down for SECS seconds
    /// while each run's background transfer is going on, then up again
    /// (the run must still pass: no page is lost).
    #[arg(long = "cut-link", value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..=600))]
    pub cut_link: Option<u32>,
    /// Which runs keep their work dir (images, logs): `always`, `failed`
    /// or `never`; a bare `--keep-img` means `always`.
    #[arg(
        long,
        value_name = "WHEN",
        value_enum,
        num_args = 0..=1,
        default_value = "failed",
        default_missing_value = "always"
    )]
    pub keep_img: KeepImg,
    /// Also write a JUnit XML report to FILE.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Also write the events as JSON lines to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// The switches of the command line a replay command repeats (see
    /// `events::replay_switches`; `None`: none).
    #[arg(skip)]
    pub replay_switches: Option<Vec<String>>,
    /// The engine binary: crust, or one with CRIU's command line
    /// [default: crust next to the zdtm binary].
    #[arg(long = "engine", visible_alias = "crust", value_name = "PATH")]
    pub crust: Option<PathBuf>,
    /// Whose command line the engine takes [default: told by `ENGINE
    /// --version`, else by its file name].
    #[arg(long = "engine-kind", value_name = "KIND")]
    pub engine_kind: Option<EngineKind>,
    /// Where work dirs go: LOG_DIR/TEST/FLAVOR/.
    #[arg(long, value_name = "DIR", default_value = "zdtm-logs")]
    pub log_dir: PathBuf,
    /// Number of runs in parallel (`-p N` is the same).
    #[arg(
        short = 'j',
        visible_short_alias = 'p',
        long = "jobs",
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub jobs: u16,
    #[command(flatten)]
    pub dirs: Dirs,
}

impl RunArgs {
    /// The flavor settings overridden by `--pre` and `--pre-dump-mode`.
    pub fn overrides(&self) -> Overrides {
        let lazy = if self.remote_lazy_pages {
            Some(Lazy::Remote)
        } else if self.lazy_pages {
            Some(Lazy::Local)
        } else {
            None
        };
        Overrides {
            pre_dumps: self.pre,
            pre_dump_mode: self.pre_dump_mode,
            lazy,
            tracker: self.tracker,
            page_server: self.page_server,
            iters: self.iters,
            snaps: self.snaps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<RunArgs, String> {
        let mut argv = vec!["zdtm", "run"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .command
        {
            Cmd::Run(run) => Ok(run),
            Cmd::List(_) => Err("not run".into()),
        }
    }

    fn parse_list(args: &[&str]) -> Result<ListArgs, String> {
        let mut argv = vec!["zdtm", "list"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .command
        {
            Cmd::List(list) => Ok(list),
            Cmd::Run(_) => Err("not list".into()),
        }
    }

    #[test]
    fn selection_options() {
        let r = parse(&[
            "-t", "fpu_*", "-t", "heap", "-x", "avx", "-x", "^m", "--shard", "2/3",
        ])
        .expect("ok");
        assert_eq!(r.tests, ["fpu_*", "heap"]);
        assert_eq!(r.exclude, ["avx", "^m"]);
        assert_eq!(r.shard, Some(Shard { index: 2, count: 3 }));
        assert!(parse(&["-a", "--shard", "4/3"]).is_err());
        assert!(parse(&["--bin", "/x", "-x", "a"]).is_err());
        assert!(parse(&["--bin", "/x", "--shard", "1/2"]).is_err());
        let l = parse_list(&[]).expect("ok");
        assert!(l.tests.is_empty() && !l.verbose && !l.flavor_names && l.shard.is_none());
        let l = parse_list(&["-a", "-t", "x*", "-x", "y", "--shard", "1/2", "-v"]).expect("ok");
        assert_eq!((l.tests.len(), l.exclude.len(), l.verbose), (1, 1, true));
        assert!(parse_list(&["--flavors"]).expect("ok").flavor_names);
        assert!(parse_list(&["--flavors", "-v"]).is_err());
    }

    #[test]
    fn run_switches() {
        let r = parse(&[
            "-a",
            "--tracker",
            "soft-dirty",
            "--page-server",
            "--iters",
            "3",
            "--snaps",
        ])
        .expect("ok");
        let o = r.overrides();
        assert_eq!(o.tracker, Some(Tracker::SoftDirty));
        assert!(o.page_server && o.snaps);
        assert_eq!(o.iters, Some(3));
        assert!(parse(&["-a", "--tracker", "dirty"]).is_err());
        assert!(parse(&["-a", "--iters", "0"]).is_err());
        for t in ["auto", "uffd-wp", "content"] {
            assert!(parse(&["-a", "--tracker", t]).is_ok(), "{t}");
        }
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_variants() {
        let r = parse(&["-a"]).expect("ok");
        assert!(r.all && r.tests.is_empty() && r.jobs == 1);
        assert_eq!(r.log_dir, PathBuf::from("zdtm-logs"));

        let r = parse(&["-t", "a", "-t", "b", "-f", "dump", "-j", "2", "--keep-img"]).expect("ok");
        assert_eq!(r.tests, ["a", "b"]);
        assert_eq!(r.flavors, ["dump"]);
        assert_eq!(r.jobs, 2);
        assert_eq!(r.keep_img, KeepImg::Always);
        assert_eq!(parse(&["-a"]).expect("ok").keep_img, KeepImg::Failed);
        for (word, keep) in [
            ("always", KeepImg::Always),
            ("failed", KeepImg::Failed),
            ("never", KeepImg::Never),
        ] {
            let r = parse(&["-a", "--keep-img", word]).expect("ok");
            assert_eq!(r.keep_img, keep);
            let r = parse(&["-a", &format!("--keep-img={word}")]).expect("ok");
            assert_eq!(r.keep_img, keep);
        }
        assert!(parse(&["-a", "--keep-img", "sometimes"]).is_err());
        let r = parse(&["--keep-img", "-a", "-p", "3"]).expect("ok");
        assert_eq!((r.keep_img, r.jobs), (KeepImg::Always, 3));
        let r = parse(&["-a", "--junit", "j.xml", "--json", "e.jsonl"]).expect("ok");
        assert_eq!(r.junit, Some(PathBuf::from("j.xml")));
        assert_eq!(r.json, Some(PathBuf::from("e.jsonl")));

        let r = parse(&[
            "--bin",
            "/x/t",
            "--bin-arg",
            "--mode=fail",
            "--bin-arg",
            "-v",
        ])
        .expect("ok");
        assert_eq!(r.bin, Some(PathBuf::from("/x/t")));
        assert_eq!(r.bin_args, ["--mode=fail", "-v"]);

        let r = parse(&["--bin", "/x/t", "--bin-arg", "-a", "--", "--x=1", "-t", "y"]).expect("ok");
        assert_eq!(r.bin_args, ["-a"]);
        assert_eq!(r.bin_trailing, ["--x=1", "-t", "y"]);
        assert!(r.tests.is_empty() && !r.bin_filename && !r.bin_dirname);
        let r = parse(&["--bin", "/x/t", "--bin-dirname"]).expect("ok");
        assert!(r.bin_dirname && !r.bin_filename);
        assert!(parse(&["--bin", "/x/t", "--bin-filename", "--bin-dirname"]).is_err());
        assert!(parse(&["-a", "--bin-filename"]).is_err());
        assert!(parse(&["-a", "--", "x"]).is_err(), "-- ARGS needs --bin");
    }

    #[test]
    fn engine_options() {
        let r = parse(&["-a"]).expect("ok");
        assert_eq!((r.crust, r.engine_kind), (None, None));
        let r = parse(&["-a", "--engine", "/usr/sbin/criu"]).expect("ok");
        assert_eq!(r.crust, Some(PathBuf::from("/usr/sbin/criu")));
        let r = parse(&["-a", "--crust", "/x/crust", "--engine-kind", "criu"]).expect("ok");
        assert_eq!(r.crust, Some(PathBuf::from("/x/crust")));
        assert_eq!(r.engine_kind, Some(EngineKind::Criu));
        assert!(parse(&["-a", "--engine-kind", "runc"]).is_err());
    }

    #[test]
    fn pre_dump_overrides() {
        let r = parse(&["-a"]).expect("ok");
        assert_eq!(r.overrides(), Overrides::default());
        let r = parse(&["-a", "--pre-dump-mode", "read"]).expect("ok");
        assert_eq!(
            r.overrides(),
            Overrides {
                pre_dumps: None,
                pre_dump_mode: Some(PreDumpMode::Read),
                lazy: None,
                ..Overrides::default()
            }
        );
        let r = parse(&[
            "-t",
            "x",
            "-f",
            "dump",
            "--pre",
            "2",
            "--pre-dump-mode",
            "splice",
        ])
        .expect("ok");
        assert_eq!(
            r.overrides(),
            Overrides {
                pre_dumps: Some(2),
                pre_dump_mode: Some(PreDumpMode::Splice),
                lazy: None,
                ..Overrides::default()
            }
        );
        assert_eq!(parse(&["-a", "--pre", "0"]).expect("ok").pre, Some(0));
        assert!(parse(&["-a", "--pre-dump-mode", "copy"]).is_err());
        assert!(parse(&["-a", "--pre", "-1"]).is_err());
        assert!(parse(&["-a", "--pre", "65"]).is_err());
    }

    #[test]
    fn lazy_switches() {
        assert_eq!(parse(&["-a"]).expect("ok").overrides().lazy, None);
        let r = parse(&["-a", "--lazy-pages"]).expect("ok");
        assert_eq!(r.overrides().lazy, Some(Lazy::Local));
        let r = parse(&["-a", "--remote-lazy-pages", "--pre", "2"]).expect("ok");
        assert_eq!(
            r.overrides(),
            Overrides {
                pre_dumps: Some(2),
                pre_dump_mode: None,
                lazy: Some(Lazy::Remote),
                ..Overrides::default()
            }
        );
        let err = parse(&["-a", "--lazy-pages", "--remote-lazy-pages"]).expect_err("conflict");
        assert!(err.contains("cannot be used with"), "{err}");
        assert_eq!(
            parse(&["-a", "--cut-link", "3"]).expect("ok").cut_link,
            Some(3)
        );
        assert!(parse(&["-a", "--cut-link", "0"]).is_err());
    }

    #[test]
    fn run_rejects_bad_combinations() {
        assert!(parse(&[]).is_err(), "one of -a/-t/--bin is required");
        assert!(parse(&["-a", "-t", "x"]).is_err());
        assert!(parse(&["-a", "--bin", "/x"]).is_err());
        assert!(
            parse(&["-a", "--bin-arg", "x"]).is_err(),
            "--bin-arg needs --bin"
        );
        assert!(parse(&["-t", "a", "--bin-arg", "x"]).is_err());
        assert!(parse(&["--bin-arg", "x"]).is_err());
        assert!(parse(&["-a", "-j", "0"]).is_err());
    }
}
