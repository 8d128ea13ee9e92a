//! Errors a provider returns across the boundary.

use abi_stable::std_types::RString;
use abi_stable::StableAbi;
use core::fmt;

/// What kind of failure a [`ProviderError`] is.
///
/// A `u32` newtype rather than an enum so that a newer provider may return kinds an older
/// host does not know yet; those show as `unknown(N)`.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorKind(pub u32);

impl ErrorKind {
    /// The provider's config or init params were wrong.
    pub const INVALID_CONFIG: Self = Self(1);
    /// The provider does not implement this op (e.g. `fill` on host-writable memory).
    pub const UNSUPPORTED: Self = Self(2);
    /// The system refused memory or another resource the provider needed.
    pub const RESOURCE: Self = Self(3);
    /// The host handed back a buffer the provider does not recognise.
    pub const BAD_BUFFER: Self = Self(4);
    /// The provider panicked; the panic was caught on the plugin side.
    pub const PANICKED: Self = Self(5);
    /// The provider panicked earlier and refuses further calls.
    pub const POISONED: Self = Self(6);
    /// Any other failure inside the provider.
    pub const INTERNAL: Self = Self(7);
    /// The provider broke its sandbox or the contract (a WASM trap, a deadline, an
    /// out-of-bounds descriptor); it takes no more calls.
    pub const FAULTED: Self = Self(8);

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::INVALID_CONFIG => "invalid config",
            Self::UNSUPPORTED => "unsupported",
            Self::RESOURCE => "out of resources",
            Self::BAD_BUFFER => "bad buffer",
            Self::PANICKED => "panicked",
            Self::POISONED => "poisoned by an earlier panic",
            Self::INTERNAL => "internal error",
            Self::FAULTED => "faulted",
            _ => "unknown",
        }
    }
}

impl fmt::Debug for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            "unknown" => write!(f, "unknown({})", self.0),
            name => f.write_str(name),
        }
    }
}

/// An error returned by a provider op, FFI-safe.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq)]
pub struct ProviderError {
    /// What went wrong, broadly.
    pub kind: ErrorKind,
    /// What went wrong, in words.
    pub message: RString,
}

impl ProviderError {
    /// Makes an error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ProviderError {
            kind,
            message: RString::from(message.into()),
        }
    }

    /// The config or params were wrong.
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::INVALID_CONFIG, message)
    }

    /// The op is not implemented by this provider.
    pub fn unsupported(op: &str) -> Self {
        Self::new(
            ErrorKind::UNSUPPORTED,
            format!("this provider does not implement `{op}`"),
        )
    }

    /// The system refused a resource.
    pub fn resource(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::RESOURCE, message)
    }

    /// A buffer handed back is not this provider's.
    pub fn bad_buffer(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BAD_BUFFER, message)
    }

    /// Any other failure.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::INTERNAL, message)
    }

    /// True for the kinds after which the provider must not be called again.
    pub fn is_fatal(&self) -> bool {
        self.kind == ErrorKind::PANICKED
            || self.kind == ErrorKind::POISONED
            || self.kind == ErrorKind::FAULTED
    }
}

impl fmt::Debug for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProviderError({:?}: {})", self.kind, self.message)
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.message)
    }
}

impl std::error::Error for ProviderError {}
