//! `crust check` reports the kernel features the engine relies on.

mod common;

use common::*;

#[test]
fn check_reports_features() {
    init();
    let out = crust(["check"]);
    out.assert_ok();
    for needle in [
        "ptrace",
        "userfaultfd",
        "PAGEMAP_SCAN",
        "soft-dirty",
        "cpu latency request",
    ] {
        assert!(
            out.stdout.contains(needle),
            "crust check does not mention {needle}:\n{}",
            out.stdout
        );
    }
}

#[test]
fn check_json() {
    init();
    let out = crust(["check", "--json"]);
    out.assert_ok();
    let json = out.json();
    let features = json["features"]
        .as_array()
        .unwrap_or_else(|| panic!("no features array:\n{}", out.stdout));
    assert!(!features.is_empty());
    for f in features {
        assert!(
            f["name"].is_string() && f["available"].is_boolean(),
            "bad feature entry {f}"
        );
    }
    let names: Vec<&str> = features.iter().filter_map(|f| f["name"].as_str()).collect();
    assert!(
        names.iter().any(|n| n.contains("ptrace")),
        "no ptrace feature in {names:?}"
    );
    assert!(
        names.iter().any(|n| n.contains("userfaultfd")),
        "no userfaultfd feature in {names:?}"
    );
    // Root runs the tests, so dump and restore must be possible here.
    let modes = json["modes"]
        .as_array()
        .unwrap_or_else(|| panic!("no modes array:\n{}", out.stdout));
    for mode in ["dump", "restore"] {
        let m = modes
            .iter()
            .find(|m| m["name"] == mode)
            .unwrap_or_else(|| panic!("no {mode} mode in {modes:?}"));
        assert_eq!(m["runnable"], true, "{mode} is not runnable here: {m}");
    }
}
