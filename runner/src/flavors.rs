//! Flavors: how a test is checkpointed and restored. One TOML file per
//! flavor in the flavors directory, e.g. `flavors/dump.toml`:
//!
//! ```toml
//! name = "dump"
//! description = "Full dump (task killed), restore, compare"
//! pre_dumps = 0               # optional: pre-dumps before the final dump
//! pre_dump_mode = "splice"    # optional: "splice" (default) or "read"
//! lazy = "local"              # optional: post-copy restore, "local" or "remote"
//! tracker = "uffd-wp"         # optional (with pre_dumps): dirty tracker
//! snaps = true                # optional (with pre_dumps): snapshots, not pre-dumps
//! page_server = true          # optional: pages sent to a crust page-server
//! iters = 2                   # optional: checkpoint/restore N times in a row
//! ```
//!
//! Unknown keys are rejected on purpose: a flavor file written for a newer
//! runner (say with a key this one does not know) must not silently run as a plain dump
//! and report a PASS for something that was never exercised; a typo must
//! not either. Adding a key therefore means teaching the runner about it.
//!
//! The command line may override the settings of every selected flavor
//! (`--pre N`, `--pre-dump-mode MODE`, `--tracker NAME`, `--snaps`,
//! `--lazy-pages`, `--remote-lazy-pages`, `--page-server`, `--iters N`):
//! [`Overrides`] turns the selected flavors into the [`Effective`] ones
//! that run. The pre-dump settings (mode, tracker, snaps) apply to the
//! flavors that pre-dump and leave the others alone.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::SetupError;
use crate::manifest::valid_name;

/// One flavor file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flavor {
    /// Flavor name; must equal the file stem (`dump` for `dump.toml`).
    pub name: String,
    /// One line saying what the flavor does.
    pub description: String,
    /// Pre-dumps (`crust pre-dump`, the task keeps running) before the
    /// final dump; 0 for a plain dump.
    #[serde(default)]
    pub pre_dumps: u32,
    /// How the pre-dumps copy memory; only meaningful with `pre_dumps > 0`
    /// (the file may only give it then).
    #[serde(default)]
    pub pre_dump_mode: Option<PreDumpMode>,
    /// Post-copy: the task is restored lazily (`crust restore
    /// --lazy-pages` served by `crust lazy-pages`), its pages coming from
    /// the images (`local`) or from the dump itself over a veth pair
    /// (`remote`); `None` for an eager restore.
    #[serde(default)]
    pub lazy: Option<Lazy>,
    /// The dirty tracker of the pre-dumps and of the dump on top of them
    /// (`--tracker`); only with `pre_dumps > 0`. `None`: the engine's
    /// choice.
    #[serde(default)]
    pub tracker: Option<Tracker>,
    /// The pre-dumps are full snapshots (`crust dump --leave-running
    /// --track-mem`, chained), as CRIU's `--snaps`; only with `pre_dumps >
    /// 0`.
    #[serde(default)]
    pub snaps: bool,
    /// Pre-dumps and dump send their pages to a `crust page-server`
    /// started by the runner; the restore reads what it received.
    #[serde(default)]
    pub page_server: bool,
    /// Checkpoint/restore the test this many times in a row (default 1).
    #[serde(default)]
    pub iters: Option<u32>,
}

/// The dirty tracker of `crust pre-dump/dump --tracker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Tracker {
    /// The parent's, else the first that works.
    Auto,
    /// userfaultfd write-protect (WP_ASYNC) read with PAGEMAP_SCAN.
    UffdWp,
    /// pagemap bit 55 and clear_refs.
    SoftDirty,
    /// Page content digests (any kernel).
    Content,
}

impl Tracker {
    /// The value of `--tracker`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tracker::Auto => "auto",
            Tracker::UffdWp => "uffd-wp",
            Tracker::SoftDirty => "soft-dirty",
            Tracker::Content => "content",
        }
    }

    /// The kernel features it needs.
    pub fn needs(self) -> &'static [crate::host::KernelFeature] {
        use crate::host::KernelFeature::{PagemapScan, SoftDirty, UffdWpAsync};
        match self {
            Tracker::UffdWp => &[UffdWpAsync, PagemapScan],
            Tracker::SoftDirty => &[SoftDirty],
            Tracker::Auto | Tracker::Content => &[],
        }
    }
}

impl fmt::Display for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a lazy restore's pages come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lazy {
    /// `crust lazy-pages -D img`: from the image files.
    Local,
    /// `crust dump --lazy-pages --address A --port P` keeps the pages and
    /// serves them to `crust lazy-pages --page-server`, run in a network
    /// namespace of its own joined by a veth pair.
    Remote,
}

impl Lazy {
    /// The value of the flavor key.
    pub fn as_str(self) -> &'static str {
        match self {
            Lazy::Local => "local",
            Lazy::Remote => "remote",
        }
    }

    /// How labels name it (after the switches: `lazy`, `remote-lazy`).
    pub fn label(self) -> &'static str {
        match self {
            Lazy::Local => "lazy",
            Lazy::Remote => "remote-lazy",
        }
    }
}

impl fmt::Display for Lazy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How `crust pre-dump` copies the task's memory (`--pre-dump-mode`), as
/// in CRIU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PreDumpMode {
    /// vmsplice the pages into pipes (CRIU's default).
    #[default]
    Splice,
    /// read them with process_vm_readv.
    Read,
}

impl PreDumpMode {
    /// The value of crust's `--pre-dump-mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            PreDumpMode::Splice => "splice",
            PreDumpMode::Read => "read",
        }
    }
}

impl fmt::Display for PreDumpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Flavor {
    /// Parses a flavor file; `path` names the file in errors and gives the
    /// expected name (its stem).
    pub fn parse(text: &str, path: &Path) -> Result<Flavor, SetupError> {
        let bad = |message: String| SetupError::BadFile {
            path: path.to_path_buf(),
            message,
        };
        let flavor: Flavor = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        if !valid_name(&flavor.name) {
            return Err(bad(format!(
                "invalid flavor name {:?}: use letters, digits, '_', '-', '.'",
                flavor.name
            )));
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if flavor.name != stem {
            return Err(bad(format!(
                "flavor name {:?} does not match the file name (expected {stem:?})",
                flavor.name
            )));
        }
        if flavor.description.trim().is_empty() {
            return Err(bad("empty description".to_string()));
        }
        if flavor.pre_dumps > MAX_PRE_DUMPS {
            return Err(bad(format!(
                "pre_dumps = {}: at most {MAX_PRE_DUMPS}",
                flavor.pre_dumps
            )));
        }
        if flavor.name == ALL {
            return Err(bad(format!(
                "a flavor cannot be named {ALL:?}: `-f {ALL}` selects every flavor"
            )));
        }
        if flavor.pre_dumps == 0 {
            if let Some(mode) = flavor.pre_dump_mode {
                return Err(bad(format!(
                    "pre_dump_mode = \"{mode}\" without pre_dumps: it would not be exercised"
                )));
            }
            if let Some(tracker) = flavor.tracker {
                return Err(bad(format!(
                    "tracker = \"{tracker}\" without pre_dumps: it would not be exercised"
                )));
            }
            if flavor.snaps {
                return Err(bad(
                    "snaps = true without pre_dumps: it would not be exercised".to_string(),
                ));
            }
        }
        if let Some(iters) = flavor.iters {
            if iters == 0 || iters > MAX_ITERS {
                return Err(bad(format!("iters = {iters}: from 1 to {MAX_ITERS}")));
            }
        }
        if flavor.page_server && flavor.lazy == Some(Lazy::Remote) {
            return Err(bad(
                "page_server with lazy = \"remote\": a remote lazy dump serves its pages itself"
                    .to_string(),
            ));
        }
        Ok(flavor)
    }

    /// The pre-dump mode (the default when the file gives none).
    pub fn mode(&self) -> PreDumpMode {
        self.pre_dump_mode.unwrap_or_default()
    }

    /// What `zdtm list` says about the settings, if anything.
    pub fn settings(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.pre_dumps > 0 {
            parts.push(format!("pre {} {}", self.pre_dumps, self.mode()));
        }
        if self.snaps {
            parts.push("snaps".to_string());
        }
        if let Some(tracker) = self.tracker {
            parts.push(format!("tracker {tracker}"));
        }
        if let Some(lazy) = self.lazy {
            parts.push(format!("lazy {lazy}"));
        }
        if self.page_server {
            parts.push("page-server".to_string());
        }
        if let Some(iters) = self.iters.filter(|&n| n > 1) {
            parts.push(format!("iters {iters}"));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    /// This flavor with the command line's overrides applied.
    pub fn effective(&self, overrides: &Overrides) -> Effective {
        let pre_dumps = overrides.pre_dumps.unwrap_or(self.pre_dumps);
        // The mode only matters with pre-dumps: a flavor without any is
        // left alone by --pre-dump-mode.
        let mode = match overrides.pre_dump_mode {
            Some(mode) if pre_dumps > 0 => mode,
            _ => self.mode(),
        };
        let pre_overridden = pre_dumps != self.pre_dumps || (pre_dumps > 0 && mode != self.mode());
        let lazy = overrides.lazy.or(self.lazy);
        // Tracker and snaps, like the mode, only with pre-dumps.
        let (tracker, snaps) = if pre_dumps > 0 {
            (
                overrides.tracker.or(self.tracker),
                overrides.snaps || self.snaps,
            )
        } else {
            (None, false)
        };
        // A remote lazy dump serves its pages itself: no page server.
        let page_server = (overrides.page_server || self.page_server) && lazy != Some(Lazy::Remote);
        let iters = overrides.iters.or(self.iters).unwrap_or(1);
        let own_tracker = if self.pre_dumps > 0 {
            self.tracker
        } else {
            None
        };
        let own_snaps = self.pre_dumps > 0 && self.snaps;
        let own_page_server = self.page_server && lazy != Some(Lazy::Remote);
        let extra_overridden = tracker != own_tracker
            || snaps != own_snaps
            || page_server != own_page_server
            || iters != self.iters.unwrap_or(1);
        Effective {
            name: self.name.clone(),
            pre_dumps,
            pre_dump_mode: mode,
            lazy,
            tracker,
            snaps,
            page_server,
            iters,
            pre_overridden,
            lazy_overridden: lazy != self.lazy,
            tracker_overridden: tracker != own_tracker,
            snaps_overridden: snaps != own_snaps,
            page_server_overridden: page_server != own_page_server,
            iters_overridden: iters != self.iters.unwrap_or(1),
            overridden: pre_overridden || lazy != self.lazy || extra_overridden,
        }
    }
}

/// The most pre-dumps a flavor or `--pre` may ask for.
pub const MAX_PRE_DUMPS: u32 = 64;
/// The most iterations a flavor or `--iters` may ask for.
pub const MAX_ITERS: u32 = 100;
/// `-f all`: every flavor.
pub const ALL: &str = "all";

/// The command line's overrides of the flavors' settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--pre N`: pre-dumps of every selected flavor.
    pub pre_dumps: Option<u32>,
    /// `--pre-dump-mode MODE`: mode of every selected flavor that
    /// pre-dumps (after `--pre`).
    pub pre_dump_mode: Option<PreDumpMode>,
    /// `--lazy-pages` (local) or `--remote-lazy-pages` (remote): every
    /// selected flavor restores lazily, that way.
    pub lazy: Option<Lazy>,
    /// `--tracker NAME`: of every selected flavor that pre-dumps.
    pub tracker: Option<Tracker>,
    /// `--page-server`: every selected flavor (but remote lazy ones).
    pub page_server: bool,
    /// `--iters N`: every selected flavor.
    pub iters: Option<u32>,
    /// `--snaps`: every selected flavor that pre-dumps.
    pub snaps: bool,
}

/// A flavor as it runs: its file's settings, overridden by the command
/// line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// The flavor's name (work dir, `exclude_flavors`).
    pub name: String,
    /// Pre-dumps before the final dump.
    pub pre_dumps: u32,
    /// Their mode (meaningless without pre-dumps).
    pub pre_dump_mode: PreDumpMode,
    /// Lazy restore, and where its pages come from.
    pub lazy: Option<Lazy>,
    /// The dirty tracker asked of crust (with pre-dumps only).
    pub tracker: Option<Tracker>,
    /// The pre-dumps are snapshots (`dump --leave-running`).
    pub snaps: bool,
    /// Pages go to a `crust page-server`.
    pub page_server: bool,
    /// Checkpoint/restore cycles (at least 1).
    pub iters: u32,
    /// Whether the command line changed the pre-dumps or their mode.
    pub pre_overridden: bool,
    /// Whether the command line changed `lazy`.
    pub lazy_overridden: bool,
    /// Whether the command line changed the tracker.
    pub tracker_overridden: bool,
    /// Whether the command line changed snaps.
    pub snaps_overridden: bool,
    /// Whether the command line changed page_server.
    pub page_server_overridden: bool,
    /// Whether the command line changed iters.
    pub iters_overridden: bool,
    /// Whether the command line changed what the flavor file says.
    pub overridden: bool,
}

impl Effective {
    /// A flavor file run as it is.
    pub fn plain(flavor: &Flavor) -> Effective {
        flavor.effective(&Overrides::default())
    }

    /// How result lines name it: the flavor's name, followed by what runs
    /// when the command line changed it (`dump, pre 2 read`, `dump, lazy`,
    /// `predump-read, pre 0, remote-lazy`).
    pub fn label(&self) -> String {
        let mut label = self.name.clone();
        if self.pre_overridden {
            if self.pre_dumps == 0 {
                label.push_str(", pre 0");
            } else {
                label.push_str(&format!(", pre {} {}", self.pre_dumps, self.pre_dump_mode));
            }
        }
        if self.snaps_overridden && self.snaps {
            label.push_str(", snaps");
        }
        if self.tracker_overridden {
            if let Some(tracker) = self.tracker {
                label.push_str(&format!(", tracker {tracker}"));
            }
        }
        if self.lazy_overridden {
            // The switches only ever turn lazy on.
            if let Some(lazy) = self.lazy {
                label.push_str(&format!(", {}", lazy.label()));
            }
        }
        if self.page_server_overridden && self.page_server {
            label.push_str(", page-server");
        }
        if self.iters_overridden {
            label.push_str(&format!(", iters {}", self.iters));
        }
        label
    }

    /// The `zdtm run` switches that, after `-f NAME`, make the flavor run
    /// this way (for a replay command line); empty when not overridden.
    pub fn switches(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.pre_overridden {
            out.extend(["--pre".to_string(), self.pre_dumps.to_string()]);
            if self.pre_dumps > 0 {
                out.extend([
                    "--pre-dump-mode".to_string(),
                    self.pre_dump_mode.to_string(),
                ]);
            }
        }
        if self.snaps_overridden && self.snaps {
            out.push("--snaps".to_string());
        }
        if self.tracker_overridden {
            if let Some(tracker) = self.tracker {
                out.extend(["--tracker".to_string(), tracker.to_string()]);
            }
        }
        if self.lazy_overridden {
            match self.lazy {
                Some(Lazy::Local) => out.push("--lazy-pages".to_string()),
                Some(Lazy::Remote) => out.push("--remote-lazy-pages".to_string()),
                None => {}
            }
        }
        if self.page_server_overridden && self.page_server {
            out.push("--page-server".to_string());
        }
        if self.iters_overridden {
            out.extend(["--iters".to_string(), self.iters.to_string()]);
        }
        out
    }

    /// Whether `self` and `other` run the same way (names aside).
    pub fn same_run(&self, other: &Effective) -> bool {
        self.pre_dumps == other.pre_dumps
            && (self.pre_dumps == 0 || self.pre_dump_mode == other.pre_dump_mode)
            && self.lazy == other.lazy
            && self.tracker == other.tracker
            && self.snaps == other.snaps
            && self.page_server == other.page_server
            && self.iters == other.iters
    }
}

/// What [`apply_overrides`] made of the selected flavors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The flavors to run, in selection order.
    pub flavors: Vec<Effective>,
    /// Flavors dropped because the overrides made them run exactly like
    /// an earlier one: (dropped, kept) labels.
    pub duplicates: Vec<(String, String)>,
}

/// Applies `overrides` to the selected flavors. Without overrides every
/// selected flavor runs as its file says. With overrides, flavors that end
/// up running the same way are run once: a flavor the overrides left
/// unchanged is preferred (`predump-read` rather than `predump, pre 2
/// read`), else the first one. A `--pre-dump-mode` that no flavor would
/// use (none pre-dumps, and no `--pre N` with N > 0) is an error: it would
/// report PASSes for a mode that was never exercised.
pub fn apply_overrides(selected: &[Flavor], overrides: &Overrides) -> Result<Plan, SetupError> {
    let effective: Vec<Effective> = selected.iter().map(|f| f.effective(overrides)).collect();
    let pre_dump_switches = [
        overrides
            .pre_dump_mode
            .map(|m| format!("--pre-dump-mode {m}")),
        overrides.tracker.map(|t| format!("--tracker {t}")),
        overrides.snaps.then(|| "--snaps".to_string()),
    ];
    for switch in pre_dump_switches.into_iter().flatten() {
        if !effective.iter().any(|e| e.pre_dumps > 0) {
            return Err(SetupError::Usage(format!(
                "{switch}: none of the selected flavors ({}) pre-dumps; add --pre N \
                 or select a flavor with pre_dumps",
                selected
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    if overrides.page_server && !effective.iter().any(|e| e.page_server) {
        return Err(SetupError::Usage(
            "--page-server: every selected flavor is remote lazy (its dump serves the pages \
             itself)"
                .to_string(),
        ));
    }
    if *overrides == Overrides::default() {
        return Ok(Plan {
            flavors: effective,
            duplicates: Vec::new(),
        });
    }
    // Groups of flavors that run the same way, by first appearance.
    let mut groups: Vec<Vec<&Effective>> = Vec::new();
    for e in &effective {
        match groups.iter_mut().find(|g| g[0].same_run(e)) {
            Some(group) => group.push(e),
            None => groups.push(vec![e]),
        }
    }
    let mut kept = Vec::new();
    let mut duplicates = Vec::new();
    for group in &groups {
        let keeper = group.iter().find(|e| !e.overridden).unwrap_or(&group[0]);
        for e in group {
            if !std::ptr::eq(*e, *keeper) {
                duplicates.push((e.label(), keeper.label()));
            }
        }
        kept.push(*keeper);
    }
    // Run them in selection order.
    let flavors = effective
        .iter()
        .filter(|e| kept.iter().any(|k| std::ptr::eq(*k, *e)))
        .cloned()
        .collect();
    Ok(Plan {
        flavors,
        duplicates,
    })
}

/// All flavors of a directory, sorted by name.
#[derive(Debug, Clone)]
pub struct FlavorSet {
    /// The directory they came from (for messages).
    pub dir: PathBuf,
    /// The flavors, sorted by name.
    pub flavors: Vec<Flavor>,
}

impl FlavorSet {
    /// Reads every `*.toml` of `dir`; fails on any bad file or when there
    /// is none.
    pub fn load(dir: &Path) -> Result<FlavorSet, SetupError> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| SetupError::io("cannot read flavors dir", dir, e))?;
        let mut flavors = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| SetupError::io("cannot read flavors dir", dir, e))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| SetupError::io("cannot read flavor", &path, e))?;
            flavors.push(Flavor::parse(&text, &path)?);
        }
        if flavors.is_empty() {
            return Err(SetupError::NoFlavors {
                dir: dir.to_path_buf(),
            });
        }
        flavors.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(FlavorSet {
            dir: dir.to_path_buf(),
            flavors,
        })
    }

    /// The flavor named `name`.
    pub fn get(&self, name: &str) -> Option<&Flavor> {
        self.flavors.iter().find(|f| f.name == name)
    }

    /// The flavors named by `-f` (deduplicated, in the given order), or all
    /// of them when `names` is empty or holds `all`.
    pub fn select(&self, names: &[String]) -> Result<Vec<Flavor>, SetupError> {
        if names.is_empty() || names.iter().any(|n| n == ALL) {
            return Ok(self.flavors.clone());
        }
        let mut out: Vec<Flavor> = Vec::new();
        for name in names {
            let flavor = self.get(name).ok_or_else(|| SetupError::UnknownFlavor {
                name: name.clone(),
                dir: self.dir.clone(),
            })?;
            if !out.iter().any(|f| f.name == flavor.name) {
                out.push(flavor.clone());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn parses_dump() {
        let f = Flavor::parse(
            "name = \"dump\"\ndescription = \"Full dump\"\n",
            Path::new("/x/dump.toml"),
        )
        .expect("valid");
        assert_eq!(f.name, "dump");
        assert_eq!(f.description, "Full dump");
        assert_eq!((f.pre_dumps, f.mode()), (0, PreDumpMode::Splice));
        assert_eq!(f.settings(), None);
    }

    #[test]
    fn parses_pre_dumps() {
        let f = Flavor::parse(
            "name = \"pre\"\ndescription = \"d\"\npre_dumps = 2\n",
            Path::new("/x/pre.toml"),
        )
        .expect("valid");
        assert_eq!((f.pre_dumps, f.mode()), (2, PreDumpMode::Splice));
        assert_eq!(f.settings().as_deref(), Some("pre 2 splice"));
        let f = Flavor::parse(
            "name = \"pre\"\ndescription = \"d\"\npre_dumps = 1\npre_dump_mode = \"read\"\n",
            Path::new("/x/pre.toml"),
        )
        .expect("valid");
        assert_eq!((f.pre_dumps, f.mode()), (1, PreDumpMode::Read));
        let f = Flavor::parse(
            "name = \"pre\"\ndescription = \"d\"\npre_dumps = 3\npre_dump_mode = \"splice\"\n",
            Path::new("/x/pre.toml"),
        )
        .expect("valid");
        assert_eq!((f.pre_dumps, f.mode()), (3, PreDumpMode::Splice));
    }

    #[rstest]
    #[case::unknown_key(
        "name = \"dump\"\ndescription = \"d\"\nlink_cut = true\n",
        "unknown field `link_cut`"
    )]
    #[case::bad_lazy(
        "name = \"dump\"\ndescription = \"d\"\nlazy = \"yes\"\n",
        "unknown variant `yes`"
    )]
    #[case::lazy_not_a_string("name = \"dump\"\ndescription = \"d\"\nlazy = true\n", "lazy")]
    #[case::misspelt_key(
        "name = \"dump\"\ndescription = \"d\"\npre_dump = 2\n",
        "unknown field `pre_dump`"
    )]
    #[case::bad_mode(
        "name = \"dump\"\ndescription = \"d\"\npre_dumps = 1\npre_dump_mode = \"copy\"\n",
        "unknown variant `copy`"
    )]
    #[case::negative_pre_dumps(
        "name = \"dump\"\ndescription = \"d\"\npre_dumps = -1\n",
        "pre_dumps"
    )]
    #[case::too_many_pre_dumps(
        "name = \"dump\"\ndescription = \"d\"\npre_dumps = 65\n",
        "pre_dumps = 65: at most 64"
    )]
    #[case::mode_without_pre_dumps(
        "name = \"dump\"\ndescription = \"d\"\npre_dump_mode = \"read\"\n",
        "pre_dump_mode = \"read\" without pre_dumps"
    )]
    #[case::missing_description("name = \"dump\"\n", "missing field `description`")]
    #[case::name_mismatch(
        "name = \"other\"\ndescription = \"d\"\n",
        "does not match the file name"
    )]
    #[case::bad_name("name = \"a/b\"\ndescription = \"d\"\n", "invalid flavor name")]
    #[case::empty_description("name = \"dump\"\ndescription = \"\"\n", "empty description")]
    #[case::syntax("name = dump\n", "dump.toml")]
    fn rejects_bad_files(#[case] text: &str, #[case] expected: &str) {
        let err = Flavor::parse(text, Path::new("/x/dump.toml"))
            .expect_err("must be rejected")
            .to_string();
        assert!(err.contains(expected), "error {err:?} lacks {expected:?}");
        assert!(
            err.starts_with("/x/dump.toml: "),
            "error {err:?} lacks the path"
        );
    }

    #[test]
    fn parses_lazy() {
        let f = Flavor::parse(
            "name = \"lazy\"\ndescription = \"d\"\nlazy = \"local\"\n",
            Path::new("/x/lazy.toml"),
        )
        .expect("valid");
        assert_eq!((f.lazy, f.pre_dumps), (Some(Lazy::Local), 0));
        assert_eq!(f.settings().as_deref(), Some("lazy local"));
        let f = Flavor::parse(
            "name = \"pc\"\ndescription = \"d\"\npre_dumps = 2\npre_dump_mode = \"read\"\n\
             lazy = \"remote\"\n",
            Path::new("/x/pc.toml"),
        )
        .expect("valid");
        assert_eq!(f.lazy, Some(Lazy::Remote));
        assert_eq!(f.settings().as_deref(), Some("pre 2 read, lazy remote"));
        let e = Effective::plain(&f);
        assert_eq!(
            (e.lazy, e.overridden, e.label()),
            (Some(Lazy::Remote), false, "pc".into())
        );
    }

    #[test]
    fn loads_and_selects() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("dump.toml"),
            "name = \"dump\"\ndescription = \"d\"\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("alpha.toml"),
            "name = \"alpha\"\ndescription = \"a\"\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("README.md"), "not a flavor").expect("write");
        let set = FlavorSet::load(dir.path()).expect("loads");
        let names: Vec<_> = set.flavors.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["alpha", "dump"]);
        assert_eq!(set.select(&[]).expect("all").len(), 2);
        let picked = set.select(&["dump".into(), "dump".into()]).expect("known");
        assert_eq!(picked.len(), 1);
        let err = set
            .select(&["nope".into()])
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("unknown flavor \"nope\""), "{err}");
    }

    #[test]
    fn empty_dir_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = FlavorSet::load(dir.path())
            .expect_err("no flavors")
            .to_string();
        assert!(err.contains("no flavor files"), "{err}");
    }

    #[test]
    fn shipped_flavors_load() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../flavors"));
        let set = FlavorSet::load(dir).expect("shipped flavors");
        assert!(set.get("dump").is_some());
        let lazy = |name: &str| set.get(name).map(|f| (f.pre_dumps, f.mode(), f.lazy));
        assert_eq!(lazy("lazy"), Some((0, Splice, Some(Lazy::Local))));
        assert_eq!(lazy("remote-lazy"), Some((0, Splice, Some(Lazy::Remote))));
        assert_eq!(
            lazy("precopy-postcopy"),
            Some((2, Read, Some(Lazy::Remote)))
        );
    }

    fn flavor(name: &str, pre_dumps: u32, mode: Option<PreDumpMode>) -> Flavor {
        Flavor {
            name: name.into(),
            description: "d".into(),
            pre_dumps,
            pre_dump_mode: mode,
            lazy: None,
            ..Default::default()
        }
    }

    fn lazy_flavor(name: &str, pre_dumps: u32, mode: Option<PreDumpMode>, lazy: Lazy) -> Flavor {
        Flavor {
            lazy: Some(lazy),
            ..flavor(name, pre_dumps, mode)
        }
    }

    fn overrides(pre: Option<u32>, mode: Option<PreDumpMode>) -> Overrides {
        Overrides {
            pre_dumps: pre,
            pre_dump_mode: mode,
            lazy: None,
            ..Default::default()
        }
    }

    fn lazy_overrides(pre: Option<u32>, mode: Option<PreDumpMode>, lazy: Lazy) -> Overrides {
        Overrides {
            lazy: Some(lazy),
            ..overrides(pre, mode)
        }
    }

    fn labels(plan: &Plan) -> Vec<String> {
        plan.flavors.iter().map(Effective::label).collect()
    }

    use PreDumpMode::{Read, Splice};

    #[test]
    fn effective_settings_and_labels() {
        let dump = flavor("dump", 0, None);
        let pre_read = flavor("predump-read", 2, Some(Read));
        let none = Overrides::default();
        let e = dump.effective(&none);
        assert_eq!(
            (e.pre_dumps, e.overridden, e.label()),
            (0, false, "dump".into())
        );
        // --pre turns the plain dump into pre-dumps (default mode).
        let e = dump.effective(&overrides(Some(2), None));
        assert_eq!((e.pre_dumps, e.pre_dump_mode), (2, Splice));
        assert_eq!(e.label(), "dump, pre 2 splice");
        let e = dump.effective(&overrides(Some(2), Some(Read)));
        assert_eq!(e.label(), "dump, pre 2 read");
        // --pre-dump-mode alone leaves a flavor without pre-dumps alone.
        let e = dump.effective(&overrides(None, Some(Read)));
        assert_eq!((e.pre_dumps, e.overridden), (0, false));
        assert_eq!(e.label(), "dump");
        // ... and changes the others.
        let e = pre_read.effective(&overrides(None, Some(Splice)));
        assert_eq!(e.label(), "predump-read, pre 2 splice");
        // Overrides that change nothing do not show.
        let e = pre_read.effective(&overrides(Some(2), Some(Read)));
        assert_eq!((e.overridden, e.label()), (false, "predump-read".into()));
        // --pre replaces the count and keeps the flavor's mode.
        let e = pre_read.effective(&overrides(Some(3), None));
        assert_eq!(e.label(), "predump-read, pre 3 read");
        let e = pre_read.effective(&overrides(Some(0), None));
        assert_eq!((e.pre_dumps, e.label()), (0, "predump-read, pre 0".into()));
        assert_eq!(Effective::plain(&pre_read), pre_read.effective(&none));
    }

    #[test]
    fn overrides_compose_with_the_selection() {
        let set = [
            flavor("dump", 0, None),
            flavor("predump", 2, None),
            flavor("predump-read", 2, Some(Read)),
        ];
        // No override: every selected flavor, as its file says.
        let plan = apply_overrides(&set, &Overrides::default()).expect("ok");
        assert_eq!(labels(&plan), ["dump", "predump", "predump-read"]);
        assert!(plan.duplicates.is_empty());

        // -a --pre-dump-mode read: flavors that pre-dump use read; the
        // plain dump is unaffected; predump now runs like predump-read,
        // which is kept as it is the flavor file that says so.
        let plan = apply_overrides(&set, &overrides(None, Some(Read))).expect("ok");
        assert_eq!(labels(&plan), ["dump", "predump-read"]);
        assert_eq!(
            plan.duplicates,
            [(
                "predump, pre 2 read".to_string(),
                "predump-read".to_string()
            )]
        );

        // -f dump --pre 2 --pre-dump-mode read.
        let plan = apply_overrides(&set[..1], &overrides(Some(2), Some(Read))).expect("ok");
        assert_eq!(labels(&plan), ["dump, pre 2 read"]);

        // -a --pre 3: everything pre-dumps 3 times; dump and predump
        // both become "3 pre-dumps, splice": the first one is kept.
        let plan = apply_overrides(&set, &overrides(Some(3), None)).expect("ok");
        assert_eq!(
            labels(&plan),
            ["dump, pre 3 splice", "predump-read, pre 3 read"]
        );
        assert_eq!(
            plan.duplicates,
            [(
                "predump, pre 3 splice".to_string(),
                "dump, pre 3 splice".to_string()
            )]
        );

        // --pre 0: no pre-dumps anywhere; the plain dump is kept.
        let plan = apply_overrides(&set, &overrides(Some(0), None)).expect("ok");
        assert_eq!(labels(&plan), ["dump"]);
        assert_eq!(plan.duplicates.len(), 2);
    }

    #[test]
    fn lazy_switches() {
        use Lazy::{Local, Remote};
        let set = [
            flavor("dump", 0, None),
            flavor("predump-read", 2, Some(Read)),
            lazy_flavor("lazy", 0, None, Local),
            lazy_flavor("remote-lazy", 0, None, Remote),
            lazy_flavor("precopy-postcopy", 2, Some(Read), Remote),
        ];
        // -a --lazy-pages: everything restores lazily from local images;
        // dump and remote-lazy run like the lazy flavor (kept, its file
        // says so); precopy-postcopy like predump-read, lazy.
        let plan = apply_overrides(&set, &lazy_overrides(None, None, Local)).expect("ok");
        assert_eq!(labels(&plan), ["predump-read, lazy", "lazy"]);
        assert_eq!(
            plan.duplicates,
            [
                ("dump, lazy".to_string(), "lazy".to_string()),
                ("remote-lazy, lazy".to_string(), "lazy".to_string()),
                (
                    "precopy-postcopy, lazy".to_string(),
                    "predump-read, lazy".to_string()
                ),
            ]
        );
        assert!(plan.flavors.iter().all(|e| e.lazy == Some(Local)));

        // -a --remote-lazy-pages.
        let plan = apply_overrides(&set, &lazy_overrides(None, None, Remote)).expect("ok");
        assert_eq!(
            labels(&plan),
            ["remote-lazy", "precopy-postcopy"],
            "{:?}",
            plan.duplicates
        );
        assert_eq!(plan.duplicates.len(), 3);
        assert!(plan.flavors.iter().all(|e| e.lazy == Some(Remote)));

        // Composes with --pre and --pre-dump-mode.
        let plan =
            apply_overrides(&set[..1], &lazy_overrides(Some(2), Some(Read), Remote)).expect("ok");
        assert_eq!(labels(&plan), ["dump, pre 2 read, remote-lazy"]);
        let e = &plan.flavors[0];
        assert_eq!(
            (e.pre_dumps, e.pre_dump_mode, e.lazy),
            (2, Read, Some(Remote))
        );
        // ... and it runs like precopy-postcopy, which is kept.
        let plan = apply_overrides(&set, &lazy_overrides(Some(2), Some(Read), Remote)).expect("ok");
        assert_eq!(labels(&plan), ["precopy-postcopy"]);
        let plan = apply_overrides(&set[2..3], &lazy_overrides(Some(0), None, Local)).expect("ok");
        assert_eq!(labels(&plan), ["lazy"], "changes nothing: plain name");
        let plan = apply_overrides(&set[4..], &overrides(Some(0), None)).expect("ok");
        assert_eq!(labels(&plan), ["precopy-postcopy, pre 0"]);
        assert_eq!(plan.flavors[0].lazy, Some(Remote), "--pre keeps lazy");

        // --pre-dump-mode still needs a flavor that pre-dumps.
        let err = apply_overrides(&set[2..4], &lazy_overrides(None, Some(Read), Local))
            .expect_err("nothing pre-dumps")
            .to_string();
        assert!(err.contains("--pre-dump-mode read"), "{err}");
    }

    #[test]
    fn parses_tracker_snaps_page_server_iters() {
        let f = Flavor::parse(
            "name = \"pc\"\ndescription = \"d\"\npre_dumps = 3\ntracker = \"soft-dirty\"\n\
             snaps = true\npage_server = true\niters = 2\n",
            Path::new("/x/pc.toml"),
        )
        .expect("valid");
        assert_eq!(f.tracker, Some(Tracker::SoftDirty));
        assert!(f.snaps && f.page_server);
        assert_eq!(f.iters, Some(2));
        assert_eq!(
            f.settings().as_deref(),
            Some("pre 3 splice, snaps, tracker soft-dirty, page-server, iters 2")
        );
        let e = Effective::plain(&f);
        assert_eq!(
            (e.tracker, e.snaps, e.page_server, e.iters, e.overridden),
            (Some(Tracker::SoftDirty), true, true, 2, false)
        );
        assert_eq!(e.label(), "pc");
        assert!(e.switches().is_empty());
        for t in ["auto", "uffd-wp", "content"] {
            let text =
                format!("name = \"p\"\ndescription = \"d\"\npre_dumps = 1\ntracker = \"{t}\"\n");
            let f = Flavor::parse(&text, Path::new("/x/p.toml")).expect("valid");
            assert_eq!(f.tracker.map(Tracker::as_str), Some(t));
        }
    }

    #[rstest]
    #[case::tracker_without_pre_dumps(
        "name = \"dump\"\ndescription = \"d\"\ntracker = \"content\"\n",
        "tracker = \"content\" without pre_dumps"
    )]
    #[case::snaps_without_pre_dumps(
        "name = \"dump\"\ndescription = \"d\"\nsnaps = true\n",
        "snaps = true without pre_dumps"
    )]
    #[case::bad_tracker(
        "name = \"dump\"\ndescription = \"d\"\npre_dumps = 1\ntracker = \"dirty\"\n",
        "unknown variant `dirty`"
    )]
    #[case::zero_iters(
        "name = \"dump\"\ndescription = \"d\"\niters = 0\n",
        "iters = 0: from 1 to 100"
    )]
    #[case::too_many_iters("name = \"dump\"\ndescription = \"d\"\niters = 101\n", "iters = 101")]
    #[case::page_server_not_bool(
        "name = \"dump\"\ndescription = \"d\"\npage_server = \"yes\"\n",
        "invalid type"
    )]
    #[case::page_server_remote(
        "name = \"dump\"\ndescription = \"d\"\npage_server = true\nlazy = \"remote\"\n",
        "page_server with lazy = \"remote\""
    )]
    fn rejects_bad_new_keys(#[case] text: &str, #[case] expected: &str) {
        let err = Flavor::parse(text, Path::new("/x/dump.toml"))
            .expect_err("must be rejected")
            .to_string();
        assert!(err.contains(expected), "error {err:?} lacks {expected:?}");
    }

    #[test]
    fn a_flavor_cannot_be_named_all() {
        let err = Flavor::parse(
            "name = \"all\"\ndescription = \"d\"\n",
            Path::new("/x/all.toml"),
        )
        .expect_err("reserved")
        .to_string();
        assert!(err.contains("`-f all` selects every flavor"), "{err}");
    }

    #[test]
    fn select_all() {
        let set = FlavorSet {
            dir: "/f".into(),
            flavors: vec![flavor("a", 0, None), flavor("b", 1, None)],
        };
        assert_eq!(set.select(&["all".into()]).expect("all").len(), 2);
        assert_eq!(
            set.select(&["b".into(), "all".into()]).expect("all").len(),
            2
        );
    }

    #[test]
    fn switches_compose_and_replay() {
        let set = [
            flavor("dump", 0, None),
            flavor("predump-read", 2, Some(Read)),
            lazy_flavor("remote-lazy", 0, None, Lazy::Remote),
        ];
        let o = Overrides {
            tracker: Some(Tracker::Content),
            snaps: true,
            page_server: true,
            iters: Some(3),
            ..Overrides::default()
        };
        let plan = apply_overrides(&set, &o).expect("ok");
        // Tracker and snaps only where there are pre-dumps; no page server
        // for the remote lazy flavor; iters everywhere.
        assert_eq!(
            labels(&plan),
            [
                "dump, page-server, iters 3",
                "predump-read, snaps, tracker content, page-server, iters 3",
                "remote-lazy, iters 3",
            ]
        );
        let e = &plan.flavors[1];
        assert_eq!(
            (e.tracker, e.snaps, e.page_server, e.iters),
            (Some(Tracker::Content), true, true, 3)
        );
        assert_eq!(
            e.switches(),
            [
                "--snaps",
                "--tracker",
                "content",
                "--page-server",
                "--iters",
                "3"
            ]
        );
        assert!(!plan.flavors[0].snaps && plan.flavors[0].tracker.is_none());
        assert!(!plan.flavors[2].page_server);
        // --pre and lazy switches replay too.
        let o = Overrides {
            pre_dumps: Some(2),
            pre_dump_mode: Some(Read),
            lazy: Some(Lazy::Local),
            ..Overrides::default()
        };
        let e = set[0].effective(&o);
        assert_eq!(
            e.switches(),
            ["--pre", "2", "--pre-dump-mode", "read", "--lazy-pages"]
        );
        assert_eq!(
            set[1].effective(&Overrides::default()).switches(),
            Vec::<String>::new()
        );

        // The pre-dump switches need a flavor that pre-dumps; --page-server
        // one that is not remote lazy.
        for o in [
            Overrides {
                tracker: Some(Tracker::UffdWp),
                ..Overrides::default()
            },
            Overrides {
                snaps: true,
                ..Overrides::default()
            },
        ] {
            let err = apply_overrides(&set[..1], &o)
                .expect_err("nothing pre-dumps")
                .to_string();
            assert!(
                err.contains("none of the selected flavors (dump) pre-dumps"),
                "{err}"
            );
        }
        let err = apply_overrides(
            &set[2..],
            &Overrides {
                page_server: true,
                ..Overrides::default()
            },
        )
        .expect_err("remote only")
        .to_string();
        assert!(err.starts_with("--page-server: "), "{err}");
        // Switches that change nothing leave the plain name.
        let f = Flavor {
            iters: Some(2),
            ..flavor("it", 0, None)
        };
        let e = f.effective(&Overrides {
            iters: Some(2),
            ..Overrides::default()
        });
        assert_eq!((e.label(), e.overridden), ("it".to_string(), false));
    }

    #[test]
    fn unused_pre_dump_mode_is_an_error() {
        let set = [flavor("dump", 0, None)];
        let err = apply_overrides(&set, &overrides(None, Some(Read)))
            .expect_err("nothing pre-dumps")
            .to_string();
        assert!(
            err.contains("--pre-dump-mode read: none of the selected flavors (dump) pre-dumps"),
            "{err}"
        );
        let err = apply_overrides(&set, &overrides(Some(0), Some(Splice)))
            .expect_err("nothing pre-dumps")
            .to_string();
        assert!(err.contains("--pre-dump-mode splice"), "{err}");
        assert!(apply_overrides(&set, &overrides(Some(1), Some(Read))).is_ok());
    }
}
