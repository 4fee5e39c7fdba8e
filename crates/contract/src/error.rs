use hodei_domain::{IdParseError, JobSpecError};

/// A message that does not satisfy the contract. Every variant reads as a sentence for the
/// person (or program) that sent the message; the gRPC edge answers them `INVALID_ARGUMENT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error(transparent)]
    InvalidId(#[from] IdParseError),
    #[error("invalid job spec: {0}")]
    InvalidSpec(#[from] JobSpecError),
    #[error("unknown {what} {value}")]
    UnknownEnum { what: &'static str, value: i32 },
    #[error("invalid assignment: {0}")]
    InvalidAssignment(String),
}
