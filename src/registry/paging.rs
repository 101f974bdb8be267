//! Pagination and list filters as Cloud Map documents them: a page is the next `MaxResults` items
//! in creation order, *then* filtered, so a page may hold fewer items than asked (even none) while
//! a `NextToken` says more remain. Clients written for AWS must loop on `NextToken`; this keeps
//! them honest against the embedded registry too.

use super::error::{RegistryError, Result};
use super::shapes::Filter;
use super::validate;

const TOKEN_PREFIX: &str = "cmv1.";

pub struct Page {
    /// Items with a sequence number greater than this come next.
    pub after: i64,
    pub limit: usize,
}

pub fn page(next_token: &Option<String>, max_results: Option<i64>, max: i64) -> Result<Page> {
    let limit = validate::max_results(max_results, max, 100)?;
    let after = match next_token.as_deref() {
        None | Some("") => 0,
        Some(token) => {
            decode(token).ok_or_else(|| RegistryError::invalid("NextToken is not a token this API issued"))?
        }
    };
    Ok(Page { after, limit })
}

pub fn encode(seq: i64) -> String {
    let hex: String = seq.to_be_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("{TOKEN_PREFIX}{hex}")
}

fn decode(token: &str) -> Option<i64> {
    let hex = token.strip_prefix(TOKEN_PREFIX)?;
    if hex.len() != 16 {
        return None;
    }
    let bytes = u64::from_str_radix(hex, 16).ok()?;
    i64::try_from(bytes).ok()
}

/// Cuts a fetched run of `limit + 1` rows to one page and says what token continues it.
pub fn finish<T>(mut rows: Vec<(i64, T)>, limit: usize) -> (Vec<(i64, T)>, Option<String>) {
    let next = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|(seq, _)| encode(*seq))
    } else {
        None
    };
    (rows, next)
}

/// One validated list filter.
#[derive(Debug, Clone)]
pub struct ListFilter {
    pub name: String,
    pub condition: Condition,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    Eq,
    In,
    Between,
    BeginsWith,
}

impl ListFilter {
    pub fn matches(&self, value: &str) -> bool {
        match self.condition {
            Condition::Eq | Condition::In => self.values.iter().any(|v| v == value),
            Condition::BeginsWith => self.values.iter().any(|v| value.starts_with(v.as_str())),
            Condition::Between => false,
        }
    }
}

/// Validates `Filters` against what one List operation allows: `allowed` lists each filter name
/// with the conditions it supports (the first is its default when `Condition` is omitted... which
/// AWS documents as EQ for every name that allows it).
pub fn filters(filters: &Option<Vec<Filter>>, allowed: &[(&str, &[Condition])]) -> Result<Vec<ListFilter>> {
    let Some(filters) = filters else {
        return Ok(Vec::new());
    };
    let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
    filters
        .iter()
        .map(|f| {
            let name = validate::required(&f.name, "Filters.Name")?;
            let values = validate::required(&f.values, "Filters.Values")?;
            let Some((_, conditions)) = allowed.iter().find(|(n, _)| n == name) else {
                return Err(RegistryError::invalid(format!(
                    "Filters.Name '{name}' is not one of {}",
                    names.join(", ")
                )));
            };
            let condition = match f.condition.as_deref() {
                None => conditions[0],
                Some("EQ") => Condition::Eq,
                Some("IN") => Condition::In,
                Some("BETWEEN") => Condition::Between,
                Some("BEGINS_WITH") => Condition::BeginsWith,
                Some(other) => {
                    return Err(RegistryError::invalid(format!(
                        "Filters.Condition '{other}' is not one of EQ, IN, BETWEEN, BEGINS_WITH"
                    )));
                }
            };
            if !conditions.contains(&condition) {
                return Err(RegistryError::invalid(format!(
                    "Filters.Condition {condition:?} is not supported for filter {name}"
                )));
            }
            if values.is_empty() || values.iter().any(|v| v.is_empty() || v.len() > 255) {
                return Err(RegistryError::invalid("Filters.Values must hold values of 1 to 255 characters"));
            }
            let count_ok = match condition {
                Condition::Eq | Condition::BeginsWith => values.len() == 1,
                Condition::Between => values.len() == 2,
                Condition::In => true,
            };
            if !count_ok {
                return Err(RegistryError::invalid(format!(
                    "Filters.Values for {name} with {condition:?} takes {} value(s)",
                    if condition == Condition::Between { "two" } else { "one" }
                )));
            }
            Ok(ListFilter { name: name.clone(), condition, values: values.clone() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        assert_eq!(decode(&encode(42)), Some(42));
        assert!(page(&Some("garbage".into()), None, 100).is_err());
        assert!(page(&None, Some(0), 100).is_err());
        assert!(page(&None, Some(101), 100).is_err());
        assert_eq!(page(&None, None, 100).unwrap().limit, 100);
    }

    #[test]
    fn pages_cut_at_limit() {
        let rows: Vec<(i64, ())> = (1..=5).map(|i| (i, ())).collect();
        let (page, next) = finish(rows, 3);
        assert_eq!(page.len(), 3);
        assert_eq!(next, Some(encode(3)));
        let (page, next) = finish(vec![(1, ())], 3);
        assert_eq!((page.len(), next), (1, None));
    }

    #[test]
    fn filter_rules() {
        let allowed: &[(&str, &[Condition])] = &[("TYPE", &[Condition::Eq, Condition::BeginsWith])];
        let f = |name: &str, cond: Option<&str>, values: &[&str]| Filter {
            name: Some(name.into()),
            condition: cond.map(Into::into),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        assert!(filters(&Some(vec![f("TYPE", None, &["HTTP"])]), allowed).is_ok());
        assert!(filters(&Some(vec![f("NAME", None, &["x"])]), allowed).is_err());
        assert!(filters(&Some(vec![f("TYPE", Some("IN"), &["HTTP"])]), allowed).is_err());
        assert!(filters(&Some(vec![f("TYPE", None, &["HTTP", "DNS_PUBLIC"])]), allowed).is_err());
    }
}
