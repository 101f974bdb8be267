//! The registry's error boundary: every way a Cloud Map call can fail, each mapped to the `__type`
//! code and message shape that AWS Cloud Map returns, so SDKs raise the same typed errors.

use serde_json::{Map, Value, json};

/// An error returned by a registry operation. The variant names are AWS's `__type` codes.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    InvalidInput(String),
    #[error("{message}")]
    NamespaceAlreadyExists { message: String, creator_request_id: Option<String>, namespace_id: String },
    #[error("{0}")]
    NamespaceNotFound(String),
    #[error("{message}")]
    ServiceAlreadyExists {
        message: String,
        creator_request_id: Option<String>,
        service_id: String,
        service_arn: String,
    },
    #[error("{0}")]
    ServiceNotFound(String),
    #[error("{0}")]
    InstanceNotFound(String),
    #[error("{0}")]
    OperationNotFound(String),
    #[error("{0}")]
    ResourceInUse(String),
    #[error("{0}")]
    ResourceLimitExceeded(String),
    #[error("{0}")]
    CustomHealthNotFound(String),
    #[error("{message}")]
    DuplicateRequest { message: String, duplicate_operation_id: String },
    #[error("{0}")]
    ResourceNotFound(String),
    #[error("{message}")]
    TooManyTags { message: String, resource_name: String },
    #[error("{0}")]
    ServiceAttributesLimitExceeded(String),
    /// The request body is not the JSON the operation's shape requires.
    #[error("{0}")]
    Serialization(String),
    /// The X-Amz-Target names no Cloud Map operation.
    #[error("{0}")]
    UnknownOperation(String),
    /// The durable store failed; nothing was acknowledged.
    #[error("internal storage error: {0}")]
    Storage(#[from] rusqlite::Error),
    /// A failure of our own that is not the store's (a registry task that died).
    #[error("internal error: {0}")]
    Internal(String),
}

impl RegistryError {
    pub fn invalid(message: impl Into<String>) -> Self {
        RegistryError::InvalidInput(message.into())
    }

    /// AWS's `__type` code.
    pub fn code(&self) -> &'static str {
        match self {
            RegistryError::InvalidInput(_) => "InvalidInput",
            RegistryError::NamespaceAlreadyExists { .. } => "NamespaceAlreadyExists",
            RegistryError::NamespaceNotFound(_) => "NamespaceNotFound",
            RegistryError::ServiceAlreadyExists { .. } => "ServiceAlreadyExists",
            RegistryError::ServiceNotFound(_) => "ServiceNotFound",
            RegistryError::InstanceNotFound(_) => "InstanceNotFound",
            RegistryError::OperationNotFound(_) => "OperationNotFound",
            RegistryError::ResourceInUse(_) => "ResourceInUse",
            RegistryError::ResourceLimitExceeded(_) => "ResourceLimitExceeded",
            RegistryError::CustomHealthNotFound(_) => "CustomHealthNotFound",
            RegistryError::DuplicateRequest { .. } => "DuplicateRequest",
            RegistryError::ResourceNotFound(_) => "ResourceNotFoundException",
            RegistryError::TooManyTags { .. } => "TooManyTagsException",
            RegistryError::ServiceAttributesLimitExceeded(_) => "ServiceAttributesLimitExceededException",
            RegistryError::Serialization(_) => "SerializationException",
            RegistryError::UnknownOperation(_) => "UnknownOperationException",
            RegistryError::Storage(_) | RegistryError::Internal(_) => "InternalFailure",
        }
    }

    /// HTTP status AWS uses for this error: client errors are 400, our own failures 500.
    pub fn http_status(&self) -> u16 {
        match self {
            RegistryError::Storage(_) | RegistryError::Internal(_) => 500,
            _ => 400,
        }
    }

    /// The JSON 1.1 error body: `__type`, `Message`, and the error's modelled members.
    pub fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("__type".into(), json!(self.code()));
        body.insert("Message".into(), json!(self.to_string()));
        match self {
            RegistryError::NamespaceAlreadyExists { creator_request_id, namespace_id, .. } => {
                body.insert("NamespaceId".into(), json!(namespace_id));
                if let Some(crid) = creator_request_id {
                    body.insert("CreatorRequestId".into(), json!(crid));
                }
            }
            RegistryError::ServiceAlreadyExists { creator_request_id, service_id, service_arn, .. } => {
                body.insert("ServiceId".into(), json!(service_id));
                body.insert("ServiceArn".into(), json!(service_arn));
                if let Some(crid) = creator_request_id {
                    body.insert("CreatorRequestId".into(), json!(crid));
                }
            }
            RegistryError::DuplicateRequest { duplicate_operation_id, .. } => {
                body.insert("DuplicateOperationId".into(), json!(duplicate_operation_id));
            }
            RegistryError::TooManyTags { resource_name, .. } => {
                body.insert("ResourceName".into(), json!(resource_name));
            }
            _ => {}
        }
        Value::Object(body)
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
