//! One error type for everything the tool does: a message plus, when a syscall
//! failed, its errno. The agent turns it into `{"ok":false,"error":..,"errno":..}`.

use std::fmt;

use nix::errno::Errno;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub message: String,
    /// Positive errno when a syscall/ioctl failed; `None` for usage/protocol errors.
    pub errno: Option<i32>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A usage / protocol / validation error (no errno).
    pub fn msg(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            errno: None,
        }
    }

    /// A failed syscall: `"<what>: <ERRNO>: <description>"`.
    pub fn sys(what: impl fmt::Display, errno: Errno) -> Self {
        Error {
            message: format!("{what}: {errno:?}: {}", errno.desc()),
            errno: Some(errno as i32),
        }
    }

    /// An error carrying a chosen errno with a custom message.
    pub fn with_errno(message: impl Into<String>, errno: Errno) -> Self {
        Error {
            message: message.into(),
            errno: Some(errno as i32),
        }
    }

    /// From a `std::io::Error` (keeps the raw OS error as errno if there is one).
    pub fn io(what: impl fmt::Display, err: &std::io::Error) -> Self {
        Error {
            message: format!("{what}: {err}"),
            errno: err.raw_os_error(),
        }
    }

    /// Prefix the message with more context.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errno {
            Some(e) => write!(f, "{} (errno {e})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Error {}
