//! Command line parsing for zdtm tests.
//!
//! Accepted forms: `--pidfile=PATH`, `--pidfile PATH`, `--outfile=PATH`,
//! `--outfile PATH`, and any other option as `--key=value` or `--flag`
//! (stored with an empty value). Positional arguments are rejected.

use std::path::PathBuf;
use std::str::FromStr;

/// Parsed command line of a test program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// Where the daemonising parent writes the test's pid when ready.
    pub pidfile: PathBuf,
    /// Where the test writes `PASS` or `FAIL: reason`.
    pub outfile: PathBuf,
    /// All other `--key=value` options, in command line order.
    pub opts: Vec<(String, String)>,
}

impl Args {
    /// Parses the arguments that follow the program name.
    pub fn parse<I, S>(args: I) -> Result<Args, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut pidfile = None;
        let mut outfile = None;
        let mut opts = Vec::new();
        let mut it = args.into_iter().map(Into::into);
        while let Some(arg) = it.next() {
            let Some(body) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}"));
            };
            let (key, inline_val) = match body.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (body.to_string(), None),
            };
            if key.is_empty() {
                return Err(format!("bad option {arg:?}"));
            }
            match key.as_str() {
                "pidfile" | "outfile" => {
                    let val = match inline_val {
                        Some(v) => v,
                        None => it
                            .next()
                            .ok_or_else(|| format!("option --{key} needs a value"))?,
                    };
                    if val.is_empty() {
                        return Err(format!("option --{key} needs a non-empty value"));
                    }
                    let slot = if key == "pidfile" {
                        &mut pidfile
                    } else {
                        &mut outfile
                    };
                    *slot = Some(PathBuf::from(val));
                }
                _ => opts.push((key, inline_val.unwrap_or_default())),
            }
        }
        Ok(Args {
            pidfile: pidfile.ok_or("missing --pidfile")?,
            outfile: outfile.ok_or("missing --outfile")?,
            opts,
        })
    }

    /// The value of the last `--key=value` option with this key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.opts
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `--key` (with or without a value) was given.
    pub fn has(&self, key: &str) -> bool {
        self.opts.iter().any(|(k, _)| k == key)
    }

    /// Parses the value of `--key=value`, or returns `default` when the
    /// option is absent.
    pub fn get_or<T: FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("bad value {v:?} for option --{key}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_form() {
        let a = Args::parse(["--pidfile=/tmp/p", "--outfile=/tmp/o"]).unwrap();
        assert_eq!(a.pidfile, PathBuf::from("/tmp/p"));
        assert_eq!(a.outfile, PathBuf::from("/tmp/o"));
        assert!(a.opts.is_empty());
    }

    #[test]
    fn separate_form_and_options() {
        let a = Args::parse([
            "--outfile",
            "o.out",
            "--size=12",
            "--verbose",
            "--pidfile",
            "p.pid",
            "--size=13",
        ])
        .unwrap();
        assert_eq!(a.pidfile, PathBuf::from("p.pid"));
        assert_eq!(a.outfile, PathBuf::from("o.out"));
        assert_eq!(a.get("size"), Some("13"));
        assert_eq!(a.get_or("size", 0u32), Ok(13));
        assert_eq!(a.get_or("missing", 7u32), Ok(7));
        assert!(a.has("verbose"));
        assert_eq!(a.get("verbose"), Some(""));
        assert!(!a.has("quiet"));
        assert!(a.get_or::<u32>("verbose", 1).is_err());
    }

    #[test]
    fn value_may_contain_equals() {
        let a = Args::parse(["--pidfile=p", "--outfile=o", "--env=A=B"]).unwrap();
        assert_eq!(a.get("env"), Some("A=B"));
    }

    #[test]
    fn errors() {
        assert!(Args::parse(["--pidfile=p"]).is_err());
        assert!(Args::parse(["--outfile=o"]).is_err());
        assert!(Args::parse(["--outfile=o", "--pidfile"]).is_err());
        assert!(Args::parse(["--outfile=o", "--pidfile="]).is_err());
        assert!(Args::parse(["--outfile=o", "--pidfile=p", "positional"]).is_err());
        assert!(Args::parse(["--outfile=o", "--pidfile=p", "--=x"]).is_err());
        assert!(Args::parse(Vec::<String>::new()).is_err());
    }
}
