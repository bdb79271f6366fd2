//! Records leave through a bounded queue to a writer thread, so a consumer that stops reading
//! (a stalled log pipeline, a full pipe) never blocks the streaming loop: probe-budget control,
//! signals and `--duration` keep working. Records that do not fit are dropped and counted; the
//! count reaches the output in the next summary that gets through, and in `detach`.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Records waiting for the writer at most: a few seconds of a busy stream.
pub const QUEUE_RECORDS: usize = 4096;

pub struct OutputQueue {
    tx: Option<SyncSender<Vec<u8>>>,
    dropped: Arc<AtomicU64>,
    /// Told when the writer thread has written everything and flushed.
    finished: Receiver<std::io::Result<()>>,
    _writer: JoinHandle<()>,
}

impl OutputQueue {
    pub fn start(mut out: Box<dyn Write + Send>, capacity: usize) -> std::io::Result<OutputQueue> {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(capacity);
        let (done_tx, finished) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("ctxprobe-output".into())
            .spawn(move || {
                let mut result = Ok(());
                for record in rx {
                    if let Err(e) = out.write_all(&record) {
                        // A closed pipe: nothing more can be written; drain and stop.
                        result = Err(e);
                        break;
                    }
                }
                let result = result.and_then(|()| out.flush());
                let _ = done_tx.send(result);
            })?;
        Ok(OutputQueue {
            tx: Some(tx),
            dropped: Arc::new(AtomicU64::new(0)),
            finished,
            _writer: writer,
        })
    }

    /// Queues one formatted record; never blocks. A full queue drops it (counted).
    pub fn push(&self, record: Vec<u8>) {
        let Some(tx) = &self.tx else {
            return;
        };
        match tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Lets the writer finish what is queued, waiting at most `timeout` for a stuck consumer
    /// (then the records still queued are lost with the process).
    pub fn close(&mut self, timeout: Duration) -> std::io::Result<()> {
        self.tx = None;
        match self.finished.recv_timeout(timeout) {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the output consumer stopped reading; the last records were not written",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that blocks until told to go on, like a pipe nobody reads.
    struct Stuck(Receiver<()>, Arc<AtomicU64>);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            self.1.fetch_add(1, Ordering::Relaxed);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_consumer_drops_and_counts_and_never_blocks() {
        let (go_on, wait) = mpsc::channel();
        let written = Arc::new(AtomicU64::new(0));
        let mut q = OutputQueue::start(Box::new(Stuck(wait, written.clone())), 4).unwrap();
        let start = std::time::Instant::now();
        for _ in 0..100 {
            q.push(b"x\n".to_vec());
        }
        assert!(start.elapsed() < Duration::from_millis(500));
        // 4 queued, at most one taken by the writer: the rest dropped.
        assert!(q.dropped() >= 95, "{}", q.dropped());
        let close_start = std::time::Instant::now();
        assert!(q.close(Duration::from_millis(200)).is_err());
        assert!(close_start.elapsed() < Duration::from_secs(1));
        drop(go_on);
    }

    #[test]
    fn a_reading_consumer_gets_everything_in_order() {
        let path = std::env::temp_dir().join(format!("ctxprobe-queue-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let mut q = OutputQueue::start(Box::new(file), 16).unwrap();
        for i in 0..10 {
            q.push(format!("{i}\n").into_bytes());
            std::thread::sleep(Duration::from_millis(1));
        }
        q.close(Duration::from_secs(5)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(text, "0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n");
    }
}
