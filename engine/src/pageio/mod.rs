//! The page I/O seam: every byte of page data goes through a sink (dump,
//! pre-dump: image files or a page server over TCP) or a source (restore,
//! the lazy-pages daemon: the image chain or a remote page server). Nothing
//! above these traits knows whether pages travel to a file or a socket.
//! See docs/architecture.md ("Page I/O").

pub mod file;
pub mod out;
pub mod server;
pub mod sink;
pub mod source;

pub use file::{FileSink, SharedFile};
pub use out::ImageOut;
pub use server::ServerSink;
pub use sink::PageSink;
pub use source::PageSource;
