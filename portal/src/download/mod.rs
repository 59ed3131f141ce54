//! Downloads: one file streamed chunk by chunk (Range, ETag, safe Content-Disposition), and
//! folders or selections as a zip stream. Neither buffers a whole file nor writes a temp file;
//! repository reads go through a semaphore so memory stays flat under many downloads.

use std::sync::atomic::Ordering::Relaxed;

use crate::audit::Record;
use crate::state::AppState;

mod archive;
mod file;
mod headers;

pub use archive::archive;
pub use file::download;

/// Size of the pieces an archive is written in.
const PIECE: usize = 256 * 1024;

/// Counts a stream as active and writes its audit record (with the bytes really sent) when it
/// ends, finished or not.
struct StreamGuard {
    state: AppState,
    record: Record,
    sent: u64,
    expected: Option<u64>,
    finished: bool,
}

impl StreamGuard {
    fn new(state: AppState, record: Record, expected: Option<u64>) -> StreamGuard {
        state.metrics.streams_active.fetch_add(1, Relaxed);
        StreamGuard { state, record, sent: 0, expected, finished: false }
    }

    fn finish(&mut self, ok: bool) {
        self.finished = ok;
    }

    fn add(&mut self, n: u64) {
        self.sent += n;
        self.state.metrics.bytes_sent.fetch_add(n, Relaxed);
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.state.metrics.streams_active.fetch_sub(1, Relaxed);
        // With a known length the server may stop polling once it has sent every byte.
        let complete = match self.expected {
            Some(e) => e == self.sent,
            None => self.finished,
        };
        self.record.outcome = if complete { "ok".into() } else { "incomplete".into() };
        self.record.bytes = Some(self.sent);
        self.state.audit.write(std::mem::take(&mut self.record));
    }
}
