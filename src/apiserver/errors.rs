//! The API server's errors and their one mapping to gRPC statuses, following how Kubernetes
//! maps them to HTTP: NotFound, AlreadyExists, Conflict (Aborted), Invalid and BadRequest
//! (InvalidArgument), Forbidden and Fenced (FailedPrecondition), Expired (OutOfRange: the
//! resourceVersion is older than the store's history; re-list), Unavailable.

use tonic::{Code, Status};

use crate::api::fence::REASON_HEADER;
use crate::api::Object;
use crate::raft::ConsensusError;
use crate::store::ApplyError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Fenced(String),
    #[error("{0}")]
    Expired(String),
    #[error("{0}")]
    Unavailable(String),
    /// The store is out of space (etcd's NOSPACE alarm).
    #[error("{0}")]
    NoSpace(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn not_found<K: Object>(name: &str) -> Self {
        ApiError::NotFound(format!("{} {name:?} not found", resource_group::<K>()))
    }

    pub fn already_exists<K: Object>(name: &str) -> Self {
        ApiError::AlreadyExists(format!("{} {name:?} already exists", resource_group::<K>()))
    }

    pub fn conflict<K: Object>(name: &str) -> Self {
        ApiError::Conflict(format!(
            "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
            resource_group::<K>()
        ))
    }

    pub fn from_consensus(e: ConsensusError) -> Self {
        match e {
            ConsensusError::NoLeader | ConsensusError::Timeout | ConsensusError::Stopped => {
                ApiError::Unavailable(format!("the store cannot serve this now: {e}"))
            }
            other => ApiError::Unavailable(other.to_string()),
        }
    }

    pub fn from_apply(e: ApplyError) -> Self {
        match e {
            ApplyError::Compacted => ApiError::Expired("too old resource version".into()),
            ApplyError::FutureRevision => {
                ApiError::Unavailable("Too large resource version: the store has not reached it yet".into())
            }
            ApplyError::NoSpace => ApiError::NoSpace(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }

    /// Kubernetes' StatusReason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) => "NotFound",
            ApiError::AlreadyExists(_) => "AlreadyExists",
            ApiError::Conflict(_) => "Conflict",
            ApiError::Invalid(_) => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::Fenced(_) => "Fenced",
            ApiError::Expired(_) => "Expired",
            ApiError::Unavailable(_) => "ServiceUnavailable",
            ApiError::NoSpace(_) => "InsufficientStorage",
            ApiError::Internal(_) => "InternalError",
        }
    }
}

/// `pods`, `deployments.apps`, `leases.coordination.k8s.io`, as Kubernetes names a resource in
/// messages.
pub fn resource_group<K: Object>() -> String {
    match K::API_VERSION.rsplit_once('/') {
        Some((group, _)) => format!("{}.{group}", K::RESOURCE),
        None => K::RESOURCE.to_string(),
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let code = match &e {
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::AlreadyExists(_) => Code::AlreadyExists,
            ApiError::Conflict(_) => Code::Aborted,
            ApiError::Invalid(_) | ApiError::BadRequest(_) => Code::InvalidArgument,
            ApiError::Forbidden(_) | ApiError::Fenced(_) => Code::FailedPrecondition,
            ApiError::Expired(_) => Code::OutOfRange,
            ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::NoSpace(_) => Code::ResourceExhausted,
            ApiError::Internal(_) => Code::Internal,
        };
        if let ApiError::Internal(detail) = &e {
            tracing::error!(error = %detail, "internal error serving the object API");
        }
        let mut status = Status::new(code, e.to_string());
        if let Ok(v) = e.reason().parse() {
            status.metadata_mut().insert(REASON_HEADER, v);
        }
        status
    }
}
