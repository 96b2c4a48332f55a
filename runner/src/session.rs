//! The `list` and `run` commands.

use std::sync::{mpsc, Mutex};
use std::time::Instant;

use nix::unistd::geteuid;

use crate::cli::{ListArgs, RunArgs};
use crate::driver::{Crust, EngineKind};
use crate::error::{SetupError, EXIT_FAILED, EXIT_SETUP};
use crate::events::{self, Event, Reporter, Reporters};
use crate::flavors::{apply_overrides, Effective, FlavorSet, Lazy};
use crate::host::Host;
use crate::locate;
use crate::manifest::{Manifest, TestEntry};
use crate::netns::Link;
use crate::procs;
use crate::report::Summary;
use crate::reporters::{JsonLines, Junit, Terminal};
use crate::run::{parse_cpu_flags, run_one, PathArg, RunContext, TestSpec};
use crate::select;
use std::path::Path;

/// `zdtm list`: the selected tests, one name a line; `-v`: with their
/// metadata, then the flavors; `--flavors`: the flavor names.
pub fn list(args: &ListArgs) -> Result<u8, SetupError> {
    let flavors = FlavorSet::load(&locate::flavors_dir(args.dirs.flavors_dir.as_deref()))?;
    if args.flavor_names {
        for f in &flavors.flavors {
            println!("{}", f.name);
        }
        return Ok(0);
    }
    let manifest = Manifest::load(&locate::tests_dir(args.dirs.tests_dir.as_deref()))?;
    let tests = select::select(&manifest, &args.tests, &args.exclude, args.shard)?;
    if args.verbose {
        print!("{}", render_list(&manifest.path, &tests, &flavors));
    } else {
        for t in tests {
            println!("{}", t.name);
        }
    }
    Ok(0)
}

/// The text of `zdtm list -v`.
pub fn render_list(path: &Path, tests: &[&TestEntry], flavors: &FlavorSet) -> String {
    let mut out = format!("Tests ({}):\n", path.display());
    let width = tests.iter().map(|t| t.name.len()).max().unwrap_or(0);
    for t in tests {
        let mut notes = Vec::new();
        if !t.needs.is_empty() {
            notes.push(format!("needs {}", t.needs.join(",")));
        }
        if !t.needs_kernel.is_empty() {
            let features: Vec<&str> = t.needs_kernel.iter().map(|f| f.as_str()).collect();
            notes.push(format!("needs kernel {}", features.join(",")));
        }
        if !t.needs_caps.is_empty() {
            notes.push(format!("needs {}", t.needs_caps.join(",")));
        }
        if let Some(user) = &t.user {
            notes.push(format!("as user {user}"));
        }
        if !t.exclude_flavors.is_empty() {
            notes.push(format!("not under {}", t.exclude_flavors.join(",")));
        }
        if !t.skip_checks.is_empty() {
            notes.push(format!("skips {}", t.skip_checks.join(",")));
        }
        if t.continuous {
            notes.push("steps, continuous".to_string());
        } else if t.steps {
            notes.push("steps".to_string());
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!(" [{}]", notes.join("; "))
        };
        out.push_str(&format!("  {:width$}  {}{notes}\n", t.name, t.description));
    }
    out.push_str(&format!("Flavors ({}):\n", flavors.dir.display()));
    let width = flavors
        .flavors
        .iter()
        .map(|f| f.name.len())
        .max()
        .unwrap_or(0);
    for f in &flavors.flavors {
        let settings = f.settings().map_or(String::new(), |s| format!(" [{s}]"));
        out.push_str(&format!(
            "  {:width$}  {}{settings}\n",
            f.name, f.description
        ));
    }
    out
}

/// Dedups names, keeping the first occurrence.
fn dedup(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    out
}

/// The tests selected by `-a`, `-t` or `--bin`.
fn select_tests(args: &RunArgs) -> Result<Vec<TestSpec>, SetupError> {
    if let Some(bin) = &args.bin {
        let bin_error = |reason: String| SetupError::Bin {
            path: bin.clone(),
            reason,
        };
        locate::check_executable(bin).map_err(bin_error)?;
        // The test runs in its work dir: resolve a relative path here.
        let bin = &bin
            .canonicalize()
            .map_err(|e| bin_error(format!("cannot resolve: {e}")))?;
        let bin_args = [args.bin_args.as_slice(), args.bin_trailing.as_slice()].concat();
        let mut spec = TestSpec::from_bin(bin, &bin_args)
            .ok_or_else(|| bin_error("has no usable file name".to_string()))?;
        spec.path_arg = if args.bin_filename {
            Some(PathArg::Filename)
        } else if args.bin_dirname {
            Some(PathArg::Dirname)
        } else {
            None
        };
        if !crate::manifest::valid_name(&spec.name) {
            return Err(bin_error(format!(
                "its file name {:?} cannot name a work dir (use letters, digits, '_', '-', '.')",
                spec.name
            )));
        }
        return Ok(vec![spec]);
    }
    let manifest = Manifest::load(&locate::tests_dir(args.dirs.tests_dir.as_deref()))?;
    let bin_dir = locate::exe_dir()?;
    if args.all && manifest.tests.is_empty() {
        return Err(SetupError::NoTests {
            manifest: manifest.path,
        });
    }
    let patterns = if args.all {
        Vec::new()
    } else {
        dedup(&args.tests)
    };
    let tests = select::select(&manifest, &patterns, &args.exclude, args.shard)?;
    if tests.is_empty() {
        eprintln!("zdtm: note: the selection (after -x and --shard) holds no test");
    }
    Ok(tests
        .into_iter()
        .map(|t| TestSpec::from_entry(t, &bin_dir))
        .collect())
}

/// The reporters of `zdtm run`: the terminal, and the `--junit` and
/// `--json` files (created now: one that cannot be is a setup error).
fn open_reporters(args: &RunArgs) -> Result<Reporters, SetupError> {
    let mut reporters: Vec<Box<dyn Reporter>> = vec![Box::new(Terminal::stdio())];
    if let Some(path) = &args.junit {
        reporters.push(Box::new(
            Junit::create(path).map_err(|e| SetupError::Usage(format!("--junit: {e}")))?,
        ));
    }
    if let Some(path) = &args.json {
        reporters.push(Box::new(
            JsonLines::create(path).map_err(|e| SetupError::Usage(format!("--json: {e}")))?,
        ));
    }
    Ok(Reporters(reporters))
}

/// `zdtm run`. Returns the exit status: 0, 1 if a run failed, 2 if a
/// report file could not be written.
pub fn run(args: &RunArgs) -> Result<u8, SetupError> {
    let session_start = Instant::now();
    let euid = geteuid();
    if !euid.is_root() {
        return Err(SetupError::NotRoot {
            euid: euid.as_raw(),
        });
    }
    let flavor_set = FlavorSet::load(&locate::flavors_dir(args.dirs.flavors_dir.as_deref()))?;
    let plan = apply_overrides(
        &flavor_set.select(&dedup(&args.flavors))?,
        &args.overrides(),
    )?;
    for (dropped, kept) in &plan.duplicates {
        eprintln!("zdtm: note: flavor ({dropped}) runs like ({kept}): running it once");
    }
    let flavors = plan.flavors;
    if let Some(secs) = args.cut_link {
        if !flavors.iter().any(|f| f.lazy == Some(Lazy::Remote)) {
            return Err(SetupError::Usage(format!(
                "--cut-link {secs}: none of the selected flavors is remote lazy; select one (-f \
                 remote-lazy) or add --remote-lazy-pages"
            )));
        }
    }
    let tests = select_tests(args)?;
    let crust_path = locate::crust_path(args.crust.as_deref())?;
    locate::check_executable(&crust_path).map_err(|reason| SetupError::Crust {
        path: crust_path.clone(),
        reason,
    })?;
    // crust runs in the work dir: a relative path must not be resolved there.
    let crust_path = crust_path.canonicalize().map_err(|e| SetupError::Crust {
        path: crust_path.clone(),
        reason: format!("cannot resolve: {e}"),
    })?;
    let log_dir_existed = args.log_dir.exists();
    std::fs::create_dir_all(&args.log_dir)
        .map_err(|e| SetupError::io("cannot create log dir", &args.log_dir, e))?;
    let log_dir = args
        .log_dir
        .canonicalize()
        .map_err(|e| SetupError::io("cannot resolve log dir", &args.log_dir, e))?;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo")
        .map_err(|e| SetupError::io("cannot read", "/proc/cpuinfo", e))?;
    let mut reporters = open_reporters(args)?;

    procs::set_subreaper().map_err(|source| SetupError::System {
        what: "prctl(PR_SET_CHILD_SUBREAPER)",
        source,
    })?;
    procs::install_interrupt_handler().map_err(|source| SetupError::System {
        what: "installing the signal handler",
        source,
    })?;

    let remote = flavors.iter().any(|f| f.lazy == Some(Lazy::Remote));
    let link = if remote {
        let link =
            Link::create(std::process::id()).map_err(|message| SetupError::Network { message })?;
        Some(std::sync::Arc::new(link))
    } else {
        None
    };
    let kind = match args.engine_kind {
        Some(kind) => kind,
        None => EngineKind::probe(&crust_path).ok_or_else(|| SetupError::Crust {
            path: crust_path.clone(),
            reason: "is neither crust nor CRIU by its --version output or file name: say which \
                     with --engine-kind crust|criu"
                .to_string(),
        })?,
    };
    let mut crust = Crust {
        path: crust_path,
        kind,
        no_pre_dump: None,
    };
    if flavors.iter().any(|f| f.pre_dumps > 0) {
        crust.no_pre_dump = crust.probe_pre_dump();
    }
    let ctx = RunContext {
        dump_pidfile: remote && crust.dump_takes_pidfile(),
        crust,
        log_dir: log_dir.clone(),
        keep_img: args.keep_img,
        cpu_flags: parse_cpu_flags(&cpuinfo),
        host: Host::probe(),
        link,
        cut_link: args
            .cut_link
            .map(|s| std::time::Duration::from_secs(u64::from(s))),
    };
    let jobs: Vec<(&TestSpec, &Effective)> = tests
        .iter()
        .flat_map(|t| flavors.iter().map(move |f| (t, f)))
        .collect();
    let parallel = usize::from(args.jobs).clamp(1, jobs.len().max(1));
    let program = events::program_name(std::env::args_os().next());
    let replay = |test: &TestSpec, flavor: &Effective| match &args.replay_switches {
        Some(switches) => events::replay_command(
            &program,
            args.bin.is_none().then_some(test.name.as_str()),
            &flavor.name,
            switches,
        ),
        None => String::new(),
    };
    reporters.event(&Event::SuiteStarted {
        total: jobs.len(),
        jobs: parallel,
    });
    let summary = execute(&ctx, &jobs, parallel, &replay, &mut reporters);

    let swept = procs::sweep_children();
    if !swept.is_empty() {
        let pids: Vec<String> = swept.iter().map(|p| p.to_string()).collect();
        eprintln!(
            "zdtm: warning: killed {} leftover process(es) at exit: {}",
            swept.len(),
            pids.join(" ")
        );
    }
    // Tears down the session's network namespace and veth pair, if any.
    drop(ctx);
    // Leave no empty log dir behind (only removed if empty).
    if !log_dir_existed {
        let _ = std::fs::remove_dir(&log_dir);
    }

    reporters.event(&Event::SuiteFinished {
        summary,
        elapsed: session_start.elapsed(),
    });
    let errors = reporters.finish();
    for e in &errors {
        eprintln!("zdtm: error: {e}");
    }
    Ok(if !errors.is_empty() {
        EXIT_SETUP
    } else if summary.failed > 0 {
        EXIT_FAILED
    } else {
        0
    })
}

/// Runs `jobs` on `parallel` threads. The workers emit a
/// [`Event::RunStarted`] and a [`Event::RunFinished`] per run on a
/// channel; this thread hands them to the reporters as they come and
/// counts the outcomes.
fn execute(
    ctx: &RunContext,
    jobs: &[(&TestSpec, &Effective)],
    parallel: usize,
    replay: &(dyn Fn(&TestSpec, &Effective) -> String + Sync),
    reporters: &mut Reporters,
) -> Summary {
    // Taking the next job and announcing it happen under one lock, so
    // that the `RunStarted` events come in job order.
    let next = &Mutex::new(0usize);
    let (tx, rx) = mpsc::channel::<Event>();
    let mut summary = Summary::default();
    std::thread::scope(|scope| {
        for _ in 0..parallel.max(1) {
            let tx = tx.clone();
            scope.spawn(move || loop {
                let (test, flavor) = {
                    let mut next = next.lock().unwrap_or_else(|p| p.into_inner());
                    let Some(&(test, flavor)) = jobs.get(*next) else {
                        break;
                    };
                    *next += 1;
                    let _ = tx.send(Event::RunStarted {
                        test: test.name.clone(),
                        flavor: flavor.label(),
                    });
                    (test, flavor)
                };
                let mut outcome = run_one(ctx, test, flavor);
                outcome.replay = replay(test, flavor);
                let _ = tx.send(Event::RunFinished { outcome });
            });
        }
        drop(tx);
        for event in rx {
            if let Event::RunFinished { outcome } = &event {
                summary.add(outcome);
            }
            reporters.event(&event);
        }
    });
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flavors::Flavor;
    use crate::manifest::Manifest;

    #[test]
    fn list_rendering() {
        let manifest = Manifest::parse_files(
            Path::new("/t/meta"),
            &[
                ("env00.toml", "description = \"environment\"\n"),
                (
                    "avx.toml",
                    "description = \"avx regs\"\nneeds = [\"avx\"]\n",
                ),
                ("step.toml", "description = \"stepper\"\nsteps = true\n"),
                (
                    "unpriv.toml",
                    "description = \"u\"\nuser = \"nobody\"\nneeds_kernel = [\"soft-dirty\"]\n\
                     needs_caps = [\"CAP_SYS_RESOURCE\"]\n",
                ),
            ],
        )
        .expect("valid");
        let flavors = FlavorSet {
            dir: "/f".into(),
            flavors: vec![
                Flavor {
                    name: "dump".into(),
                    description: "Full dump".into(),
                    ..Default::default()
                },
                Flavor {
                    name: "pre".into(),
                    description: "Pre-dumps".into(),
                    pre_dumps: 2,
                    tracker: Some(crate::flavors::Tracker::Content),
                    ..Default::default()
                },
            ],
        };
        let tests: Vec<&TestEntry> = manifest.tests.iter().collect();
        assert_eq!(
            render_list(&manifest.path, &tests, &flavors),
            "Tests (/t/meta):\n  avx     avx regs [needs avx]\n  env00   environment\n\
             \x20 step    stepper [steps]\n\
             \x20 unpriv  u [needs kernel soft-dirty; needs CAP_SYS_RESOURCE; as user nobody]\n\
             Flavors (/f):\n  dump  Full dump\n  pre   Pre-dumps [pre 2 splice, tracker content]\n"
        );
    }

    #[test]
    fn dedup_keeps_order() {
        let names: Vec<String> = ["b", "a", "b"].iter().map(|s| s.to_string()).collect();
        assert_eq!(dedup(&names), ["b", "a"]);
    }
}
