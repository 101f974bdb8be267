//! Identifiers in AWS's formats: `ns-` and `srv-` ids, operation ids, hosted-zone ids, ARNs, and the
//! resolution of an `Id` member that may hold either an id or an ARN (shared namespaces).

use rand::Rng;

use super::error::{RegistryError, Result};

const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const UPPER_ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

fn random_chars(alphabet: &[u8], n: usize) -> String {
    let mut rng = rand::rng();
    (0..n).map(|_| alphabet[rng.random_range(0..alphabet.len())] as char).collect()
}

/// `ns-ylexjili4cdxy3xm`
pub fn namespace_id() -> String {
    format!("ns-{}", random_chars(LOWER_ALNUM, 16))
}

/// `srv-p5zdwlg5uvvzjita`
pub fn service_id() -> String {
    format!("srv-{}", random_chars(LOWER_ALNUM, 16))
}

/// `gv4g5meo7ndmeh4fqskygvk23d2fijwa-k9302yzd`
pub fn operation_id() -> String {
    format!("{}-{}", random_chars(LOWER_ALNUM, 32), random_chars(LOWER_ALNUM, 8))
}

/// Route 53 hosted-zone ids: `Z` and 20 upper-case alphanumerics.
pub fn hosted_zone_id() -> String {
    format!("Z{}", random_chars(UPPER_ALNUM, 20))
}

/// The partition, region and account this registry answers as.
#[derive(Debug, Clone)]
pub struct Identity {
    pub partition: String,
    pub region: String,
    pub account: String,
}

impl Identity {
    pub fn arn(&self, kind: &str, id: &str) -> String {
        format!("arn:{}:servicediscovery:{}:{}:{kind}/{id}", self.partition, self.region, self.account)
    }

    /// Resolves an `Id`/`ServiceId`/`NamespaceId` member that is an id or an ARN of ours. An ARN of
    /// another region, account or resource type names nothing here, so it is reported as not found
    /// by the caller (`None`), as AWS does for a resource it does not hold.
    pub fn resolve<'a>(&self, kind: &str, id_or_arn: &'a str) -> Option<&'a str> {
        if !id_or_arn.starts_with("arn:") {
            return Some(id_or_arn);
        }
        let prefix = self.arn(kind, "");
        id_or_arn.strip_prefix(prefix.as_str()).filter(|id| !id.is_empty())
    }

    /// What a tagging call's `ResourceARN` names: `("namespace" | "service", id)`.
    pub fn parse_resource_arn<'a>(&self, arn: &'a str) -> Result<(&'static str, &'a str)> {
        for kind in ["namespace", "service"] {
            if let Some(id) = self.resolve(kind, arn).filter(|_| arn.starts_with("arn:")) {
                return Ok((kind, id));
            }
        }
        if arn.starts_with("arn:") && arn.split(':').count() >= 6 {
            return Err(RegistryError::ResourceNotFound(format!("Resource not found: {arn}")));
        }
        Err(RegistryError::invalid(format!("ResourceARN is not a valid ARN: {arn}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity { partition: "aws".into(), region: "us-east-1".into(), account: "123456789012".into() }
    }

    #[test]
    fn ids_look_like_aws() {
        let ns = namespace_id();
        assert!(ns.starts_with("ns-") && ns.len() == 19, "{ns}");
        let op = operation_id();
        assert_eq!(op.len(), 41);
        assert_eq!(op.as_bytes()[32], b'-');
    }

    #[test]
    fn resolves_ids_and_arns() {
        let id = identity();
        assert_eq!(id.resolve("service", "srv-abc"), Some("srv-abc"));
        let arn = id.arn("service", "srv-abc");
        assert_eq!(arn, "arn:aws:servicediscovery:us-east-1:123456789012:service/srv-abc");
        assert_eq!(id.resolve("service", &arn), Some("srv-abc"));
        assert_eq!(id.resolve("namespace", &arn), None);
        assert_eq!(
            id.resolve("service", "arn:aws:servicediscovery:eu-west-1:123456789012:service/srv-abc"),
            None
        );
        assert_eq!(id.parse_resource_arn(&arn).unwrap(), ("service", "srv-abc"));
        assert!(matches!(id.parse_resource_arn("nope"), Err(RegistryError::InvalidInput(_))));
    }
}
