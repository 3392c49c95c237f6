//! Error -> `tonic::Status`, in one place. Internal errors are logged in full and sent as a generic
//! message, so a client never sees database details.

use reskflow_proto::invalid::{Invalid, NO_HEALTHY_INSTANCE};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::error;

use crate::registry::RegistryError;

impl From<RegistryError> for Status {
    fn from(err: RegistryError) -> Self {
        match err {
            RegistryError::Invalid(invalid) => invalid.into(),
            RegistryError::NotFound { kind, id } => Status::not_found(format!("{kind} {id} not found")),
            RegistryError::Conflict(msg) => Status::already_exists(msg),
            RegistryError::FailedPrecondition(msg) => Status::failed_precondition(msg),
            RegistryError::NoInstance { service_id, why } => {
                let details = ErrorDetails::with_error_info(
                    NO_HEALTHY_INSTANCE,
                    "reskflow",
                    [("serviceId".to_string(), service_id.clone())],
                );
                Status::with_error_details(
                    Code::Unavailable,
                    format!("no instance of {service_id} available: {why}"),
                    details,
                )
            }
            RegistryError::Unavailable(msg) => Status::unavailable(msg),
            RegistryError::Store(err) => {
                error!(error = %err, "store error");
                Status::internal("internal error (logged by the control plane)")
            }
        }
    }
}

/// A required sub-message was missing: INVALID_ARGUMENT naming it.
pub fn missing(field: &str) -> Status {
    Invalid::one(field, "is required").into()
}

/// An id path parameter: INVALID_ARGUMENT unless it is a well-formed id.
pub fn check_id(field: &str, id: &str) -> Result<(), Status> {
    if reskflow_proto::registry::is_valid_id(id) {
        Ok(())
    } else if id.is_empty() {
        Err(missing(field))
    } else {
        Err(Invalid::one(field, "is not a valid id").into())
    }
}
