//! Upstream replies, kept as bytes: the query sent upstream, the checks a reply must pass to be
//! accepted, and the template a reply becomes in the cache.
//!
//! A template is the upstream's reply from the header to its last record, without the upstream's
//! OPT record, plus where each record ends and where its TTL sits. A later query for the same
//! name (in any case), type and class has a question of exactly the same length, so every
//! compression pointer of the template stays valid when its question is written over the
//! template's: serving a cached reply is a copy and a few patches (ID, flags, question, TTLs
//! counted down, our own OPT), never a decode and encode.

use super::super::dns::wire::{self, OptOut, Query};

/// One record of a template.
#[derive(Debug, Clone, Copy)]
struct Rr {
    /// Offset just past the record.
    end: u32,
    /// Offset of its TTL field.
    ttl_at: u32,
    /// Its TTL when stored (after clamping).
    ttl: u32,
}

/// Why a reply is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// Not a reply to what was sent: another ID, another question, not a response.
    Mismatch,
    /// A reply that cannot be read.
    Malformed,
}

/// What a reply says, for caching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Records in the answer section.
    Positive,
    /// NOERROR without answers, or NXDOMAIN (RFC 2308).
    Negative,
    /// SERVFAIL, REFUSED, NOTIMP, FORMERR and the like: not an answer about the name.
    Failure,
}

#[derive(Debug, Clone)]
pub struct Template {
    bytes: Box<[u8]>,
    question_end: usize,
    records: Box<[Rr]>,
    answer: u16,
    authority: u16,
    /// Header flags of the reply (AD matters; AA is never passed on).
    flags: u16,
    /// Upper 8 bits of a 12-bit extended rcode, from the upstream's OPT.
    ext_rcode: u8,
    /// For logs and troubleshooting: the rcode's lower 4 bits.
    pub rcode: u8,
    pub kind: Kind,
    /// How long it may be cached by RFC 2181 and RFC 2308, clamped: the smallest TTL of its
    /// records, or for a negative answer min(SOA TTL, SOA MINIMUM); `None` when it must not be
    /// cached (a negative answer without an SOA).
    pub ttl: Option<u32>,
    /// Whether the upstream set TC.
    pub truncated: bool,
}

/// The query sent upstream: a fresh ID, RD, the client's CD, the question as the client sent it,
/// and our own OPT (DO as the client asked; no client options, so no ECS or cookie leaks).
pub fn upstream_query(id: u16, question: &[u8], dnssec_ok: bool, checking_disabled: bool) -> Vec<u8> {
    let mut p = Vec::with_capacity(wire::HEADER_LEN + question.len() + 11);
    p.extend_from_slice(&id.to_be_bytes());
    let flags: u16 = 0x0100 | if checking_disabled { 0x0010 } else { 0 };
    p.extend_from_slice(&flags.to_be_bytes());
    p.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(question);
    wire::write_opt(&OptOut::default(), dnssec_ok, &mut p);
    p
}

/// A bare response to a query: its header and question, an rcode, and our OPT if it had one.
pub fn bare(question: &[u8], rcode: u8) -> Template {
    let mut bytes = vec![0u8; wire::HEADER_LEN];
    bytes[5] = 1;
    bytes.extend_from_slice(question);
    Template {
        question_end: bytes.len(),
        bytes: bytes.into(),
        records: Box::new([]),
        answer: 0,
        authority: 0,
        flags: 0,
        ext_rcode: 0,
        rcode,
        kind: Kind::Failure,
        ttl: None,
        truncated: false,
    }
}

/// TTL clamps applied to what upstreams send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clamps {
    pub min_ttl: u32,
    pub max_ttl: u32,
    /// The last word on negative answers, so a name that appears is seen within it.
    pub max_negative_ttl: u32,
}

/// Reads `p` as the reply to a query with `id` and `question`, with TTLs clamped.
pub fn accept(p: &[u8], id: u16, question: &[u8], clamps: Clamps) -> Result<Template, Bad> {
    let Clamps { min_ttl, max_ttl, max_negative_ttl } = clamps;
    let flags = wire::u16_at(p, 2).ok_or(Bad::Malformed)?;
    if wire::u16_at(p, 0) != Some(id) || flags & 0x8000 == 0 || wire::u16_at(p, 4) != Some(1) {
        return Err(Bad::Mismatch);
    }
    let question_end = wire::HEADER_LEN + question.len();
    match p.get(wire::HEADER_LEN..question_end) {
        Some(q) if q.eq_ignore_ascii_case(question) => {}
        _ => return Err(Bad::Mismatch),
    }
    let counts = [6, 8, 10].map(|at| wire::u16_at(p, at).unwrap_or(0));
    let mut at = question_end;
    let mut records = Vec::with_capacity(counts.iter().map(|&c| c as usize).sum::<usize>().min(64));
    let (mut answer, mut authority) = (0u16, 0u16);
    let mut ext_rcode = 0;
    let mut min_rr_ttl = u32::MAX;
    let mut negative_ttl = None;
    'sections: for (section, &count) in counts.iter().enumerate() {
        for _ in 0..count {
            let name_end = wire::skip_name(p, at).ok_or(Bad::Malformed)?;
            let rtype = wire::u16_at(p, name_end).ok_or(Bad::Malformed)?;
            let raw_ttl = wire::u32_at(p, name_end + 4).ok_or(Bad::Malformed)?;
            let rdlen = wire::u16_at(p, name_end + 8).ok_or(Bad::Malformed)? as usize;
            let end = name_end + 10 + rdlen;
            if end > p.len() {
                return Err(Bad::Malformed);
            }
            if rtype == wire::TYPE_OPT {
                if section != 2 {
                    return Err(Bad::Malformed);
                }
                ext_rcode = (raw_ttl >> 24) as u8;
                // The OPT is usually last. Whatever follows it is left out too: dropping only
                // the OPT would move records that later compression pointers may point into.
                break 'sections;
            }
            // RFC 2181 §8: a TTL with the top bit set is zero.
            let ttl = if raw_ttl & 0x8000_0000 != 0 { 0 } else { raw_ttl };
            if rtype == wire::TYPE_SOA && section == 1 && rdlen >= 22 {
                let minimum = wire::u32_at(p, end - 4).ok_or(Bad::Malformed)?;
                negative_ttl = Some(ttl.min(minimum));
            }
            min_rr_ttl = min_rr_ttl.min(ttl);
            records.push(Rr {
                end: end as u32,
                ttl_at: (name_end + 4) as u32,
                ttl: ttl.clamp(min_ttl, max_ttl),
            });
            match section {
                0 => answer += 1,
                1 => authority += 1,
                _ => {}
            }
            at = end;
        }
    }
    let rcode = (flags & 0x000F) as u8;
    let kind = match rcode {
        wire::RCODE_NOERROR if answer > 0 => Kind::Positive,
        wire::RCODE_NOERROR | wire::RCODE_NXDOMAIN => Kind::Negative,
        _ => Kind::Failure,
    };
    let ttl = match kind {
        Kind::Positive => Some(min_rr_ttl.clamp(min_ttl, max_ttl)),
        Kind::Negative => negative_ttl.map(|t| t.clamp(min_ttl, max_ttl).min(max_negative_ttl)),
        Kind::Failure => None,
    };
    let end = records.last().map_or(question_end, |r| r.end as usize);
    let mut bytes: Box<[u8]> = p[..end].into();
    // A negative answer's SOA lives only as long as the negative answer (RFC 2308 §3).
    if let (Kind::Negative, Some(t)) = (kind, ttl) {
        for r in records.iter_mut().skip(answer as usize).take(authority as usize) {
            let rtype_at = r.ttl_at as usize - 4;
            if wire::u16_at(&bytes, rtype_at) == Some(wire::TYPE_SOA) {
                r.ttl = t;
            }
        }
    }
    bytes[2] = 0;
    bytes[3] = 0;
    Ok(Template {
        bytes,
        question_end,
        records: records.into(),
        answer,
        authority,
        flags,
        ext_rcode,
        rcode,
        kind,
        ttl,
        truncated: flags & 0x0200 != 0,
    })
}

/// How the TTLs of a served template are written.
#[derive(Debug, Clone, Copy)]
pub enum Ttls {
    /// Counted down by the seconds since the reply was stored.
    Elapsed(u32),
    /// RFC 8767: every record with this TTL.
    Stale(u32),
}

impl Template {
    /// Bytes held, for the cache's memory bound.
    pub fn size(&self) -> usize {
        self.bytes.len() + self.records.len() * std::mem::size_of::<Rr>() + std::mem::size_of::<Self>()
    }

    /// Where its bytes and its records lie on the heap (address, length): prefetch hints.
    pub fn heap_parts(&self) -> [(usize, usize); 2] {
        [
            (self.bytes.as_ptr() as usize, self.bytes.len()),
            (self.records.as_ptr() as usize, std::mem::size_of_val(&*self.records)),
        ]
    }

    /// The question as it was sent upstream.
    pub fn question(&self) -> &[u8] {
        &self.bytes[wire::HEADER_LEN..self.question_end]
    }

    /// The response to `q`, within `limit` bytes. As for our own answers (RFC 2181 §9),
    /// additional records are left out first and TC is set only when the answer and authority
    /// sections do not fit.
    pub fn write(&self, q: &Query, limit: usize, ttls: Ttls, ede: Option<(u16, &str)>, out: &mut Vec<u8>) {
        out.clear();
        let opt = OptOut { extended_rcode: self.ext_rcode, ede };
        let opt_len = if q.edns.is_some() { wire::opt_len(&opt) } else { 0 };
        let required = (self.answer + self.authority) as usize;
        let required_end = match required {
            0 => self.question_end,
            n => self.records[n - 1].end as usize,
        };
        let truncated = required_end + opt_len > limit;
        let kept = if truncated {
            0
        } else {
            required
                + self.records[required..].iter().take_while(|r| r.end as usize + opt_len <= limit).count()
        };
        let end = match kept {
            0 => self.question_end,
            n => self.records[n - 1].end as usize,
        };
        out.extend_from_slice(&self.bytes[..end]);
        out[0..2].copy_from_slice(&q.id.to_be_bytes());
        // QR, the query's opcode and RD, RA; CD as asked; AD only for clients that asked for
        // DNSSEC (RFC 6840 §5.8); AA never: we are not the authority.
        let mut flags = 0x8000 | (q.flags & 0x7900) | 0x0080 | (q.flags & 0x0010) | self.rcode as u16;
        if self.flags & 0x0020 != 0 && (q.edns.is_some_and(|e| e.dnssec_ok) || q.flags & 0x0020 != 0) {
            flags |= 0x0020;
        }
        if truncated {
            flags |= 0x0200;
        }
        out[2..4].copy_from_slice(&flags.to_be_bytes());
        if q.question.len() == self.question_end - wire::HEADER_LEN {
            out[wire::HEADER_LEN..self.question_end].copy_from_slice(q.question);
        }
        let (answer, authority) = if truncated { (0, 0) } else { (self.answer, self.authority) };
        let additional = kept.saturating_sub(required) + q.edns.is_some() as usize;
        out[6..8].copy_from_slice(&answer.to_be_bytes());
        out[8..10].copy_from_slice(&authority.to_be_bytes());
        out[10..12].copy_from_slice(&(additional as u16).to_be_bytes());
        for r in &self.records[..kept] {
            let ttl = match ttls {
                Ttls::Elapsed(e) => r.ttl.saturating_sub(e),
                Ttls::Stale(t) => t,
            };
            let at = r.ttl_at as usize;
            out[at..at + 4].copy_from_slice(&ttl.to_be_bytes());
        }
        if let Some(e) = q.edns {
            wire::write_opt(&opt, e.dnssec_ok, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::wire::{CLASS_IN, TYPE_A, TYPE_SOA, encode_name, parse_query, record, soa_rdata};

    const CLAMPS: Clamps = Clamps { min_ttl: 0, max_ttl: 86_400, max_negative_ttl: 3600 };

    fn question(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = encode_name(name).unwrap();
        q.extend(qtype.to_be_bytes());
        q.extend(CLASS_IN.to_be_bytes());
        q
    }

    fn reply(id: u16, rcode: u16, question: &[u8], sections: [&[Vec<u8>]; 3], opt: bool) -> Vec<u8> {
        let mut p = id.to_be_bytes().to_vec();
        p.extend((0x8180u16 | rcode).to_be_bytes());
        p.extend(1u16.to_be_bytes());
        for (i, s) in sections.iter().enumerate() {
            p.extend(((s.len() + (i == 2 && opt) as usize) as u16).to_be_bytes());
        }
        p.extend(question);
        for s in sections {
            for r in s {
                p.extend(r);
            }
        }
        if opt {
            wire::write_opt(&OptOut::default(), false, &mut p);
        }
        p
    }

    fn client(name: &str, id: u16, edns: bool) -> Vec<u8> {
        let mut p = id.to_be_bytes().to_vec();
        p.extend([1, 0, 0, 1, 0, 0, 0, 0, 0, edns as u8]);
        p.extend(question(name, TYPE_A));
        if edns {
            p.extend([0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0]);
        }
        p
    }

    #[test]
    fn served_copies_patch_id_case_and_ttls_and_replace_the_opt() {
        let q = question("www.example.test", TYPE_A);
        let a = record(&[0xC0, 12], TYPE_A, 300, &[192, 0, 2, 1]);
        let glue = record(&encode_name("ns.example.test").unwrap(), TYPE_A, 60, &[192, 0, 2, 53]);
        let p = reply(7, 0, &q, [&[a], &[], &[glue]], true);
        let t = accept(&p, 7, &q, CLAMPS).unwrap();
        assert_eq!((t.kind, t.ttl), (Kind::Positive, Some(60)));
        let packet = client("WWW.Example.TEST", 0xBEEF, true);
        let cq = parse_query(&packet).unwrap();
        let mut out = Vec::new();
        t.write(&cq, 1232, Ttls::Elapsed(10), None, &mut out);
        let m = hickory_proto::op::Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.id, 0xBEEF);
        assert_eq!(m.queries[0].name().to_string(), "WWW.Example.TEST.");
        assert_eq!(m.answers[0].ttl, 290);
        assert_eq!(m.additionals[0].ttl, 50);
        assert!(m.edns.is_some());
        assert!(!m.metadata.authoritative);
        assert!(m.metadata.recursion_available);
        // Without EDNS the client gets no OPT.
        let packet = client("www.example.test", 1, false);
        t.write(&parse_query(&packet).unwrap(), 512, Ttls::Stale(30), None, &mut out);
        let m = hickory_proto::op::Message::from_vec(&out).unwrap();
        assert!(m.edns.is_none());
        assert_eq!(m.answers[0].ttl, 30);
    }

    #[test]
    fn mismatched_replies_are_refused() {
        let q = question("www.example.test", TYPE_A);
        let p = reply(7, 0, &q, [&[], &[], &[]], false);
        assert_eq!(accept(&p, 8, &q, CLAMPS).unwrap_err(), Bad::Mismatch);
        let other = question("xxx.example.test", TYPE_A);
        assert_eq!(accept(&p, 7, &other, CLAMPS).unwrap_err(), Bad::Mismatch);
        let mut query = p.clone();
        query[2] &= 0x7F;
        assert_eq!(accept(&query, 7, &q, CLAMPS).unwrap_err(), Bad::Mismatch);
        let mut short = reply(7, 0, &q, [&[record(&[0xC0, 12], TYPE_A, 1, &[1, 2, 3, 4])], &[], &[]], false);
        short.truncate(short.len() - 2);
        assert_eq!(accept(&short, 7, &q, CLAMPS).unwrap_err(), Bad::Malformed);
    }

    #[test]
    fn negative_ttl_is_the_soa_minimum_or_nothing() {
        let q = question("nx.example.test", TYPE_A);
        let zone = encode_name("example.test").unwrap();
        let soa = record(&zone, TYPE_SOA, 3600, &soa_rdata(&zone, &zone, 1, 2, 3, 4, 120));
        let t = accept(&reply(1, 3, &q, [&[], &[soa], &[]], false), 1, &q, CLAMPS).unwrap();
        assert_eq!((t.kind, t.ttl), (Kind::Negative, Some(120)));
        let t = accept(&reply(1, 3, &q, [&[], &[], &[]], false), 1, &q, CLAMPS).unwrap();
        assert_eq!((t.kind, t.ttl), (Kind::Negative, None));
        let t = accept(&reply(1, 2, &q, [&[], &[], &[]], false), 1, &q, CLAMPS).unwrap();
        assert_eq!(t.kind, Kind::Failure);
    }

    #[test]
    fn truncation_drops_additional_first() {
        let q = question("big.example.test", TYPE_A);
        let answers: Vec<Vec<u8>> =
            (0..20).map(|i| record(&[0xC0, 12], TYPE_A, 60, &[10, 0, 0, i])).collect();
        let glue: Vec<Vec<u8>> = (0..20).map(|i| record(&[0xC0, 12], TYPE_A, 60, &[10, 1, 0, i])).collect();
        let t = accept(&reply(1, 0, &q, [&answers, &[], &glue], false), 1, &q, CLAMPS).unwrap();
        let packet = client("big.example.test", 2, false);
        let cq = parse_query(&packet).unwrap();
        let mut out = Vec::new();
        t.write(&cq, 512, Ttls::Elapsed(0), None, &mut out);
        let m = hickory_proto::op::Message::from_vec(&out).unwrap();
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 20);
        assert!(m.additionals.len() < 20 && out.len() <= 512);
        t.write(&cq, 100, Ttls::Elapsed(0), None, &mut out);
        let m = hickory_proto::op::Message::from_vec(&out).unwrap();
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
    }
}
