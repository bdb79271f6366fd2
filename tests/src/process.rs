//! A child process whose stdout is read line by line on a background thread, with every line
//! time-stamped on arrival and kept; killed on drop so that no test leaves processes behind.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// One stdout line, stamped when the harness read it.
#[derive(Debug, Clone)]
pub struct Line {
    pub at: Instant,
    pub text: String,
    /// The line parsed as JSON, if it is JSON.
    pub json: Option<Value>,
}

pub struct Process {
    name: String,
    pub pid: u32,
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<Line>,
    stdout_open: bool,
    history: Vec<Line>,
    cursor: usize,
    stderr: Arc<Mutex<String>>,
    exited: Option<ExitStatus>,
}

impl Process {
    /// Spawns `cmd` with stdin, stdout and stderr piped. `name` is used in error messages.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Process> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let stderr_pipe = child.stderr.take().context("child stderr")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&buf).trim_end().to_string();
                        let json = serde_json::from_str(&text).ok();
                        let line = Line {
                            at: Instant::now(),
                            text,
                            json,
                        };
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut r = stderr_pipe;
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Ok(Process {
            name: name.to_string(),
            pid: child.id(),
            stdin: child.stdin.take(),
            child,
            rx,
            stdout_open: true,
            history: Vec::new(),
            cursor: 0,
            stderr,
            exited: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every stdout line received so far.
    pub fn lines(&mut self) -> &[Line] {
        while let Ok(l) = self.rx.try_recv() {
            self.history.push(l);
        }
        &self.history
    }

    /// Waits for the next stdout line (after those previous waits returned) that is JSON and
    /// satisfies `pred`. Lines skipped over stay in [`Process::lines`].
    pub fn wait_json(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Result<Line> {
        let deadline = Instant::now() + timeout;
        loop {
            while self.cursor < self.history.len() {
                let i = self.cursor;
                self.cursor += 1;
                if self.history[i].json.as_ref().is_some_and(&mut pred) {
                    return Ok(self.history[i].clone());
                }
            }
            if !self.stdout_open {
                bail!(
                    "{}: stdout closed while waiting for {what}; stderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "{}: no {what} within {timeout:?}; stderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            match self.rx.recv_timeout(deadline - now) {
                Ok(l) => self.history.push(l),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.stdout_open = false,
            }
        }
    }

    /// Makes later waits ignore every line received so far (they stay in [`Process::lines`]).
    pub fn skip_pending(&mut self) {
        self.lines();
        self.cursor = self.history.len();
    }

    /// Sends a signal (libc number) to the process.
    pub fn signal(&self, sig: i32) -> Result<()> {
        let pid = libc::pid_t::try_from(self.pid).context("pid out of range")?;
        // SAFETY: kill(2) has no memory-safety preconditions.
        if unsafe { libc::kill(pid, sig) } != 0 {
            bail!(
                "{}: kill({}, {sig}): {}",
                self.name,
                self.pid,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Writes one line to the process's stdin.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{}: stdin already closed", self.name))?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .with_context(|| format!("{}: writing to stdin", self.name))
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The exit status, if the process has exited.
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().context("waitpid")?;
        }
        Ok(self.exited)
    }

    /// Waits for the process to exit and for its stdout to reach end of file.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.try_exit()? {
                break s;
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: still running after {timeout:?}; stderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        // The reader thread finishes once the pipe is drained; a grandchild holding the pipe
        // must not hang the test, so bound the wait.
        let drain_deadline = Instant::now() + Duration::from_secs(5);
        while self.stdout_open && Instant::now() < drain_deadline {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => self.history.push(l),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.stdout_open = false,
            }
        }
        // Give the stderr thread a moment to copy the last bytes.
        thread::sleep(Duration::from_millis(20));
        Ok(status)
    }

    /// Kills the process (SIGKILL) if it is still running, and reaps it.
    pub fn kill(&mut self) {
        if self.try_exit().ok().flatten().is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
