//! The runner library's error type.

use std::time::Duration;

use chaos_proto::{ApiError, ErrorKind};

/// Result alias of the runner library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong driving a cluster. Every variant names the node (or backend)
/// involved, so a message alone tells the user where to look.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node refused or failed an operation (missing file, missing command, bad request…).
    #[error("node {node}: {error}")]
    Api {
        /// Node name.
        node: String,
        /// What the node said. Part of this error's message, so not also its `source()`.
        error: ApiError,
    },
    /// The node's agent could not be reached.
    #[error("node {node}: cannot reach agent at {addr}: {cause}")]
    Unreachable {
        /// Node name.
        node: String,
        /// Address dialled.
        addr: String,
        /// Why (connection refused, TLS rejected, timed out…).
        cause: String,
    },
    /// An operation did not finish within its bound.
    #[error("node {node}: {what} did not finish within {after:?}")]
    Timeout {
        /// Node name.
        node: String,
        /// The operation.
        what: String,
        /// The bound that expired.
        after: Duration,
    },
    /// The agent answered something the runner did not expect.
    #[error("node {node}: protocol error: {message}")]
    Protocol {
        /// Node name.
        node: String,
        /// What was unexpected.
        message: String,
    },
    /// A local I/O operation failed.
    #[error("{context}: {cause}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error. Part of this error's message, so not also its `source()`.
        cause: std::io::Error,
    },
    /// Certificates could not be minted or loaded.
    #[error(transparent)]
    Certs(#[from] crate::certs::CertError),
    /// The runner refused a request before asking any node: an unknown node name, a partition
    /// shape the cluster cannot form, a value out of range.
    #[error("{what}: {message}")]
    Invalid {
        /// What was being asked (`"partition majorities-ring"`, `"fault on n2: peers"`…).
        what: String,
        /// What is wrong and what would be accepted.
        message: String,
    },
    /// The backend cannot work here (missing privilege, binary or kernel feature) or failed.
    #[error("{backend} backend: {message}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// What is wrong and what to do about it.
        message: String,
    },
}

impl Error {
    /// The agent-side error kind, when the error came from a node's answer.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Error::Api { error, .. } => Some(error.kind),
            _ => None,
        }
    }

    /// True when a file, directory or process was not found on the node.
    pub fn is_not_found(&self) -> bool {
        self.kind() == Some(ErrorKind::NotFound)
    }

    /// Shorthand for an [`Error::Api`].
    pub fn api(node: impl Into<String>, kind: ErrorKind, message: impl Into<String>) -> Self {
        Error::Api {
            node: node.into(),
            error: ApiError::new(kind, message),
        }
    }

    /// Shorthand for an [`Error::Io`].
    pub fn io(context: impl Into<String>, cause: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            cause,
        }
    }

    /// Shorthand for an [`Error::Invalid`].
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            message: message.into(),
        }
    }

    /// Shorthand for an [`Error::Backend`].
    pub fn backend(backend: &'static str, message: impl Into<String>) -> Self {
        Error::Backend {
            backend,
            message: message.into(),
        }
    }
}
