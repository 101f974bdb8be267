//! An instance's attributes in two allocations: every key and value back to back in one string,
//! sorted by key, and where each ends. A `BTreeMap<String, String>` of the usual three to five
//! attributes takes a 540-byte node and a heap string per key and value; with this (and the
//! view sharing the instance's strings) the aws server with 100,000 instances went from 239 to
//! 126 MiB resident (bench/README.md, *Scale*).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Attributes {
    /// Keys and values, sorted by key: key0 value0 key1 value1 ...
    text: Box<str>,
    /// Where each key and value ends in `text` (key i at 2i, its value at 2i + 1). Cloud Map
    /// allows 30 attributes of at most 255 + 1,024 characters: u32 is ample.
    ends: Box<[u32]>,
}

impl Attributes {
    pub fn len(&self) -> usize {
        self.ends.len() / 2
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn part(&self, j: usize) -> &str {
        let start = if j == 0 { 0 } else { self.ends[j - 1] as usize };
        &self.text[start..self.ends[j] as usize]
    }

    /// The i-th pair in key order.
    fn pair(&self, i: usize) -> (&str, &str) {
        (self.part(2 * i), self.part(2 * i + 1))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (k, v) = self.pair(mid);
            match k.cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(v),
            }
        }
        None
    }

    /// The pairs in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        (0..self.len()).map(|i| self.pair(i))
    }
}

/// Later pairs win over earlier ones with the same key, as inserting into a map.
impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Attributes {
        let mut pairs: Vec<(K, V)> = pairs.into_iter().collect();
        // Stable: among equal keys the last one given stays last, and is the one kept.
        pairs.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
        let mut text = String::new();
        let mut ends = Vec::with_capacity(pairs.len() * 2);
        for (i, (k, v)) in pairs.iter().enumerate() {
            if pairs.get(i + 1).is_some_and(|next| next.0.as_ref() == k.as_ref()) {
                continue;
            }
            for s in [k.as_ref(), v.as_ref()] {
                text.push_str(s);
                ends.push(u32::try_from(text.len()).unwrap_or(u32::MAX));
            }
        }
        Attributes { text: text.into_boxed_str(), ends: ends.into_boxed_slice() }
    }
}

impl From<BTreeMap<String, String>> for Attributes {
    fn from(map: BTreeMap<String, String>) -> Attributes {
        map.into_iter().collect()
    }
}

impl fmt::Debug for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// As a map, the form the snapshot has always had.
impl Serialize for Attributes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Attributes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Attributes, D::Error> {
        Ok(BTreeMap::<String, String>::deserialize(d)?.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_like_a_map() {
        let a: Attributes =
            [("version", "v2"), ("AWS_INSTANCE_IPV4", "10.0.0.1"), ("az", ""), ("version", "v3")]
                .into_iter()
                .collect();
        assert_eq!(a.len(), 3);
        assert_eq!(a.get("version"), Some("v3"), "the later pair wins");
        assert_eq!(a.get("AWS_INSTANCE_IPV4"), Some("10.0.0.1"));
        assert_eq!(a.get("az"), Some(""), "empty values are kept");
        assert_eq!(a.get("AWS_INSTANCE_PORT"), None);
        assert_eq!(a.get(""), None);
        let keys: Vec<&str> = a.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["AWS_INSTANCE_IPV4", "az", "version"], "in key order");
        assert!(Attributes::default().is_empty());
        assert_eq!(Attributes::default().get("x"), None);
    }

    #[test]
    fn serializes_as_the_map_did() {
        let map: BTreeMap<String, String> =
            [("b".to_string(), "2".to_string()), ("a".to_string(), "1".to_string())].into_iter().collect();
        let a = Attributes::from(map.clone());
        assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&map).unwrap());
        let back: Attributes = serde_json::from_str(r#"{"a":"1","b":"2"}"#).unwrap();
        assert_eq!(back, a);
        assert_eq!(format!("{a:?}"), r#"{"a": "1", "b": "2"}"#);
    }
}
