//! The typed client of the daemon's control socket (`gpuswap_api::control`
//! on the wire): what the daemon's tests, the harness and the end-to-end
//! tests read the daemon's state through.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use gpuswap_api::control::{
    ArmedFaults, Counters, Event, Events, Fault, Request, Resource, Resources, Status, Subscribed,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::process::poll_every;

/// What went wrong with a control request.
#[derive(Debug)]
pub enum ControlError {
    /// Connecting, writing or reading failed (a read timeout included).
    Io(io::Error),
    /// The daemon closed the connection instead of answering.
    Closed,
    /// The reply line is not the JSON the request gets.
    BadReply { line: String, error: String },
    /// The daemon answered `"ok": false`.
    Refused { request: String, error: String },
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::Io(e) => write!(f, "control socket: {e}"),
            ControlError::Closed => write!(f, "control socket: the daemon closed the connection"),
            ControlError::BadReply { line, error } => {
                write!(f, "control socket: bad reply {line:?}: {error}")
            }
            ControlError::Refused { request, error } => {
                write!(f, "control request {request} failed: {error}")
            }
        }
    }
}

impl std::error::Error for ControlError {}

impl From<io::Error> for ControlError {
    fn from(e: io::Error) -> ControlError {
        ControlError::Io(e)
    }
}

/// For callers whose errors are strings (the harness).
impl From<ControlError> for String {
    fn from(e: ControlError) -> String {
        e.to_string()
    }
}

pub type ControlResult<T> = Result<T, ControlError>;

/// A connection to the control socket: one request line, one reply line.
pub struct ControlClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl ControlClient {
    /// How long a reply may take unless [`ControlClient::set_timeout`] says
    /// otherwise.
    pub const TIMEOUT: Duration = Duration::from_secs(30);

    /// Connects to the socket at `path` (one attempt).
    pub fn connect(path: &Path) -> ControlResult<ControlClient> {
        let stream = UnixStream::connect(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        stream.set_read_timeout(Some(Self::TIMEOUT))?;
        let writer = stream.try_clone()?;
        Ok(ControlClient {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sets how long a reply may take.
    pub fn set_timeout(&mut self, timeout: Duration) -> ControlResult<()> {
        Ok(self.reader.get_ref().set_read_timeout(Some(timeout))?)
    }

    /// Identity, limits and what the frontend negotiated.
    pub fn status(&mut self) -> ControlResult<Status> {
        self.request(&Request::Status)
    }

    /// Every live resource, with hashes.
    pub fn resources(&mut self) -> ControlResult<Vec<Resource>> {
        self.resources_matching(None, true)
    }

    /// Live resource `id`, with hashes; `None` when it is not live.
    pub fn resource(&mut self, id: u32) -> ControlResult<Option<Resource>> {
        Ok(self.resources_matching(Some(id), true)?.pop())
    }

    /// The `resources` request as given: every live resource (or `id`),
    /// with hashes or without.
    pub fn resources_matching(
        &mut self,
        id: Option<u32>,
        hashes: bool,
    ) -> ControlResult<Vec<Resource>> {
        let reply: Resources = self.request(&Request::Resources { id, hashes })?;
        Ok(reply.resources)
    }

    /// Waits up to `timeout` for the daemon to hold no resource (a guest
    /// frees them asynchronously after a close) and returns what is left.
    pub fn resources_left(&mut self, timeout: Duration) -> ControlResult<Vec<Resource>> {
        let mut left = Ok(Vec::new());
        poll_every(Duration::from_millis(50), timeout, || {
            left = self.resources();
            left.as_ref()
                .map_or(Some(()), |l| l.is_empty().then_some(()))
        });
        left
    }

    /// The device's and the daemon's running totals.
    pub fn counters(&mut self) -> ControlResult<Counters> {
        self.request(&Request::Counters)
    }

    /// Retained events after sequence number `after`, of every resource or
    /// of one.
    pub fn trace(&mut self, after: u64, resource: Option<u32>) -> ControlResult<Vec<Event>> {
        let reply: Events = self.request(&Request::Trace { after, resource })?;
        Ok(reply.events)
    }

    /// Every violation in the retained trace.
    pub fn violations(&mut self) -> ControlResult<Vec<Event>> {
        let mut events = self.trace(0, None)?;
        events.retain(|e| e.violation().is_some());
        Ok(events)
    }

    /// Arms (or clears) faults; what is armed afterwards.
    pub fn fault(&mut self, fault: Fault) -> ControlResult<ArmedFaults> {
        self.request(&Request::Fault(fault))
    }

    /// Turns this connection into an event stream: the reply, then
    /// [`ControlClient::next_event`] for each event.
    pub fn subscribe(&mut self) -> ControlResult<Subscribed> {
        self.request(&Request::Subscribe)
    }

    /// The next event of a subscribed connection; `None` when the daemon
    /// closed it.
    pub fn next_event(&mut self) -> ControlResult<Option<Event>> {
        match self.read_line()? {
            None => Ok(None),
            Some(line) => decode(&line).map(Some),
        }
    }

    /// Sends `request` and decodes its reply as `T`; `"ok": false` is
    /// [`ControlError::Refused`].
    pub fn request<T: DeserializeOwned>(&mut self, request: &Request) -> ControlResult<T> {
        let line = serde_json::to_string(request).map_err(|e| ControlError::BadReply {
            line: String::new(),
            error: e.to_string(),
        })?;
        let reply = self.send_line(&line)?.ok_or(ControlError::Closed)?;
        if reply.get("ok") != Some(&Value::Bool(true)) {
            let error = reply
                .get("error")
                .and_then(Value::as_str)
                .map_or_else(|| reply.to_string(), str::to_string);
            return Err(ControlError::Refused {
                request: line,
                error,
            });
        }
        serde_json::from_value(reply.clone()).map_err(|e| ControlError::BadReply {
            line: reply.to_string(),
            error: e.to_string(),
        })
    }

    /// Sends `line` as it is (one request line, or anything a test wants
    /// the daemon to refuse) and returns the reply line, parsed but not
    /// judged; `None` when the daemon closed the connection instead.
    pub fn send_line(&mut self, line: &str) -> ControlResult<Option<Value>> {
        writeln!(self.writer, "{line}")?;
        match self.read_line()? {
            None => Ok(None),
            Some(reply) => decode(&reply).map(Some),
        }
    }

    /// The next line from the daemon, `None` at the end of the stream.
    fn read_line(&mut self) -> ControlResult<Option<String>> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(line))
    }
}

fn decode<T: DeserializeOwned>(line: &str) -> ControlResult<T> {
    serde_json::from_str(line).map_err(|e| ControlError::BadReply {
        line: line.trim_end().to_string(),
        error: e.to_string(),
    })
}
