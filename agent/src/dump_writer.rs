//! `--once` output on a thread of its own: records are formatted and written while the next
//! goroutines are read, on the machine's other core. Unlike streaming's queue nothing is ever
//! dropped: the dump waits when its consumer is slow, since the dump is the whole answer.

use std::io::{self, Write};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::report::{DumpFormatter, Event, Format};

/// Events handed to the writer thread at once (one channel operation per batch).
const BATCH: usize = 256;
/// Batches in flight at most: bounds memory when the consumer is slower than the dump.
const BATCHES_IN_FLIGHT: usize = 8;
/// Bytes of records formatted before they are written out.
const WRITE_BYTES: usize = 128 * 1024;

pub struct DumpWriter {
    pending: Vec<Event>,
    tx: Option<SyncSender<Vec<Event>>>,
    /// Batches written, sent back to be dropped here: memory is then freed by the thread
    /// that allocated it, which the allocator does far more cheaply than across threads.
    written: Receiver<Vec<Event>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl DumpWriter {
    pub fn start(mut out: Box<dyn Write + Send>, format: Format, pid: u32) -> io::Result<Self> {
        let (tx, rx) = sync_channel::<Vec<Event>>(BATCHES_IN_FLIGHT);
        let (written_tx, written) = channel::<Vec<Event>>();
        let thread = std::thread::Builder::new()
            .name("dump-writer".into())
            .spawn(move || {
                let mut formatter = DumpFormatter::new(format, pid);
                let mut buf = Vec::with_capacity(WRITE_BYTES + 64 * 1024);
                for batch in rx {
                    for event in &batch {
                        formatter.append(&mut buf, event)?;
                        if buf.len() >= WRITE_BYTES {
                            out.write_all(&buf)?;
                            buf.clear();
                        }
                    }
                    // Gone only when the dump is over: then this thread drops it.
                    let _ = written_tx.send(batch);
                }
                out.write_all(&buf)?;
                out.flush()
            })?;
        Ok(DumpWriter {
            pending: Vec::with_capacity(BATCH),
            tx: Some(tx),
            written,
            thread: Some(thread),
        })
    }

    /// Queues one event; fails once writing has failed (a closed pipe, a full disk).
    pub fn send(&mut self, event: Event) -> io::Result<()> {
        self.pending.push(event);
        if self.pending.len() >= BATCH {
            self.send_pending()?;
        }
        Ok(())
    }

    /// Writes out everything queued and waits for it; the writer's first error, if any.
    pub fn finish(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            // An error here comes back from the join below.
            let _ = self.send_pending();
        }
        self.tx = None;
        self.join()
    }

    fn send_pending(&mut self) -> io::Result<()> {
        // A written batch, emptied here, carries the next one.
        let next = match self.written.try_recv() {
            Ok(mut spent) => {
                spent.clear();
                spent
            }
            Err(_) => Vec::with_capacity(BATCH),
        };
        let batch = std::mem::replace(&mut self.pending, next);
        let sent = match &self.tx {
            Some(tx) => tx.send(batch).is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The thread has ended: it failed to write (or finish ran already).
        self.tx = None;
        self.join()?;
        Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the dump's output is closed",
        ))
    }

    fn join(&mut self) -> io::Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the dump writer thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for DumpWriter {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
