//! Reading a name below a zone (PRODUCT.md §2) and building its answer.
//!
//! A name is read in two steps: `parse` finds the service with the catalog of the namespace's
//! service names (the longest run of labels left of the zone that names a service; else `_S._tcp`
//! or `_S._udp` name `S`), then `build` answers from that service's instances. Both work on
//! lower-case labels: matching ignores ASCII case, and answers point back at the question's own
//! bytes, so they echo its case.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::dns::answer::{Answer, Pick};
use crate::dns::wire::{self, *};

use super::view::{InstanceView, ServiceView};
use super::{HealthMode, Zone};

/// The catalog's hasher. A new name hashes a few candidates of its labels here on every query,
/// and SipHash was most of that. The keys come from the registry, not from clients, and the seed
/// is random per process.
type CatalogHasher = foldhash::fast::RandomState;

/// The service names of a namespace, for reading names.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    /// Lower-case name -> the names it stands for (several only where names differ by case, which
    /// HTTP namespaces allow).
    services: HashMap<String, Vec<String>, CatalogHasher>,
    /// Lower-case proper label-suffixes of dotted service names (`b` of `a.b`): empty non-terminals.
    suffixes: HashSet<String, CatalogHasher>,
}

impl Catalog {
    pub fn new<I: IntoIterator<Item = String>>(names: I) -> Catalog {
        let mut c = Catalog::default();
        for name in names {
            let lower = name.to_ascii_lowercase();
            let mut rest = lower.as_str();
            while let Some((_, tail)) = rest.split_once('.') {
                c.suffixes.insert(tail.to_string());
                rest = tail;
            }
            c.services.entry(lower).or_default().push(name);
        }
        c
    }

    pub fn len(&self) -> usize {
        self.services.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.services.values().flatten()
    }

    /// The service `lower` names, preferring the one spelled exactly as `original`. The flag says
    /// whether case decided it (then the answer depends on the question's case).
    fn lookup(&self, lower: &str, original: &str) -> Option<(String, bool)> {
        let names = self.services.get(lower)?;
        if names.len() == 1 {
            return Some((names[0].clone(), false));
        }
        let exact = names.iter().find(|n| n.as_str() == original).unwrap_or(&names[0]);
        Some((exact.clone(), true))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    Cloudmap,
    GrpcConfig,
}

/// What is left of the service in a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rest {
    Service,
    /// One label: an instance (or, failing that, an attribute key with values below it).
    Instance(String),
    /// `VALUE.KEY` pairs, as (key, value) labels.
    Filters(Vec<(String, String)>),
    /// `KEY.VALUE.KEY...`: a key above filter pairs, which exists when matching instances carry it.
    KeyNode {
        key: String,
        filters: Vec<(String, String)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Apex,
    NoSuchName,
    EmptyNonTerminal,
    Service { service: String, reserved: Option<Reserved>, rest: Rest, case_sensitive: bool },
}

/// A label as text, with U+FFFD for bytes that are not UTF-8. Labels are nearly always ASCII,
/// which `from_utf8` checks a word at a time; `from_utf8_lossy` alone went byte by byte.
fn label_text(label: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(label) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(label),
    }
}

fn text(label: &[u8]) -> String {
    label_text(label).into_owned()
}

/// Labels as text, joined with dots.
fn dotted(labels: &[&[u8]]) -> String {
    let mut out = String::with_capacity(labels.iter().map(|l| l.len() + 1).sum());
    for (i, label) in labels.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        // Borrowed, not copied, when the label is UTF-8.
        out.push_str(&label_text(label));
    }
    out
}

/// The length of a label as text (`dotted`).
fn text_len(label: &[u8]) -> usize {
    label_text(label).len()
}

/// Reads the labels left of the zone (leftmost first; `lower` lower-cased, `original` as asked).
pub fn parse(lower: &[&[u8]], original: &[&[u8]], catalog: &Catalog) -> Parsed {
    if lower.is_empty() {
        return Parsed::Apex;
    }
    let (reserved, skip) = match lower[0] {
        b"_cloudmap" => (Some(Reserved::Cloudmap), 1),
        b"_grpc_config" => (Some(Reserved::GrpcConfig), 1),
        _ => (None, 0),
    };
    let (lower, original) = (&lower[skip..], &original[skip..]);
    if lower.is_empty() {
        return Parsed::NoSuchName;
    }
    // Each candidate (the labels from `start` on) is a suffix of the whole dotted name: one
    // string each, sliced, rather than a string per candidate (this runs for every new name).
    // (Lower-casing changes only ASCII letters, so both texts have the same lengths.)
    let (lower_dotted, original_dotted) = (dotted(lower), dotted(original));
    let mut at = 0;
    let mut found = None;
    for start in 0..lower.len() {
        let (Some(lower_name), Some(original_name)) = (lower_dotted.get(at..), original_dotted.get(at..))
        else {
            break;
        };
        if let Some((service, case)) = catalog.lookup(lower_name, original_name) {
            found = Some((service, case, start, lower.len()));
            break;
        }
        at += text_len(lower[start]) + 1;
    }
    if found.is_none() && lower.len() >= 2 {
        let (proto, svc) = (lower[lower.len() - 1], lower[lower.len() - 2]);
        if (proto == b"_tcp" || proto == b"_udp") && svc.len() > 1 && svc[0] == b'_' {
            let orig = &original[lower.len() - 2][1..];
            if let Some((service, case)) = catalog.lookup(&label_text(&svc[1..]), &label_text(orig)) {
                found = Some((service, case, lower.len() - 2, lower.len()));
            }
        }
    }
    let Some((service, case_sensitive, start, _)) = found else {
        // No service: an empty non-terminal if some name exists below it (RFC 8020).
        if reserved.is_none() {
            if catalog.suffixes.contains(lower_dotted.as_str()) {
                return Parsed::EmptyNonTerminal;
            }
            if lower.len() == 1 && (lower[0] == b"_tcp" || lower[0] == b"_udp") && !catalog.is_empty() {
                return Parsed::EmptyNonTerminal;
            }
        }
        return Parsed::NoSuchName;
    };
    let left: Vec<String> = lower[..start].iter().map(|l| text(l)).collect();
    let pairs = |labels: &[String]| -> Vec<(String, String)> {
        labels.chunks(2).map(|p| (p[1].clone(), p[0].clone())).collect()
    };
    let rest = match left.len() {
        0 => Rest::Service,
        1 => Rest::Instance(left[0].clone()),
        n if n % 2 == 0 => Rest::Filters(pairs(&left)),
        _ => Rest::KeyNode { key: left[0].clone(), filters: pairs(&left[1..]) },
    };
    match (reserved, &rest) {
        (Some(_), Rest::Instance(_) | Rest::KeyNode { .. }) => Parsed::NoSuchName,
        (Some(Reserved::GrpcConfig), Rest::Filters(_)) => Parsed::NoSuchName,
        _ => Parsed::Service { service, reserved, rest, case_sensitive },
    }
}

/// What building an answer needs to know besides the service.
pub struct BuildCtx<'a> {
    pub zone: &'a Zone,
    /// Offset of the zone's labels within the question name.
    pub zone_offset: usize,
    pub qtype: u16,
    /// SOA MNAME and NS target, wire form.
    pub server_name: &'a [u8],
    pub serial: u32,
}

/// The state of the data behind an answer, for `_cloudmap` TXT and stale marking.
#[derive(Debug, Clone)]
pub struct Status<'a> {
    pub backend: &'a str,
    /// The backend pushes every change (embedded): the data is live, not polled.
    pub pushed: bool,
    pub confirmed_age: Option<Duration>,
    pub refresh: Duration,
    pub stale: bool,
}

const QNAME: [u8; 2] = [0xC0, 0x0C];

/// The zone's SOA, owned by the zone's labels in the question. Built for every negative answer
/// (a new name's is one), so in one allocation: RNAME `hostmaster.<zone>` is written in place.
fn soa(ctx: &BuildCtx) -> Vec<u8> {
    let owner = wire::pointer(HEADER_LEN + ctx.zone_offset);
    let ttl = ctx.zone.ttl;
    let numbers = soa_numbers(ctx.serial, 3600, 600, 86400, ttl);
    let rdata: [&[u8]; 4] = [ctx.server_name, b"\x0ahostmaster", &ctx.zone.wire, &numbers];
    wire::record_of_parts(&owner, TYPE_SOA, ttl, &rdata)
}

/// NXDOMAIN or NODATA, with the zone's SOA in the authority section.
pub fn negative(ctx: &BuildCtx, rcode: u8) -> Answer {
    let mut a = Answer::new(rcode);
    a.authority.push_owned(soa(ctx));
    a
}

/// RFC 8482: ANY gets one synthesized HINFO instead of everything.
fn hinfo(ctx: &BuildCtx) -> Answer {
    let mut a = Answer::new(RCODE_NOERROR);
    a.records.push(wire::record(&QNAME, TYPE_HINFO, ctx.zone.ttl, &txt_rdata(&["RFC8482", ""])));
    a
}

pub fn apex(ctx: &BuildCtx) -> Answer {
    match ctx.qtype {
        TYPE_SOA => {
            let mut a = Answer::new(RCODE_NOERROR);
            let mut record = soa(ctx);
            // The owner is the question name itself.
            record[..2].copy_from_slice(&QNAME);
            a.records.push_owned(record);
            a
        }
        TYPE_NS => {
            let mut a = Answer::new(RCODE_NOERROR);
            a.records.push(wire::record(&QNAME, TYPE_NS, ctx.zone.ttl, ctx.server_name));
            a
        }
        TYPE_ANY => hinfo(ctx),
        _ => negative(ctx, RCODE_NOERROR),
    }
}

fn select<'v>(
    view: &'v ServiceView,
    filters: &[(String, String)],
    mode: HealthMode,
) -> (Vec<&'v InstanceView>, bool) {
    let matching: Vec<&InstanceView> =
        view.instances.iter().filter(|i| filters.iter().all(|(k, v)| i.matches(k, v))).collect();
    let healthy: Vec<&InstanceView> = matching.iter().copied().filter(|i| i.healthy()).collect();
    match mode {
        HealthMode::All => (matching, false),
        HealthMode::Healthy => (healthy, false),
        HealthMode::HealthyOrElseAll if healthy.is_empty() && !matching.is_empty() => (matching, true),
        HealthMode::HealthyOrElseAll => (healthy, false),
    }
}

fn target_name(ctx: &BuildCtx, view: &ServiceView, inst: &InstanceView) -> Vec<u8> {
    let dotted = format!("{}.{}.{}", inst.label, view.name, ctx.zone.name);
    wire::encode_name(&dotted).unwrap_or_else(|| vec![0])
}

fn address_records(owner: &[u8], ttl: u32, inst: &InstanceView, qtype: u16) -> Option<Vec<u8>> {
    match qtype {
        TYPE_A => inst.ipv4.map(|ip| wire::record(owner, TYPE_A, ttl, &ip.octets())),
        TYPE_AAAA => inst.ipv6.map(|ip| wire::record(owner, TYPE_AAAA, ttl, &ip.octets())),
        _ => None,
    }
}

/// A/AAAA for a set of instances: their addresses (deduplicated); if none has one, a CNAME of one
/// of them, picked per response.
fn addresses(ctx: &BuildCtx, chosen: &[&InstanceView], cap: usize) -> Answer {
    let ttl = ctx.zone.ttl;
    let mut a = Answer::new(RCODE_NOERROR);
    let mut seen = HashSet::new();
    for inst in chosen {
        if let Some(r) = address_records(&QNAME, ttl, inst, ctx.qtype)
            && seen.insert(r.clone())
        {
            a.records.push(r);
        }
    }
    if a.records.is_empty() {
        let mut seen = HashSet::new();
        for inst in chosen.iter().filter(|i| i.ipv4.is_none() && i.ipv6.is_none()) {
            if let Some(c) = &inst.cname
                && seen.insert(c.clone())
            {
                a.records.push(wire::record(&QNAME, TYPE_CNAME, ttl, c));
            }
        }
        a.pick = Pick::Sample(1);
    } else {
        a.pick = if cap == 0 { Pick::Shuffle } else { Pick::Sample(u32::try_from(cap).unwrap_or(u32::MAX)) };
    }
    if a.records.is_empty() {
        return negative(ctx, RCODE_NOERROR);
    }
    a
}

fn srv(ctx: &BuildCtx, view: &ServiceView, chosen: &[&InstanceView]) -> Answer {
    let ttl = ctx.zone.ttl;
    let mut a = Answer::new(RCODE_NOERROR);
    for inst in chosen {
        let Some(port) = inst.port else { continue };
        let target = target_name(ctx, view, inst);
        a.records.push(wire::record(
            &QNAME,
            TYPE_SRV,
            ttl,
            &srv_rdata(inst.priority, inst.weight, port, &target),
        ));
        for qtype in [TYPE_A, TYPE_AAAA] {
            if let Some(r) = address_records(&target, ttl, inst, qtype) {
                a.additional.push(r);
            }
        }
    }
    if a.records.is_empty() {
        return negative(ctx, RCODE_NOERROR);
    }
    a.pick = Pick::Shuffle;
    a
}

fn txt(ctx: &BuildCtx, strings: &[String]) -> Answer {
    let mut a = Answer::new(RCODE_NOERROR);
    a.records.push(wire::record(&QNAME, TYPE_TXT, ctx.zone.ttl, &txt_rdata(strings)));
    a
}

/// gRPC's DNS TXT format: `grpc_config=` and a JSON list of choices. A bare service config object
/// is wrapped as the one choice.
fn grpc_txt(config: &str) -> String {
    let trimmed = config.trim();
    if trimmed.starts_with('[') {
        format!("grpc_config={trimmed}")
    } else {
        format!("grpc_config=[{{\"serviceConfig\":{trimmed}}}]")
    }
}

fn cloudmap_txt(
    view: &ServiceView,
    filters: &[(String, String)],
    ctx: &BuildCtx,
    status: &Status,
) -> Vec<String> {
    let (chosen, fail_open) = select(view, filters, ctx.zone.health);
    let matching = view.instances.iter().filter(|i| filters.iter().all(|(k, v)| i.matches(k, v)));
    let (mut healthy, mut unhealthy) = (0, 0);
    for i in matching {
        if i.healthy() { healthy += 1 } else { unhealthy += 1 }
    }
    let state = if status.stale {
        "stale"
    } else if fail_open {
        "fail-open"
    } else {
        "fresh"
    };
    let mut out = vec![
        format!("service={}", view.name),
        format!("revision={}", view.revision),
        match status.confirmed_age {
            _ if status.pushed => "confirmed=live".into(),
            Some(age) => format!("confirmed={:.1}s-ago", age.as_secs_f64()),
            None => "confirmed=never".into(),
        },
        if status.pushed {
            "refresh=pushed".into()
        } else {
            format!("refresh={}ms", status.refresh.as_millis())
        },
        format!("instances={}", view.instances.len()),
        format!("healthy={healthy}"),
        format!("unhealthy={unhealthy}"),
        format!("answering={}", chosen.len()),
        format!("health-mode={}", ctx.zone.health.as_str()),
        format!("health-check={}", if view.has_health_check { "yes" } else { "none" }),
        format!(
            "filters={}",
            if filters.is_empty() {
                "none".into()
            } else {
                filters.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
            }
        ),
        format!("backend={}", status.backend),
        format!("state={state}"),
    ];
    for i in &view.instances {
        if *i.label != i.id.to_ascii_lowercase() {
            out.push(format!("label:{}={}", i.label, i.id));
        }
    }
    out
}

/// The answer for a name that names a service (and maybe an instance or filters of it).
pub fn service(
    ctx: &BuildCtx,
    view: &ServiceView,
    reserved: Option<Reserved>,
    rest: &Rest,
    status: &Status,
) -> Answer {
    let cap = ctx.zone.max_answers;
    let mut a = match (reserved, rest) {
        (Some(Reserved::Cloudmap), Rest::Service) | (Some(Reserved::Cloudmap), Rest::Filters(_)) => {
            let filters = match rest {
                Rest::Filters(f) => f.as_slice(),
                _ => &[],
            };
            let mut a = match ctx.qtype {
                TYPE_TXT | TYPE_ANY => txt(ctx, &cloudmap_txt(view, filters, ctx, status)),
                _ => negative(ctx, RCODE_NOERROR),
            };
            a.cacheable = false;
            a
        }
        (Some(Reserved::GrpcConfig), _) => {
            let config = view.grpc_config.as_deref().or(ctx.zone.grpc_config.as_deref());
            match (ctx.qtype, config) {
                (TYPE_TXT, Some(c)) => txt(ctx, &[grpc_txt(c)]),
                _ => negative(ctx, RCODE_NOERROR),
            }
        }
        (_, Rest::Service) | (_, Rest::Filters(_)) => {
            let filters = match rest {
                Rest::Filters(f) => f.as_slice(),
                _ => &[],
            };
            let (chosen, fail_open) = select(view, filters, ctx.zone.health);
            let mut a = match ctx.qtype {
                TYPE_A | TYPE_AAAA => addresses(ctx, &chosen, cap),
                TYPE_SRV => srv(ctx, view, &chosen),
                TYPE_ANY => hinfo(ctx),
                _ => negative(ctx, RCODE_NOERROR),
            };
            a.fail_open = fail_open && !a.records.is_empty();
            a
        }
        (_, Rest::Instance(label)) => match view.by_label.get(label.as_str()) {
            Some(&i) => {
                let inst = &view.instances[i];
                match ctx.qtype {
                    TYPE_A | TYPE_AAAA => addresses(ctx, &[inst], 0),
                    TYPE_TXT => {
                        // One TXT record per attribute, each "key=value".
                        let mut a = Answer::new(RCODE_NOERROR);
                        for (k, v) in inst.attributes.iter() {
                            let s = format!("{k}={v}");
                            a.records.push(wire::record(&QNAME, TYPE_TXT, ctx.zone.ttl, &txt_rdata(&[s])));
                        }
                        if a.records.is_empty() { negative(ctx, RCODE_NOERROR) } else { a }
                    }
                    TYPE_ANY => hinfo(ctx),
                    _ => negative(ctx, RCODE_NOERROR),
                }
            }
            None if view.instances.iter().any(|i| i.has_key(label)) => negative(ctx, RCODE_NOERROR),
            None => negative(ctx, RCODE_NXDOMAIN),
        },
        (_, Rest::KeyNode { key, filters }) => {
            let exists =
                view.instances.iter().any(|i| filters.iter().all(|(k, v)| i.matches(k, v)) && i.has_key(key));
            negative(ctx, if exists { RCODE_NOERROR } else { RCODE_NXDOMAIN })
        }
    };
    if status.stale {
        a.set_ede(EDE_STALE_ANSWER, "serving the last known good data: Cloud Map is unreachable");
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Discovered, DiscoveredInstance, Health, NamespaceRef};

    fn labels(name: &str) -> Vec<Vec<u8>> {
        name.split('.').map(|l| l.as_bytes().to_vec()).collect()
    }

    fn parse_name(name: &str, catalog: &Catalog) -> Parsed {
        let original = labels(name);
        let lower: Vec<Vec<u8>> = original.iter().map(|l| l.to_ascii_lowercase()).collect();
        let lr: Vec<&[u8]> = lower.iter().map(Vec::as_slice).collect();
        let or: Vec<&[u8]> = original.iter().map(Vec::as_slice).collect();
        parse(&lr, &or, catalog)
    }

    fn svc(name: &str, rest: Rest) -> Parsed {
        Parsed::Service { service: name.into(), reserved: None, rest, case_sensitive: false }
    }

    #[test]
    fn grammar() {
        let c = Catalog::new(["orders".to_string(), "_sip._tcp".into(), "a.b".into(), "web".into()]);
        assert_eq!(parse_name("orders", &c), svc("orders", Rest::Service));
        assert_eq!(parse_name("ORDERS", &c), svc("orders", Rest::Service));
        assert_eq!(parse_name("_orders._tcp", &c), svc("orders", Rest::Service));
        assert_eq!(parse_name("_orders._udp", &c), svc("orders", Rest::Service));
        assert_eq!(parse_name("_sip._tcp", &c), svc("_sip._tcp", Rest::Service), "a dotted name wins");
        assert_eq!(parse_name("a.b", &c), svc("a.b", Rest::Service));
        assert_eq!(parse_name("b", &c), Parsed::EmptyNonTerminal);
        assert_eq!(parse_name("_tcp", &c), Parsed::EmptyNonTerminal);
        assert_eq!(parse_name("i-1.orders", &c), svc("orders", Rest::Instance("i-1".into())));
        assert_eq!(
            parse_name("use1-az1.az.v2.version.orders", &c),
            svc(
                "orders",
                Rest::Filters(vec![("az".into(), "use1-az1".into()), ("version".into(), "v2".into())])
            )
        );
        assert_eq!(
            parse_name("version.use1-az1.az.orders", &c),
            svc(
                "orders",
                Rest::KeyNode { key: "version".into(), filters: vec![("az".into(), "use1-az1".into())] }
            )
        );
        assert_eq!(parse_name("nope", &c), Parsed::NoSuchName);
        assert_eq!(
            parse_name("_cloudmap.orders", &c),
            Parsed::Service {
                service: "orders".into(),
                reserved: Some(Reserved::Cloudmap),
                rest: Rest::Service,
                case_sensitive: false
            }
        );
        assert_eq!(parse_name("_cloudmap.i-1.orders", &c), Parsed::NoSuchName);
        assert_eq!(parse_name("_cloudmap", &c), Parsed::NoSuchName);
    }

    #[test]
    fn labels_that_are_not_utf8_keep_the_service_they_precede() {
        // Each candidate service name is a slice of one dotted text; a label that is not UTF-8
        // reads as U+FFFD (three bytes for one), and the slice must still start at a label.
        let c = Catalog::new(["a.b".to_string(), "b".into()]);
        let (bad, upper) = (b"\xff\xfex".as_slice(), b"\xff\xfeX".as_slice());
        let parsed = parse(&[bad, b"a", b"b"], &[upper, b"A", b"b"], &c);
        assert_eq!(parsed, svc("a.b", Rest::Instance("\u{fffd}\u{fffd}x".into())));
        assert_eq!(
            parse(&[bad, b"b"], &[upper, b"b"], &c),
            svc("b", Rest::Instance("\u{fffd}\u{fffd}x".into()))
        );
        assert_eq!(parse(&[bad, b"c"], &[upper, b"c"], &c), Parsed::NoSuchName);
    }

    #[test]
    fn exact_case_wins_between_services_differing_by_case() {
        let c = Catalog::new(["Api".to_string(), "api".into()]);
        let Parsed::Service { service, case_sensitive, .. } = parse_name("Api", &c) else { panic!() };
        assert_eq!((service.as_str(), case_sensitive), ("Api", true));
        let Parsed::Service { service, .. } = parse_name("api", &c) else { panic!() };
        assert_eq!(service, "api");
    }

    fn zone() -> Zone {
        Zone {
            name: "demo".into(),
            wire: wire::encode_name("demo").unwrap(),
            namespace: NamespaceRef { http_name: "demo".into(), owner_account: None },
            health: HealthMode::HealthyOrElseAll,
            ttl: 5,
            max_answers: 8,
            fallthrough: false,
            grpc_config: None,
        }
    }

    fn view(n: usize) -> ServiceView {
        let instances = (0..n)
            .map(|i| DiscoveredInstance {
                id: format!("i-{i}").into(),
                health: if i == 0 { Health::Unhealthy } else { Health::Healthy },
                attributes: std::sync::Arc::new(
                    [
                        ("AWS_INSTANCE_IPV4".to_string(), format!("10.0.0.{}", i + 1)),
                        ("AWS_INSTANCE_PORT".to_string(), "80".to_string()),
                        ("version".to_string(), if i % 2 == 0 { "v1" } else { "v2" }.to_string()),
                    ]
                    .into_iter()
                    .collect(),
                ),
            })
            .collect();
        ServiceView::new("web", &Discovered { revision: 7, instances, grpc_config: None }, None)
    }

    fn status() -> Status<'static> {
        Status {
            backend: "embedded",
            pushed: true,
            confirmed_age: None,
            refresh: Duration::from_secs(1),
            stale: false,
        }
    }

    #[test]
    fn answers() {
        let z = zone();
        let ctx = |qtype| BuildCtx {
            zone: &z,
            zone_offset: 4,
            qtype,
            server_name: b"\x09localhost\x00",
            serial: 1,
        };
        let v = view(3);
        let a = service(&ctx(TYPE_A), &v, None, &Rest::Service, &status());
        assert_eq!(a.records.len(), 2, "the unhealthy instance is left out");
        assert_eq!(a.pick, Pick::Sample(8));
        let a = service(&ctx(TYPE_SRV), &v, None, &Rest::Service, &status());
        assert_eq!((a.records.len(), a.additional.len()), (2, 2));
        let f = Rest::Filters(vec![("version".into(), "v1".into())]);
        let a = service(&ctx(TYPE_A), &v, None, &f, &status());
        assert_eq!(a.records.len(), 1, "i-2 (v1 and healthy)");
        let f = Rest::Filters(vec![("version".into(), "v9".into())]);
        let a = service(&ctx(TYPE_A), &v, None, &f, &status());
        assert_eq!((a.rcode, a.records.len(), a.authority.len()), (RCODE_NOERROR, 0, 1), "NODATA with SOA");
        let a = service(&ctx(TYPE_A), &v, None, &Rest::Instance("i-9".into()), &status());
        assert_eq!(a.rcode, RCODE_NXDOMAIN);
        let a = service(&ctx(TYPE_A), &v, None, &Rest::Instance("version".into()), &status());
        assert_eq!(
            (a.rcode, a.records.len()),
            (RCODE_NOERROR, 0),
            "an attribute key is an empty non-terminal"
        );
        let a = service(&ctx(TYPE_TXT), &v, None, &Rest::Instance("i-1".into()), &status());
        assert_eq!(a.records.len(), 3);
        let a = service(&ctx(TYPE_TXT), &v, Some(Reserved::Cloudmap), &Rest::Service, &status());
        assert!(!a.cacheable);
        let a = service(&ctx(TYPE_TXT), &v, Some(Reserved::GrpcConfig), &Rest::Service, &status());
        assert_eq!((a.rcode, a.records.len()), (RCODE_NOERROR, 0), "no config: NODATA, never SERVFAIL");
    }

    #[test]
    fn fail_open_and_stale() {
        let z = zone();
        let ctx = BuildCtx { zone: &z, zone_offset: 4, qtype: TYPE_A, server_name: b"\x00", serial: 1 };
        let v = view(1);
        let a = service(&ctx, &v, None, &Rest::Service, &status());
        assert_eq!(a.records.len(), 1, "the only instance is unhealthy: fail open");
        let stale = Status { stale: true, ..status() };
        let a = service(&ctx, &v, None, &Rest::Service, &stale);
        assert_eq!(a.ede.as_ref().map(|e| e.0), Some(EDE_STALE_ANSWER));
        assert_eq!(
            grpc_txt("{\"loadBalancingConfig\":[]}"),
            "grpc_config=[{\"serviceConfig\":{\"loadBalancingConfig\":[]}}]"
        );
    }
}
