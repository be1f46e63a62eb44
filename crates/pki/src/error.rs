//! Errors of the PKI crate.

use std::path::PathBuf;

/// Everything that can go wrong while creating, loading or using the cluster PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Certificate lifetimes that contradict each other.
    #[error("invalid certificate lifetimes: {0}")]
    InvalidValidity(String),
    /// A file or directory operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// rcgen refused to build or sign a certificate or key.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A certificate could not be parsed or is not usable.
    #[error("{what}: invalid certificate: {reason}")]
    InvalidCertificate {
        /// Which certificate (file name or role).
        what: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A private key could not be parsed or does not match its certificate.
    #[error("{what}: invalid private key: {reason}")]
    InvalidKey {
        /// Which key (file name or role).
        what: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A subject alternative name is neither an IP address nor a valid DNS name.
    #[error("invalid subject alternative name {name:?}: {reason}")]
    InvalidSan {
        /// The name as given.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A token is malformed.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The `--token` given differs from the token the cluster was created with.
    #[error(
        "the given token does not match the server token stored in {}: this cluster was \
         created with a different token; start the server with the original token (or \
         remove the file to rotate it, restarting every node with the new one)",
        path.display()
    )]
    TokenMismatch {
        /// The stored token file.
        path: PathBuf,
    },
    /// A full (`K10…`) token names a CA hash that is not the hash of the cluster CA.
    #[error("token CA hash {token_hash} does not match the cluster CA certificate hash {ca_hash}")]
    TokenCaHashMismatch {
        /// The hash in the token.
        token_hash: String,
        /// The hash of the cluster CA certificate.
        ca_hash: String,
    },
    /// Only one of the CA certificate and the CA key exists on disk.
    #[error(
        "incomplete cluster CA: {} exists but {} is missing; restore it or remove both to \
         create a new CA",
        present.display(),
        missing.display()
    )]
    IncompleteCa {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// A client certificate has no Common Name, so it names no user.
    #[error("client certificate has no common name")]
    NoCommonName,
    /// YAML (de)serialization failed.
    #[error("yaml: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// New CA material cannot replace the current CA (see `check_ca_rotation`).
    #[error("CA rotation refused: {0}")]
    CaRotation(String),
    /// A date is out of the range certificates can express.
    #[error("certificate date out of range")]
    DateOutOfRange,
}

impl PkiError {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PkiError::Io {
            path: path.into(),
            source,
        }
    }
}
