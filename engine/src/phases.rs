//! Wall-clock time per phase of a dump or restore, for `-v` and stats.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Phases {
    last: Instant,
    pub spans: Vec<(&'static str, Duration)>,
}

impl Default for Phases {
    fn default() -> Self {
        Phases {
            last: Instant::now(),
            spans: Vec::new(),
        }
    }
}

impl Phases {
    /// Closes the phase that ran since the previous mark.
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.spans.push((name, now - self.last));
        self.last = now;
    }

    pub fn render(&self) -> String {
        self.spans
            .iter()
            .map(|(n, d)| format!("{n} {:.1}ms", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
