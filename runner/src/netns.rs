//! The network of the remote lazy flavors: once per `zdtm run` session, a
//! network namespace joined to the runner's by a veth pair with a private
//! /30, so that the pages a lazy dump serves really cross an interface on
//! their way to `crust lazy-pages --page-server`, which runs in the
//! namespace (`ip netns exec`).
//!
//! Names and addresses come from the runner's pid, so that two runners at
//! once do not collide: namespace `zdtm-PID`, interfaces `zdtmPIDs`
//! (runner's side, the source address) and `zdtmPIDd` (the namespace's
//! side), both within IFNAMSIZ (15 characters). The /30 is `10.0.0.0/8`
//! block number PID (a pid is below 2^22, the number of /30 blocks in
//! 10/8), skipping blocks that overlap an address already configured on
//! the host.
//!
//! [`Link`] removes both on drop; an interrupted runner (SIGINT, SIGTERM,
//! SIGHUP) exits without running destructors, so the interrupt handler
//! calls [`teardown_registered`].

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Mutex;

use crate::procs::clean_command;

/// The `ip` command (iproute2), looked up in `PATH`.
pub const IP: &str = "ip";

/// First port tried for the lazy dumps' servers.
const FIRST_PORT: u16 = 27000;

/// (namespace, host interface) of the live session links, for the
/// interrupt handler.
static REGISTERED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Runs `ip ARGS`; `Err` with its stderr when it fails.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = clean_command(IP)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {IP}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{IP} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The IPv4 networks (address, prefix length) configured on the host, from
/// `ip -o -4 addr show` lines (`2: eth0    inet 10.0.2.15/24 brd ...`).
pub fn parse_host_networks(text: &str) -> Vec<(Ipv4Addr, u8)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet")?;
            let (addr, len) = words.next()?.split_once('/')?;
            Some((addr.parse().ok()?, len.parse().ok()?))
        })
        .collect()
}

/// Whether `a/alen` and `b/blen` share an address.
pub fn overlaps(a: Ipv4Addr, alen: u8, b: Ipv4Addr, blen: u8) -> bool {
    let len = u32::from(alen.min(blen).min(32));
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(a) & mask == u32::from(b) & mask
}

/// The /30 block `index` of 10/8 (wrapping): its first address.
pub fn block(index: u32) -> Ipv4Addr {
    Ipv4Addr::from((10u32 << 24) | ((index.wrapping_mul(4)) & 0x00ff_fffc))
}

/// The first /30 of 10/8 from block `index` on (at most 64 tried) that
/// overlaps none of `taken`.
pub fn free_block(index: u32, taken: &[(Ipv4Addr, u8)]) -> Option<Ipv4Addr> {
    (0..64u32)
        .map(|k| block(index.wrapping_add(k.wrapping_mul(7919))))
        .find(|&net| net != block(0) && !taken.iter().any(|&(a, len)| overlaps(a, len, net, 30)))
}

/// The session's namespace and veth pair.
#[derive(Debug)]
pub struct Link {
    /// The network namespace (`ip netns` name).
    pub ns: String,
    /// The runner's end of the pair (holds [`Link::source`]).
    pub host_if: String,
    /// The namespace's end (holds [`Link::dest`]).
    pub peer_if: String,
    /// The source side's address: the lazy dumps listen there.
    pub source: Ipv4Addr,
    /// The namespace side's address.
    pub dest: Ipv4Addr,
    next_port: AtomicU16,
    /// Runs currently cutting the link (it is down while > 0).
    cuts: Mutex<u32>,
}

impl Link {
    /// Creates the namespace and the veth pair of runner `pid`.
    pub fn create(pid: u32) -> Result<Link, String> {
        let ns = format!("zdtm-{pid}");
        let host_if = format!("zdtm{pid}s");
        let peer_if = format!("zdtm{pid}d");
        let taken = parse_host_networks(&ip(&["-o", "-4", "addr", "show"])?);
        let net = free_block(pid, &taken)
            .ok_or_else(|| "no free /30 in 10.0.0.0/8 for the veth pair".to_string())?;
        let source = Ipv4Addr::from(u32::from(net) + 1);
        let dest = Ipv4Addr::from(u32::from(net) + 2);
        // A leftover of a dead runner that had our pid: ours to remove.
        if ip(&["netns", "add", &ns]).is_err() {
            let _ = ip(&["link", "del", &host_if]);
            let _ = ip(&["netns", "del", &ns]);
            ip(&["netns", "add", &ns])?;
        }
        let link = Link {
            ns,
            host_if,
            peer_if,
            source,
            dest,
            next_port: AtomicU16::new(FIRST_PORT),
            cuts: Mutex::new(0),
        };
        registry().push((link.ns.clone(), link.host_if.clone()));
        // From here on, drop tears down whatever was made.
        let (src, dst) = (format!("{source}/30"), format!("{dest}/30"));
        let (ns, host, peer) = (&link.ns, &link.host_if, &link.peer_if);
        ip(&[
            "link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns,
        ])?;
        ip(&["addr", "add", &src, "dev", host])?;
        ip(&["link", "set", host, "up"])?;
        ip(&["-n", ns, "addr", "add", &dst, "dev", peer])?;
        ip(&["-n", ns, "link", "set", peer, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(link)
    }

    /// A port of [`Link::source`] nobody listens on (this session hands
    /// each run its own).
    pub fn next_port(&self) -> Result<u16, String> {
        for _ in 0..1000 {
            let port = self.next_port.fetch_add(1, Ordering::Relaxed);
            if port < FIRST_PORT {
                // Wrapped around.
                self.next_port.store(FIRST_PORT, Ordering::Relaxed);
                continue;
            }
            if TcpListener::bind(SocketAddrV4::new(self.source, port)).is_ok() {
                return Ok(port);
            }
        }
        Err(format!("no free TCP port on {}", self.source))
    }

    /// Starts a cut: the link goes down (if no other run holds it down).
    pub fn cut(&self) -> Result<(), String> {
        let mut cuts = self.cuts.lock().unwrap_or_else(|p| p.into_inner());
        if *cuts == 0 {
            ip(&["link", "set", &self.host_if, "down"])?;
        }
        *cuts += 1;
        Ok(())
    }

    /// Ends a cut: the link comes up again once no run holds it down.
    pub fn restore(&self) -> Result<(), String> {
        let mut cuts = self.cuts.lock().unwrap_or_else(|p| p.into_inner());
        *cuts = cuts.saturating_sub(1);
        if *cuts == 0 {
            ip(&["link", "set", &self.host_if, "up"])?;
        }
        Ok(())
    }

    /// Tears both down; errors are returned for the caller to report.
    fn teardown(&self) -> Result<(), String> {
        remove(&self.ns, &self.host_if)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("zdtm: warning: {e}");
        }
    }
}

fn registry() -> std::sync::MutexGuard<'static, Vec<(String, String)>> {
    REGISTERED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes the veth pair and the namespace, and forgets them.
fn remove(ns: &str, host_if: &str) -> Result<(), String> {
    registry().retain(|(n, _)| n != ns);
    // Deleting one end deletes the pair; the namespace may hold the other
    // end only, which goes with the namespace anyway.
    let link = ip(&["link", "del", host_if]);
    let netns = ip(&["netns", "del", ns]);
    match (link, netns) {
        (_, Ok(_)) => Ok(()),
        (_, Err(e)) => Err(e),
    }
}

/// Tears down every link still registered (for the interrupt handler).
pub fn teardown_registered() {
    let links: Vec<(String, String)> = registry().clone();
    for (ns, host_if) in links {
        let _ = remove(&ns, &host_if);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_networks() {
        let text = "1: lo    inet 127.0.0.1/8 scope host lo\n\
                    2: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global eth0\n";
        assert_eq!(
            parse_host_networks(text),
            [
                (Ipv4Addr::new(127, 0, 0, 1), 8),
                (Ipv4Addr::new(10, 0, 2, 15), 24)
            ]
        );
    }

    #[test]
    fn blocks_and_overlaps() {
        assert_eq!(block(0), Ipv4Addr::new(10, 0, 0, 0));
        assert_eq!(block(1), Ipv4Addr::new(10, 0, 0, 4));
        assert_eq!(block(4_194_303), Ipv4Addr::new(10, 255, 255, 252));
        assert!(overlaps(
            Ipv4Addr::new(10, 0, 2, 15),
            24,
            Ipv4Addr::new(10, 0, 2, 4),
            30
        ));
        assert!(!overlaps(
            Ipv4Addr::new(10, 0, 2, 15),
            24,
            Ipv4Addr::new(10, 0, 3, 4),
            30
        ));
        // Distinct pids get distinct blocks.
        assert_ne!(free_block(1234, &[]), free_block(1235, &[]));
        assert_eq!(free_block(1, &[]), Some(Ipv4Addr::new(10, 0, 0, 4)));
        // A taken block is skipped.
        let taken = [(Ipv4Addr::new(10, 0, 0, 5), 30)];
        let got = free_block(1, &taken).expect("some block");
        assert!(!overlaps(got, 30, taken[0].0, 30), "{got}");
        // 10.0.0.0/8 on the host: nothing is free.
        assert_eq!(free_block(1, &[(Ipv4Addr::new(10, 0, 0, 1), 8)]), None);
    }

    #[test]
    fn interface_names_fit() {
        // IFNAMSIZ is 16 with the NUL: 15 characters.
        let pid = 4_194_304u32;
        assert!(format!("zdtm{pid}s").len() <= 15);
    }
}
