//! A small synchronous QMP client: greeting, `qmp_capabilities`, commands, and the events that
//! arrive in between (kept for [`Qmp::events`]).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::error::{Error, Result};

/// Named limit: a QMP reply line longer than this is a broken peer (replies here are small).
const MAX_LINE: usize = 1 << 20;

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
}

impl Qmp {
    /// Connects to `socket`, reads the greeting and leaves capabilities negotiation mode.
    /// Every read waits at most `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self> {
        let stream = UnixStream::connect(socket).map_err(|e| Error::io(socket, "connecting to QMP", e))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| Error::io(socket, "setting the QMP timeout", e))?;
        let writer = stream.try_clone().map_err(|e| Error::io(socket, "cloning the QMP socket", e))?;
        let mut qmp = Qmp { reader: BufReader::new(stream), writer, events: Vec::new() };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(Error::Qmp(format!("expected the QMP greeting, got {greeting}")));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = std::io::Read::take(&mut self.reader, MAX_LINE as u64)
                .read_until(b'\n', &mut line)
                .map_err(|e| Error::Qmp(format!("reading: {e}")))?;
            if n == 0 {
                return Err(Error::Qmp("qemu closed the QMP connection".to_owned()));
            }
            if line.last() != Some(&b'\n') {
                return Err(Error::Qmp(format!("a message longer than {MAX_LINE} bytes")));
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return serde_json::from_slice(&line).map_err(|e| Error::Qmp(format!("not JSON: {e}")));
        }
    }

    /// Runs `command` and returns its `return` value; QMP errors become [`Error::Qmp`].
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).map_err(|e| Error::Qmp(format!("sending {command}: {e}")))?;
        loop {
            let reply = self.read_message()?;
            if reply.get("event").is_some() {
                self.events.push(reply);
                continue;
            }
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                let desc = e.get("desc").and_then(Value::as_str).unwrap_or("unknown error");
                return Err(Error::Qmp(format!("{command}: {desc}")));
            }
            return Err(Error::Qmp(format!("unexpected reply to {command}: {reply}")));
        }
    }

    /// The VM's run state (`running`, `paused`, `shutdown`, ...) from `query-status`.
    pub fn status(&mut self) -> Result<String> {
        let r = self.execute("query-status", None)?;
        r.get("status")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| Error::Qmp(format!("query-status returned {r}")))
    }

    /// Reads what is left on the socket after qemu exited (up to EOF), keeping the events.
    pub fn drain(&mut self) {
        while let Ok(msg) = self.read_message() {
            if msg.get("event").is_some() {
                self.events.push(msg);
            }
        }
    }

    /// Events received so far (`SHUTDOWN`, `POWERDOWN`, ...).
    pub fn events(&self) -> &[Value] {
        &self.events
    }
}
