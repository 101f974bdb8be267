//! Input validation as Cloud Map's API model and documentation define it. Each check names the
//! member it rejects, so a client sees which field to fix.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::error::{RegistryError, Result};
use super::shapes::Tag;

/// AWS's documented limits that are not quotas.
pub const MAX_CUSTOM_ATTRIBUTES: usize = 30;
pub const MAX_ATTRIBUTES_TOTAL_CHARS: usize = 5000;
pub const MAX_TAGS_PER_RESOURCE: usize = 50;
pub const MAX_SERVICE_ATTRIBUTES: usize = 30;

/// Attributes with meaning to Cloud Map; any other `AWS_` key is reserved and rejected.
pub const RESERVED_ATTRIBUTES: &[&str] = &[
    "AWS_ALIAS_DNS_NAME",
    "AWS_EC2_INSTANCE_ID",
    "AWS_INIT_HEALTH_STATUS",
    "AWS_INSTANCE_CNAME",
    "AWS_INSTANCE_IPV4",
    "AWS_INSTANCE_IPV6",
    "AWS_INSTANCE_PORT",
];

pub fn required<'a, T>(value: &'a Option<T>, field: &str) -> Result<&'a T> {
    value.as_ref().ok_or_else(|| RegistryError::invalid(format!("{field} is required")))
}

pub fn max_len(value: &str, max: usize, field: &str) -> Result<()> {
    if value.chars().count() > max {
        return Err(RegistryError::invalid(format!("{field} must be at most {max} characters long")));
    }
    Ok(())
}

fn printable(c: char) -> bool {
    ('!'..='~').contains(&c)
}

pub fn optional_max_len(value: &Option<String>, max: usize, field: &str) -> Result<()> {
    value.as_deref().map_or(Ok(()), |v| max_len(v, max, field))
}

/// `^(?!arn:)[!-~]{1,max}$`: HTTP and private DNS namespace names.
pub fn namespace_name(name: &str, max: usize, field: &str) -> Result<()> {
    if name.is_empty() || name.chars().count() > max || !name.chars().all(printable) {
        return Err(RegistryError::invalid(format!(
            "{field} must be 1 to {max} printable ASCII characters without spaces"
        )));
    }
    if name.starts_with("arn:") {
        return Err(RegistryError::invalid(format!("{field} must not start with 'arn:'")));
    }
    Ok(())
}

/// A private DNS namespace name: the pattern above, and a domain name Route 53 can host.
pub fn private_dns_name(name: &str) -> Result<()> {
    namespace_name(name, 253, "Name")?;
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.split('.').any(|l| l.is_empty() || l.len() > 63) {
        return Err(RegistryError::invalid(
            "Name must be a domain name: labels of 1 to 63 characters separated by dots",
        ));
    }
    Ok(())
}

/// Public DNS namespace names: `^([a-zA-Z0-9]([a-zA-Z0-9\-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z0-9]([a-zA-Z0-9\-]{0,61}[a-zA-Z0-9])?$`
pub fn public_dns_name(name: &str) -> Result<()> {
    let hostname_label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
    };
    let labels: Vec<&str> = name.split('.').collect();
    if name.len() > 253 || labels.len() < 2 || !labels.iter().all(|l| hostname_label(l)) {
        return Err(RegistryError::invalid(
            "Name must be a domain name of at least two labels of letters, digits and hyphens",
        ));
    }
    Ok(())
}

/// Service names: labels of `[A-Za-z0-9_-]` (no leading or trailing hyphen; a one-character label
/// is alphanumeric), dot-separated, at most 127 characters; or the single name `.`.
pub fn service_name(name: &str, field: &str) -> Result<()> {
    if name == "." {
        return Ok(());
    }
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        match b.len() {
            0 => false,
            1 => b[0].is_ascii_alphanumeric(),
            n if n <= 63 => {
                let edge = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
                edge(b[0])
                    && edge(b[n - 1])
                    && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
            }
            _ => false,
        }
    };
    if name.is_empty() || name.len() > 127 || !name.split('.').all(label_ok) {
        return Err(RegistryError::invalid(format!(
            "{field} must be 1 to 127 characters: dot-separated labels of letters, digits, '_' and '-' (not at either end of a label)"
        )));
    }
    Ok(())
}

/// `^[0-9a-zA-Z_/:.@-]+$`, at most 64 characters.
pub fn instance_id(id: &str) -> Result<()> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "_/:.@-".contains(c);
    if id.is_empty() || id.len() > 64 || !id.chars().all(ok) {
        return Err(RegistryError::invalid(
            "InstanceId must be 1 to 64 characters of letters, digits and _/:.@-",
        ));
    }
    Ok(())
}

pub fn attribute_key(key: &str, field: &str) -> Result<()> {
    if key.is_empty() || key.len() > 255 || !key.chars().all(printable) {
        return Err(RegistryError::invalid(format!(
            "{field} key '{key}' must be 1 to 255 printable ASCII characters without spaces"
        )));
    }
    Ok(())
}

/// `^([!-~][ \t!-~]*)?[!-~]?$`, at most 1,024 characters: no leading white space.
pub fn attribute_value(key: &str, value: &str, field: &str) -> Result<()> {
    let mut chars = value.chars();
    let first_ok = chars.next().is_none_or(printable);
    let rest_ok = chars.all(|c| printable(c) || c == ' ' || c == '\t');
    if value.len() > 1024 || !first_ok || !rest_ok {
        return Err(RegistryError::invalid(format!(
            "{field} value of '{key}' must be at most 1024 printable ASCII characters, not starting with white space"
        )));
    }
    Ok(())
}

pub fn attribute_map(attrs: &BTreeMap<String, String>, field: &str) -> Result<()> {
    for (k, v) in attrs {
        attribute_key(k, field)?;
        attribute_value(k, v, field)?;
    }
    Ok(())
}

pub fn ipv4(value: &str) -> Result<()> {
    value
        .parse::<Ipv4Addr>()
        .map(|_| ())
        .map_err(|_| RegistryError::invalid(format!("AWS_INSTANCE_IPV4 '{value}' is not an IPv4 address")))
}

pub fn ipv6(value: &str) -> Result<()> {
    value
        .parse::<Ipv6Addr>()
        .map(|_| ())
        .map_err(|_| RegistryError::invalid(format!("AWS_INSTANCE_IPV6 '{value}' is not an IPv6 address")))
}

pub fn port(value: &str) -> Result<()> {
    match value.parse::<u16>() {
        Ok(p) if p > 0 && !value.starts_with('+') => Ok(()),
        _ => Err(RegistryError::invalid(format!(
            "AWS_INSTANCE_PORT '{value}' must be an integer from 1 to 65535"
        ))),
    }
}

pub fn ttl(value: Option<i64>, field: &str) -> Result<i64> {
    match value {
        None => Err(RegistryError::invalid(format!("{field} is required"))),
        Some(t) if (0..=2_147_483_647).contains(&t) => Ok(t),
        Some(_) => Err(RegistryError::invalid(format!("{field} must be from 0 to 2147483647"))),
    }
}

/// Tags in a create or TagResource call: 1-128 character keys, 0-256 character values, at most 200,
/// and no keys in AWS's reserved `aws:` prefix.
pub fn tags(tags: &[Tag]) -> Result<Vec<(String, String)>> {
    if tags.len() > 200 {
        return Err(RegistryError::invalid("Tags must hold at most 200 tags"));
    }
    let mut out = Vec::with_capacity(tags.len());
    for tag in tags {
        let key = required(&tag.key, "Tags.Key")?;
        let value = required(&tag.value, "Tags.Value")?;
        if key.is_empty() || key.chars().count() > 128 {
            return Err(RegistryError::invalid("Tags.Key must be 1 to 128 characters long"));
        }
        if key.to_ascii_lowercase().starts_with("aws:") {
            return Err(RegistryError::invalid(format!("Tags.Key '{key}' uses the reserved prefix 'aws:'")));
        }
        max_len(value, 256, "Tags.Value")?;
        out.push((key.clone(), value.clone()));
    }
    Ok(out)
}

pub fn max_results(value: Option<i64>, max: i64, default: i64) -> Result<usize> {
    match value {
        None => Ok(default as usize),
        Some(n) if (1..=max).contains(&n) => Ok(n as usize),
        Some(_) => Err(RegistryError::invalid(format!("MaxResults must be from 1 to {max}"))),
    }
}

pub fn owner_account(value: &Option<String>, ours: &str) -> Result<()> {
    match value.as_deref() {
        None => Ok(()),
        Some(a) if a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()) => {
            Err(RegistryError::invalid("OwnerAccount must be a 12-digit AWS account id"))
        }
        Some(a) if a != ours => Err(RegistryError::NamespaceNotFound(format!(
            "No namespace is shared with this account by account {a}"
        ))),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names() {
        for ok in ["orders", "_sip._tcp", "a.b", "a", "x_y-z", "_a", "."] {
            assert!(service_name(ok, "Name").is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a..b", "_", "a b", &"a".repeat(128), &"a".repeat(64)] {
            assert!(service_name(bad, "Name").is_err(), "{bad}");
        }
    }

    #[test]
    fn attribute_values() {
        assert!(attribute_value("k", "", "Attributes").is_ok());
        assert!(attribute_value("k", "a b\tc ", "Attributes").is_ok());
        assert!(attribute_value("k", " a", "Attributes").is_err());
        assert!(attribute_value("k", "é", "Attributes").is_err());
        assert!(attribute_value("k", &"v".repeat(1025), "Attributes").is_err());
        assert!(attribute_key("a b", "Attributes").is_err());
    }

    #[test]
    fn addresses_and_ports() {
        assert!(ipv4("10.0.0.1").is_ok());
        assert!(ipv4("10.0.0.256").is_err());
        assert!(ipv6("2001:db8::1").is_ok());
        assert!(ipv6("10.0.0.1").is_err());
        assert!(port("8080").is_ok());
        for bad in ["0", "65536", "-1", "+80", "http"] {
            assert!(port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn namespace_names() {
        assert!(namespace_name("my-ns", 1024, "Name").is_ok());
        assert!(namespace_name("arn:aws:x", 1024, "Name").is_err());
        assert!(namespace_name("a b", 1024, "Name").is_err());
        assert!(public_dns_name("example.com").is_ok());
        assert!(public_dns_name("example").is_err());
        assert!(public_dns_name("-a.com").is_err());
        assert!(private_dns_name("corp.internal").is_ok());
        assert!(private_dns_name("a..b").is_err());
    }

    #[test]
    fn reserved_tag_prefix() {
        let t = |k: &str| Tag { key: Some(k.into()), value: Some("v".into()) };
        assert!(tags(&[t("team")]).is_ok());
        assert!(tags(&[t("aws:cloudformation")]).is_err());
    }
}
