//! Errors of the supervisor (server side) and of joining (agent side).

/// Why the server could not answer a supervisor request; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// No or wrong credentials (401).
    #[error("Unauthorized")]
    Unauthorized,
    /// The caller may not do this (403), e.g. a node password that does not match.
    #[error("{0}")]
    Forbidden(String),
    /// The request is malformed (400): missing headers, a bad CSR, a bad IP.
    #[error("{0}")]
    BadRequest(String),
    /// No such supervisor path (404).
    #[error("404 page not found")]
    NotFound,
    /// The Kubernetes API could not be reached or answered an error (503: retry).
    #[error("{0}")]
    Unavailable(String),
    /// Signing failed (500).
    #[error("{0}")]
    Internal(String),
}

impl SupervisorError {
    /// The HTTP status of this answer.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            SupervisorError::Unauthorized => S::UNAUTHORIZED,
            SupervisorError::Forbidden(_) => S::FORBIDDEN,
            SupervisorError::BadRequest(_) => S::BAD_REQUEST,
            SupervisorError::NotFound => S::NOT_FOUND,
            SupervisorError::Unavailable(_) => S::SERVICE_UNAVAILABLE,
            SupervisorError::Internal(_) => S::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Why an agent could not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The `--server` value is not an `https://host[:port]` URL.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidServerUrl {
        /// What was given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The token could not be parsed.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The server's CA does not hash to the token's CA hash: another cluster, or a
    /// machine in the middle.
    #[error(
        "the CA certificate of {server} does not match the token: the token pins CA hash \
         {expected} but the server's CA hashes to {actual}; use the token of this \
         cluster (the server's <data-dir>/server/token)"
    )]
    CaHashMismatch {
        /// The server URL.
        server: String,
        /// The hash in the token.
        expected: String,
        /// The hash of the CA the server sent.
        actual: String,
    },
    /// The server refused the token (401).
    #[error("the server {server} refused the token (401 Unauthorized): check --token")]
    Unauthorized {
        /// The server URL.
        server: String,
    },
    /// The server refused this node's password for its name (403).
    #[error(
        "node password rejected for node {node:?}: {message}. Another machine already \
         joined with this name, or this node's password file ({password_file}) changed. \
         Give this machine a unique name (--node-name, or --with-node-id to append a \
         random id), or, if the node was rebuilt, delete the Secret \
         kube-system/{node}.node-password.rk3s on the server"
    )]
    NodePasswordRejected {
        /// The node name.
        node: String,
        /// The server's message.
        message: String,
        /// The local password file.
        password_file: String,
    },
    /// Another HTTP answer than expected.
    #[error("{what}: the server answered {status}: {body}")]
    Http {
        /// The request.
        what: String,
        /// The status code.
        status: u16,
        /// The body (truncated).
        body: String,
    },
    /// Connecting, TLS or HTTP failed.
    #[error("{what}: {reason}")]
    Transport {
        /// The request.
        what: String,
        /// The failure.
        reason: String,
    },
    /// A certificate or key operation failed.
    #[error("certificates: {0}")]
    Pki(#[from] rk3s_pki::PkiError),
    /// Reading or writing a local file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The failure.
        source: std::io::Error,
    },
    /// An answer could not be decoded.
    #[error("{what}: cannot decode the answer: {reason}")]
    Decode {
        /// The request.
        what: String,
        /// The failure.
        reason: String,
    },
}
