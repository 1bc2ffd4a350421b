//! The crate's error type.

/// What can go wrong while setting up telemetry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// A metric family could not be created or registered.
    #[error("metrics: {0}")]
    Metrics(String),
    /// The tracing pipeline could not be built or installed (e.g. a global subscriber is
    /// already set).
    #[error("tracing setup: {0}")]
    Tracing(String),
    /// The configuration is invalid.
    #[error("invalid telemetry configuration: {0}")]
    Config(String),
    /// The admin server was asked to listen on a non-loopback address without a bearer token
    /// (anyone who can reach the address could read it).
    #[error(
        "admin server: {addr} is not a loopback address, so a bearer token is required \
         (set one, e.g. with STRATA_ADMIN_TOKEN, or listen on 127.0.0.1)"
    )]
    AdminTokenRequired {
        /// The address it was asked to listen on.
        addr: std::net::SocketAddr,
    },
    /// The admin server could not bind or serve.
    #[error("admin server: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(feature = "prometheus")]
impl From<prometheus::Error> for TelemetryError {
    fn from(e: prometheus::Error) -> Self {
        Self::Metrics(e.to_string())
    }
}
