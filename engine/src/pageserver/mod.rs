//! The page server: `crust page-server` receives the images of one dump
//! or pre-dump over TCP and writes them as a complete image directory;
//! `--page-server` on `dump` and `pre-dump` sends them there.
//!
//! `proto` is the wire format, `client` the sending side (used by
//! `pageio::ServerSink` and the dump's image writer), `server` the
//! receiving side.

pub mod client;
pub mod proto;
pub mod server;

/// SO_SNDBUF / SO_RCVBUF asked for on page-server sockets; 0 leaves the
/// kernel's autotuning alone.
pub(crate) const SOCKET_BUFFER: libc::c_int = 0;
