//! Threads, children and names of a process.

use super::{pid_path, read_text, ProcError, Result};

/// The thread ids of `pid` (from /proc/PID/task), sorted.
pub fn task_ids(pid: i32) -> Result<Vec<i32>> {
    let dir = pid_path(pid, "task");
    let entries = std::fs::read_dir(&dir).map_err(|e| ProcError::io(&dir, e))?;
    let mut tids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ProcError::io(&dir, e))?;
        if let Some(tid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            tids.push(tid);
        }
    }
    tids.sort_unstable();
    Ok(tids)
}

/// Parses a /proc/PID/task/TID/children file ("12 34 ").
fn parse_children(text: &str) -> Vec<i32> {
    text.split_ascii_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The children of every thread of `pid`, sorted and deduplicated.
/// Threads that exit while we read are skipped. The per-thread files are
/// needed because a child belongs to the thread that forked it.
pub fn children(pid: i32) -> Result<Vec<i32>> {
    let mut kids = Vec::new();
    for tid in task_ids(pid)? {
        let path = pid_path(pid, &format!("task/{tid}/children"));
        match read_text(&path) {
            Ok(text) => kids.extend(parse_children(&text)),
            Err(e) if e.is_gone() && path.parent().is_some_and(|p| !p.exists()) => {}
            Err(e) => return Err(e),
        }
    }
    kids.sort_unstable();
    kids.dedup();
    Ok(kids)
}

/// /proc/PID/comm without the trailing newline.
pub fn read_comm(pid: i32) -> Result<String> {
    let text = read_text(&pid_path(pid, "comm"))?;
    Ok(text.strip_suffix('\n').unwrap_or(&text).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_text() {
        assert_eq!(parse_children("12 34 \n"), [12, 34]);
        assert!(parse_children("").is_empty());
    }

    #[test]
    fn self_threads_and_children() {
        let me = std::process::id() as i32;
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let b2 = barrier.clone();
        let t = std::thread::spawn(move || {
            b2.wait();
            b2.wait();
        });
        barrier.wait();
        let tids = task_ids(me).unwrap();
        assert!(tids.len() >= 2 && tids.contains(&me));
        barrier.wait();
        t.join().unwrap();

        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let kids = children(me).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(kids.contains(&(child.id() as i32)), "{kids:?}");
    }

    #[test]
    fn comm() {
        let me = std::process::id() as i32;
        let comm = read_comm(me).unwrap();
        assert!(!comm.is_empty() && !comm.ends_with('\n'));
        assert!(read_comm(-1).unwrap_err().is_gone());
    }
}
