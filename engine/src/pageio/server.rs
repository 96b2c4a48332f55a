//! A page server as a page sink: the pages of one task travel over the
//! dump's connection as PAGES_DATA frames (see `crate::pageserver`).

use std::os::fd::BorrowedFd;

use super::PageSink;
use crate::error::Result;
use crate::pageserver::client::{lock, Shared};

pub struct ServerSink {
    conn: Shared,
    pid: i32,
    written: u64,
}

impl ServerSink {
    /// Starts the pages of `pid` at the server.
    pub fn begin(conn: Shared, pid: i32) -> Result<ServerSink> {
        lock(&conn)?.pages_begin(pid)?;
        Ok(ServerSink {
            conn,
            pid,
            written: 0,
        })
    }
}

impl PageSink for ServerSink {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        lock(&self.conn)?.pages_data(self.pid, data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    fn splice_from(&mut self, pipe: BorrowedFd<'_>, len: usize) -> Result<()> {
        lock(&self.conn)?.pages_splice(self.pid, pipe, len)?;
        self.written += len as u64;
        Ok(())
    }

    /// The server checks the total and closes the pages file; durability
    /// comes with the COMMIT the dump sends last.
    fn finish(self: Box<Self>) -> Result<u64> {
        lock(&self.conn)?.pages_end(self.pid, self.written)?;
        Ok(self.written)
    }
}
