//! Query handling: parse, route by zone, answer from the answer cache or build the answer from the
//! namespace cache, encode.
//!
//! `answer_cached` is the hot path, run inline on the socket's task: it parses the header and
//! question, probes the answer cache with the lower-cased name, type and class, and copies the
//! pre-encoded answer out with the query's ID and question. Everything else (`answer`) runs on
//! its own task, may wait for the backend, and stores what it built for the next query.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use dashmap::DashMap;

use super::answer::Answer;
use super::wire::{self, *};
use crate::cache::{Cache, Lookup, now_ms};
use crate::zone::answer::{self as build, BuildCtx, Parsed, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

pub enum Fast {
    /// `out` holds the response.
    Answered,
    /// No response at all (a response packet, or too short to carry a header).
    Dropped,
    /// Needs the slow path.
    Miss,
}

pub struct EngineSettings {
    /// SOA MNAME and NS target of every zone (wire form).
    pub server_name: Vec<u8>,
    /// How many answers the answer cache holds at most.
    pub max_cached_answers: usize,
}

pub struct Engine {
    cache: Arc<Cache>,
    answers: DashMap<Box<[u8]>, Arc<Answer>>,
    settings: EngineSettings,
    /// SOA serial: the start time, so it moves when a restart may have changed anything.
    serial: u32,
}

/// The answer cache key: lower-cased QNAME, QTYPE, QCLASS.
fn key_into(q: &Query, buf: &mut [u8; 260]) -> usize {
    let n = wire::lower_name_into(q.qname, &mut buf[..255]);
    buf[n..n + 2].copy_from_slice(&q.qtype.to_be_bytes());
    buf[n + 2..n + 4].copy_from_slice(&q.qclass.to_be_bytes());
    n + 4
}

fn limit(q: &Query, transport: Transport) -> usize {
    match transport {
        Transport::Udp => q.udp_limit(),
        Transport::Tcp => u16::MAX as usize,
    }
}

impl Engine {
    pub fn new(cache: Arc<Cache>, settings: EngineSettings) -> Engine {
        Engine { cache, answers: DashMap::new(), settings, serial: (now_ms() / 1000) as u32 }
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// The hot path: answers from the answer cache, or from the packet alone when it is an error.
    pub fn answer_cached(&self, packet: &[u8], transport: Transport, out: &mut Vec<u8>) -> Fast {
        let q = match wire::parse_query(packet) {
            Ok(q) => q,
            Err(Reject::Drop) => return Fast::Dropped,
            Err(Reject::FormErr { id, flags, question_end }) => {
                wire::write_error(packet, id, flags, question_end, RCODE_FORMERR, out);
                return Fast::Answered;
            }
            Err(Reject::NotImp { id, flags, question_end }) => {
                wire::write_error(packet, id, flags, question_end, RCODE_NOTIMP, out);
                return Fast::Answered;
            }
        };
        if let Some(edns) = q.edns
            && edns.version > 0
        {
            // RFC 6891 §6.1.3: BADVERS, in the OPT's extended rcode, nothing else.
            let none: &[&[u8]] = &[];
            let s = Sections {
                rcode: 0,
                authoritative: false,
                recursion_available: false,
                answer: &none,
                authority: &none,
                additional: &none,
                opt: OptOut { extended_rcode: (RCODE_BADVERS >> 4) as u8, ede: None },
            };
            wire::write_response(&q, &s, limit(&q, transport), out);
            return Fast::Answered;
        }
        let mut key = [0u8; 260];
        let n = key_into(&q, &mut key);
        match self.answers.get(&key[..n]) {
            Some(a) if a.is_current() => {
                a.write(&q, limit(&q, transport), now_ms(), out);
                Fast::Answered
            }
            _ => Fast::Miss,
        }
    }

    /// The full path, for whatever `answer_cached` could not answer.
    pub async fn answer(&self, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(512);
        match self.answer_cached(packet, transport, &mut out) {
            Fast::Answered => return Some(out),
            Fast::Dropped => return None,
            Fast::Miss => {}
        }
        let q = wire::parse_query(packet).ok()?;
        let answer = self.resolve(&q).await;
        answer.write(&q, limit(&q, transport), now_ms(), &mut out);
        Some(out)
    }

    fn refused(&self) -> Answer {
        let mut a = Answer::new(RCODE_REFUSED);
        a.authoritative = false;
        a.ede = Some((EDE_PROHIBITED, Cow::Borrowed("not a namespace zone, and no upstream is configured")));
        a
    }

    fn outage() -> Answer {
        let mut a = Answer::new(RCODE_SERVFAIL);
        a.cacheable = false;
        a.ede = Some((
            EDE_NO_REACHABLE_AUTHORITY,
            Cow::Borrowed("Cloud Map is unreachable and nothing is cached"),
        ));
        a
    }

    async fn resolve(&self, q: &Query<'_>) -> Arc<Answer> {
        let mut lower = [0u8; 255];
        let n = wire::lower_name_into(q.qname, &mut lower);
        let lower = &lower[..n];
        let zones_gen = self.cache.zones_generation.load(Ordering::Acquire);
        let zones = self.cache.zones().await;
        let mut deps = vec![(self.cache.zones_generation.clone(), zones_gen)];
        let mut case_sensitive = false;
        let mut answer = match zones.find(lower) {
            _ if q.qclass != CLASS_IN && q.qclass != CLASS_ANY => self.refused(),
            None => self.refused(),
            Some((zone, offset)) => {
                let ctx = BuildCtx {
                    zone,
                    zone_offset: offset,
                    qtype: q.qtype,
                    server_name: &self.settings.server_name,
                    serial: self.serial,
                };
                let lower_labels = wire::labels(&lower[..offset]);
                let original_labels = wire::labels(&q.qname[..offset]);
                if lower_labels.is_empty() {
                    build::apex(&ctx)
                } else {
                    let ns = self.cache.namespace(&zone.namespace);
                    let catalog_gen = ns.catalog_generation.load(Ordering::Acquire);
                    match self.cache.catalog(&ns).await {
                        None => Self::outage(),
                        Some(catalog) => {
                            deps.push((ns.catalog_generation.clone(), catalog_gen));
                            match build::parse(&lower_labels, &original_labels, &catalog) {
                                Parsed::Apex => build::apex(&ctx),
                                Parsed::NoSuchName => build::negative(&ctx, RCODE_NXDOMAIN),
                                Parsed::EmptyNonTerminal => build::negative(&ctx, RCODE_NOERROR),
                                Parsed::Service { service, reserved, rest, case_sensitive: cs } => {
                                    case_sensitive = cs;
                                    match self.cache.service(&ns, &service).await {
                                        Lookup::Found { slot, generation, view, stale, confirmed_age } => {
                                            let status = Status {
                                                backend: self.cache.backend_kind(),
                                                pushed: self.cache.pushed(),
                                                confirmed_age,
                                                refresh: self.cache.effective_refresh(),
                                                stale,
                                            };
                                            let mut a = build::service(&ctx, &view, reserved, &rest, &status);
                                            deps.push((slot.generation.clone(), generation));
                                            a.touch = Some(slot.last_used.clone());
                                            a
                                        }
                                        Lookup::NotFound => build::negative(&ctx, RCODE_NXDOMAIN),
                                        Lookup::Outage => Self::outage(),
                                    }
                                }
                            }
                        }
                    }
                }
            }
        };
        answer.deps = deps;
        let answer = Arc::new(answer);
        if answer.cacheable && !case_sensitive {
            if self.answers.len() >= self.settings.max_cached_answers {
                // Full: drop what is outdated; if that frees too little (a flood of new names),
                // start over. Answers are rebuilt from the namespace cache without backend calls,
                // and this happens at most once per `max_cached_answers` insertions.
                self.answers.retain(|_, a| a.is_current());
                if self.answers.len() >= self.settings.max_cached_answers * 9 / 10 {
                    self.answers.clear();
                }
            }
            let mut key = [0u8; 260];
            let n = key_into(q, &mut key);
            self.answers.insert(Box::from(&key[..n]), answer.clone());
        }
        answer
    }
}
