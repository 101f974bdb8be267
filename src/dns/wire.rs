//! DNS wire format, by hand where the hot path needs it: reading a query's header, question and
//! OPT record straight from the packet, and assembling responses from pre-encoded records.
//!
//! Everything here works on bytes and never panics on any input: every read is bounds-checked,
//! and a query's question may not use compression (nothing precedes it to point at), which rules
//! out pointer loops by construction.

use smallvec::SmallVec;

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_HINFO: u16 = 13;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;
pub const CLASS_ANY: u16 = 255;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;
/// Extended rcode 16 (BADVERS): upper bits 1 in OPT, lower bits 0 in the header.
pub const RCODE_BADVERS: u16 = 16;

pub const EDE_STALE_ANSWER: u16 = 3;
pub const EDE_NO_REACHABLE_AUTHORITY: u16 = 22;
pub const EDE_PROHIBITED: u16 = 18;
pub const EDE_OTHER: u16 = 0;
const OPTION_EDE: u16 = 15;

/// The UDP payload size this server advertises and will fill at most (the 2020 DNS flag day value).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
pub const HEADER_LEN: usize = 12;

/// EDNS(0) as the query asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub payload: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// A parsed query. Slices borrow the packet, so the question is echoed byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query<'a> {
    pub id: u16,
    /// Header flags as received (bits 0-15 of the second header word).
    pub flags: u16,
    /// The question section: QNAME, QTYPE, QCLASS.
    pub question: &'a [u8],
    /// QNAME in wire form, case as sent.
    pub qname: &'a [u8],
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
}

impl Query<'_> {
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xF) as u8
    }

    pub fn recursion_desired(&self) -> bool {
        self.flags & 0x0100 != 0
    }

    pub fn checking_disabled(&self) -> bool {
        self.flags & 0x0010 != 0
    }

    /// The largest response this query's client accepts over UDP.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => e.payload.clamp(512, MAX_UDP_PAYLOAD) as usize,
            None => 512,
        }
    }
}

/// Why a packet gets no normal answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// Not worth a reply: shorter than a header, or a response (QR=1), which answering would
    /// turn into a reflection loop.
    Drop,
    /// Malformed: answer FORMERR with the ID (and the question when it could be read).
    FormErr { id: u16, flags: u16, question_end: Option<usize> },
    /// An opcode other than QUERY.
    NotImp { id: u16, flags: u16, question_end: Option<usize> },
}

pub fn u16_at(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

pub fn u32_at(p: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([*p.get(at)?, *p.get(at + 1)?, *p.get(at + 2)?, *p.get(at + 3)?]))
}

/// Reads an uncompressed name starting at `at`; returns the offset just past it.
pub fn read_plain_name(p: &[u8], mut at: usize) -> Option<usize> {
    let start = at;
    loop {
        let len = *p.get(at)? as usize;
        if len == 0 {
            at += 1;
            break;
        }
        if len & 0xC0 != 0 {
            return None;
        }
        at += 1 + len;
        if at - start > 255 {
            return None;
        }
    }
    (at - start <= 255 && at <= p.len()).then_some(at)
}

/// Skips a possibly compressed name (a pointer ends it); returns the offset just past it.
pub fn skip_name(p: &[u8], mut at: usize) -> Option<usize> {
    let mut seen = 0;
    loop {
        let len = *p.get(at)? as usize;
        match len & 0xC0 {
            0x00 if len == 0 => return Some(at + 1),
            0x00 => at += 1 + len,
            0xC0 => {
                p.get(at + 1)?;
                return Some(at + 2);
            }
            _ => return None,
        }
        seen += 1 + len;
        if seen > 255 {
            return None;
        }
    }
}

/// Parses a query. Never panics; anything it cannot make sense of is a `Reject`.
pub fn parse_query(p: &[u8]) -> Result<Query<'_>, Reject> {
    if p.len() < HEADER_LEN {
        return Err(Reject::Drop);
    }
    let id = u16_at(p, 0).ok_or(Reject::Drop)?;
    let flags = u16_at(p, 2).ok_or(Reject::Drop)?;
    if flags & 0x8000 != 0 {
        return Err(Reject::Drop);
    }
    let qdcount = u16_at(p, 4).unwrap_or(0);
    let ancount = u16_at(p, 6).unwrap_or(0);
    let nscount = u16_at(p, 8).unwrap_or(0);
    let arcount = u16_at(p, 10).unwrap_or(0);
    let formerr = |question_end| Reject::FormErr { id, flags, question_end };
    let opcode = ((flags >> 11) & 0xF) as u8;
    if qdcount != 1 {
        return Err(if opcode != 0 {
            Reject::NotImp { id, flags, question_end: None }
        } else {
            formerr(None)
        });
    }
    let name_end = read_plain_name(p, HEADER_LEN).ok_or(formerr(None))?;
    let question_end = name_end + 4;
    if question_end > p.len() {
        return Err(formerr(None));
    }
    if opcode != 0 {
        return Err(Reject::NotImp { id, flags, question_end: Some(question_end) });
    }
    let qtype = u16_at(p, name_end).ok_or(formerr(None))?;
    let qclass = u16_at(p, name_end + 2).ok_or(formerr(None))?;
    let q = Some(question_end);
    if ancount != 0 || nscount != 0 {
        return Err(formerr(q));
    }
    // Additional section: at most one OPT, owned by the root (RFC 6891 §6.1.1).
    let mut at = question_end;
    let mut edns = None;
    for _ in 0..arcount {
        let owner = at;
        at = skip_name(p, at).ok_or(formerr(q))?;
        let rtype = u16_at(p, at).ok_or(formerr(q))?;
        let class = u16_at(p, at + 2).ok_or(formerr(q))?;
        let ttl = u32_at(p, at + 4).ok_or(formerr(q))?;
        let rdlen = u16_at(p, at + 8).ok_or(formerr(q))? as usize;
        let rdata = at + 10;
        if rdata + rdlen > p.len() {
            return Err(formerr(q));
        }
        if rtype == TYPE_OPT {
            if edns.is_some() || p.get(owner) != Some(&0) {
                return Err(formerr(q));
            }
            // Options must be well formed, even though none is acted on.
            let mut o = rdata;
            while o < rdata + rdlen {
                let olen = u16_at(p, o + 2).ok_or(formerr(q))? as usize;
                o += 4 + olen;
            }
            if o != rdata + rdlen {
                return Err(formerr(q));
            }
            edns = Some(Edns { payload: class, version: (ttl >> 16) as u8, dnssec_ok: ttl & 0x8000 != 0 });
        }
        at = rdata + rdlen;
    }
    if at != p.len() {
        // Trailing bytes after the last record: a malformed (or smuggled) packet.
        return Err(formerr(q));
    }
    Ok(Query {
        id,
        flags,
        question: &p[HEADER_LEN..question_end],
        qname: &p[HEADER_LEN..name_end],
        qtype,
        qclass,
        edns,
    })
}

/// Writes `qname` lower-cased into `out` (a cache key), returning its length.
pub fn lower_name_into(qname: &[u8], out: &mut [u8]) -> usize {
    let n = qname.len().min(out.len());
    let mut i = 0;
    while i < n {
        let len = qname[i] as usize;
        out[i] = qname[i];
        let end = (i + 1 + len).min(n);
        for j in i + 1..end {
            out[j] = qname[j].to_ascii_lowercase();
        }
        i = end;
    }
    n
}

/// Room for a cache key: a name, type and class, and one byte more for callers that add one.
pub const KEY_ROOM: usize = 255 + 4 + 1;

/// A cache key for `q`: lower-cased QNAME, QTYPE, QCLASS. Returns its length; the byte after it
/// is free for a caller's own distinction (the forward cache's DO and CD bits).
pub fn key_into(q: &Query, buf: &mut [u8; KEY_ROOM]) -> usize {
    let n = lower_name_into(q.qname, &mut buf[..255]);
    buf[n..n + 2].copy_from_slice(&q.qtype.to_be_bytes());
    buf[n + 2..n + 4].copy_from_slice(&q.qclass.to_be_bytes());
    n + 4
}

/// The labels of a wire name, in order (leftmost first). Inline up to 8: a zone miss reads the
/// labels of every new name, and most names have fewer.
pub fn labels(name: &[u8]) -> SmallVec<[&[u8]; 8]> {
    let mut out = SmallVec::new();
    let mut i = 0;
    while let Some(&len) = name.get(i) {
        if len == 0 {
            break;
        }
        let end = i + 1 + len as usize;
        match name.get(i + 1..end) {
            Some(label) => out.push(label),
            None => break,
        }
        i = end;
    }
    out
}

/// Encodes a dotted name (`a.b.c` or `a.b.c.`) in wire form. `None` if a label is empty or too long.
pub fn encode_name(dotted: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(dotted.len() + 2);
    let trimmed = dotted.strip_suffix('.').unwrap_or(dotted);
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            if label.is_empty() || label.len() > 63 {
                return None;
            }
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
    (out.len() <= 255).then_some(out)
}

/// Presentation form of a wire name, for logs and TXT troubleshooting output.
pub fn name_to_string(name: &[u8]) -> String {
    let parts: Vec<String> = labels(name).iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect();
    if parts.is_empty() { ".".into() } else { format!("{}.", parts.join(".")) }
}

/// One encoded resource record: owner, type, class, TTL and RDATA, ready to copy into a message.
pub fn record(owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
    record_of_parts(owner, rtype, ttl, &[rdata])
}

/// `record` with its RDATA given in parts, written in order: one allocation for the record
/// where joining the parts first would take another.
pub fn record_of_parts(owner: &[u8], rtype: u16, ttl: u32, rdata: &[&[u8]]) -> Vec<u8> {
    let rdlen: usize = rdata.iter().map(|p| p.len()).sum();
    let mut r = Vec::with_capacity(owner.len() + 10 + rdlen);
    r.extend_from_slice(owner);
    r.extend_from_slice(&rtype.to_be_bytes());
    r.extend_from_slice(&CLASS_IN.to_be_bytes());
    r.extend_from_slice(&ttl.to_be_bytes());
    r.extend_from_slice(&(rdlen as u16).to_be_bytes());
    for part in rdata {
        r.extend_from_slice(part);
    }
    r
}

/// A compression pointer to `offset` in the message (the question name starts at 12).
pub fn pointer(offset: usize) -> [u8; 2] {
    let o = (offset as u16) & 0x3FFF;
    [0xC0 | (o >> 8) as u8, o as u8]
}

/// TXT RDATA from strings, each split into character-strings of at most 255 bytes.
pub fn txt_rdata<S: AsRef<[u8]>>(strings: &[S]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in strings {
        let s = s.as_ref();
        if s.is_empty() {
            out.push(0);
        }
        for chunk in s.chunks(255) {
            out.push(chunk.len() as u8);
            out.extend_from_slice(chunk);
        }
    }
    out
}

/// An SOA's RDATA whole, for tests; answers write it in parts (`soa_numbers`, `record_of_parts`).
#[cfg(test)]
pub fn soa_rdata(
    mname: &[u8],
    rname: &[u8],
    serial: u32,
    refresh: u32,
    retry: u32,
    expire: u32,
    minimum: u32,
) -> Vec<u8> {
    [mname, rname, &soa_numbers(serial, refresh, retry, expire, minimum)].concat()
}

/// The five numbers that end an SOA's RDATA, after MNAME and RNAME.
pub fn soa_numbers(serial: u32, refresh: u32, retry: u32, expire: u32, minimum: u32) -> [u8; 20] {
    let mut out = [0u8; 20];
    for (slot, v) in out.chunks_exact_mut(4).zip([serial, refresh, retry, expire, minimum]) {
        slot.copy_from_slice(&v.to_be_bytes());
    }
    out
}

pub fn srv_rdata(priority: u16, weight: u16, port: u16, target: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + target.len());
    out.extend_from_slice(&priority.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(target);
    out
}

/// What the response's OPT record says beyond our payload size.
#[derive(Debug, Clone, Default)]
pub struct OptOut<'a> {
    pub extended_rcode: u8,
    pub ede: Option<(u16, &'a str)>,
}

pub fn opt_len(opt: &OptOut) -> usize {
    11 + opt.ede.map_or(0, |(_, text)| 6 + text.len())
}

/// Appends our OPT record: payload size, extended rcode, DO echoed, and the EDE option if any.
pub fn write_opt(opt: &OptOut, dnssec_ok: bool, out: &mut Vec<u8>) {
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&MAX_UDP_PAYLOAD.to_be_bytes());
    out.push(opt.extended_rcode);
    out.push(0); // EDNS version 0
    out.extend_from_slice(&(if dnssec_ok { 0x8000u16 } else { 0 }).to_be_bytes());
    match opt.ede {
        Some((code, text)) => {
            out.extend_from_slice(&((6 + text.len()) as u16).to_be_bytes());
            out.extend_from_slice(&OPTION_EDE.to_be_bytes());
            out.extend_from_slice(&((2 + text.len()) as u16).to_be_bytes());
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        None => out.extend_from_slice(&0u16.to_be_bytes()),
    }
}

/// A section's records, in the order they are to be written, without collecting them first.
pub trait Records {
    fn count(&self) -> usize;
    /// The length of the `i`th record.
    fn len_of(&self, i: usize) -> usize;
    /// Appends the `i`th record to `out`.
    fn write_one(&self, i: usize, out: &mut Vec<u8>);
    /// The length of all of them.
    fn total(&self) -> usize {
        (0..self.count()).map(|i| self.len_of(i)).sum()
    }
    /// Appends the first `n` of them to `out`.
    fn write_all(&self, n: usize, out: &mut Vec<u8>) {
        for i in 0..n {
            self.write_one(i, out);
        }
    }
}

impl Records for &[&[u8]] {
    fn count(&self) -> usize {
        self.len()
    }
    fn len_of(&self, i: usize) -> usize {
        self[i].len()
    }
    fn write_one(&self, i: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(self[i]);
    }
}

/// Encoded records in one buffer. A cached answer's records are read on every hit; one
/// allocation each (as `Vec<Vec<u8>>` had) cost a cache miss per record on a path that touches
/// thousands of answers between two hits of one (bench/README.md, *Profile*).
///
/// While the records are all of one length (an A or AAAA set: the same owner pointer, type,
/// class, TTL and length, another address), the bytes they all begin with are kept once, then
/// each record's rest: ten A records take 12 + 10 x 4 bytes, one cache line, where back to back
/// with their ends they took 160 + 40 bytes in two blocks (bench/README.md, *Scale*). Otherwise
/// they lie back to back, with where each ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSet {
    bytes: Vec<u8>,
    shape: Shape,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// `count` records of `len` bytes, the first `head` of them the same in each: `bytes` holds
    /// those once, then each record's other `len - head`.
    Uniform { count: u32, len: u16, head: u16 },
    /// Where each record ends in `bytes`; inline up to 4 records (an instance per AZ of a
    /// service in three), so no second allocation for them.
    Mixed(SmallVec<[u32; 4]>),
}

const NO_SHAPE: Shape = Shape::Uniform { count: 0, len: 0, head: 0 };

impl Default for RecordSet {
    fn default() -> RecordSet {
        RecordSet { bytes: Vec::new(), shape: NO_SHAPE }
    }
}

impl RecordSet {
    pub fn push(&mut self, record: impl AsRef<[u8]>) {
        let record = record.as_ref();
        let RecordSet { bytes, shape } = self;
        match shape {
            Shape::Uniform { count: 0, .. } if u16::try_from(record.len()).is_ok() => {
                // The first: all of it is what the records have in common so far.
                bytes.extend_from_slice(record);
                let len = record.len() as u16;
                *shape = Shape::Uniform { count: 1, len, head: len };
            }
            Shape::Uniform { count, len, head } if usize::from(*len) == record.len() => {
                let (old, n) = (usize::from(*head), *count as usize);
                let same = bytes[..old].iter().zip(record).take_while(|(a, b)| a == b).count();
                if same < old {
                    // Less in common than so far: the bytes from `same` on move into each rest.
                    let rest = record.len() - old;
                    let mut moved = Vec::with_capacity(same + (n + 1) * (record.len() - same));
                    moved.extend_from_slice(&bytes[..same]);
                    for i in 0..n {
                        moved.extend_from_slice(&bytes[same..old]);
                        moved.extend_from_slice(&bytes[old + i * rest..old + (i + 1) * rest]);
                    }
                    *bytes = moved;
                    *head = same as u16;
                }
                bytes.extend_from_slice(&record[same..]);
                *count += 1;
            }
            _ => {
                self.make_mixed();
                self.bytes.extend_from_slice(record);
                if let Shape::Mixed(ends) = &mut self.shape {
                    ends.push(self.bytes.len() as u32);
                }
            }
        }
    }

    /// `push`, keeping `record`'s own buffer when it is the first (no copy, no second buffer):
    /// every negative answer holds one SOA, built for it.
    pub fn push_owned(&mut self, record: Vec<u8>) {
        match (&self.shape, u16::try_from(record.len())) {
            (Shape::Uniform { count: 0, .. }, Ok(len)) => {
                self.bytes = record;
                self.shape = Shape::Uniform { count: 1, len, head: len };
            }
            _ => self.push(&record),
        }
    }

    /// Lays the records out back to back, each whole, with their ends.
    fn make_mixed(&mut self) {
        if let Shape::Uniform { count, len, .. } = self.shape {
            let mut bytes = Vec::with_capacity(count as usize * usize::from(len));
            let mut ends = SmallVec::with_capacity(count as usize);
            for i in 0..count as usize {
                self.write_one(i, &mut bytes);
                ends.push(bytes.len() as u32);
            }
            *self = RecordSet { bytes, shape: Shape::Mixed(ends) };
        }
    }

    pub fn len(&self) -> usize {
        match &self.shape {
            Shape::Uniform { count, .. } => *count as usize,
            Shape::Mixed(ends) => ends.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`th record, whole.
    #[cfg(test)]
    pub fn to_vec(&self, i: usize) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_one(i, &mut out);
        out
    }

    /// Where its parts on the heap lie, as (address, length) prefetch hints: the records' bytes,
    /// and their ends once there are too many to keep inline (0, 0 when not).
    pub fn heap_parts(&self) -> [(usize, usize); 2] {
        let ends = match &self.shape {
            Shape::Mixed(ends) if ends.spilled() => {
                (ends.as_ptr() as usize, std::mem::size_of_val(ends.as_slice()))
            }
            _ => (0, 0),
        };
        [(self.bytes.as_ptr() as usize, self.bytes.len()), ends]
    }
}

impl Records for RecordSet {
    fn count(&self) -> usize {
        self.len()
    }
    fn len_of(&self, i: usize) -> usize {
        match &self.shape {
            Shape::Uniform { len, .. } => usize::from(*len),
            Shape::Mixed(ends) => (ends[i] - if i == 0 { 0 } else { ends[i - 1] }) as usize,
        }
    }
    fn write_one(&self, i: usize, out: &mut Vec<u8>) {
        match &self.shape {
            Shape::Uniform { len, head, .. } => {
                let (head, rest) = (usize::from(*head), usize::from(*len - *head));
                let at = head + i * rest;
                out.extend_from_slice(&self.bytes[..head]);
                out.extend_from_slice(&self.bytes[at..at + rest]);
            }
            Shape::Mixed(ends) => {
                let start = if i == 0 { 0 } else { ends[i - 1] as usize };
                out.extend_from_slice(&self.bytes[start..ends[i] as usize]);
            }
        }
    }
    fn total(&self) -> usize {
        match &self.shape {
            Shape::Uniform { count, len, .. } => *count as usize * usize::from(*len),
            Shape::Mixed(_) => self.bytes.len(),
        }
    }
    fn write_all(&self, n: usize, out: &mut Vec<u8>) {
        match &self.shape {
            Shape::Uniform { .. } => (0..n).for_each(|i| self.write_one(i, out)),
            Shape::Mixed(ends) => {
                let end = if n == 0 { 0 } else { ends[n - 1] as usize };
                out.extend_from_slice(&self.bytes[..end]);
            }
        }
    }
}

/// A section most cached answers leave empty (authority, additional): a pointer, null while
/// empty, read as the `RecordSet` it holds or an empty one. A hit reads its whole answer, so an
/// empty section as a `RecordSet` (56 bytes) was most of a cache line on every hit over 10,000
/// names (bench/README.md, *Scale*).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RareRecords(Option<Box<RecordSet>>);

static NO_RECORDS: RecordSet = RecordSet { bytes: Vec::new(), shape: NO_SHAPE };

impl RareRecords {
    pub fn push(&mut self, record: impl AsRef<[u8]>) {
        self.0.get_or_insert_with(Default::default).push(record);
    }

    /// `push`, keeping `record`'s own buffer when it is the first.
    pub fn push_owned(&mut self, record: Vec<u8>) {
        self.0.get_or_insert_with(Default::default).push_owned(record);
    }
}

impl std::ops::Deref for RareRecords {
    type Target = RecordSet;

    fn deref(&self) -> &RecordSet {
        self.0.as_deref().unwrap_or(&NO_RECORDS)
    }
}

/// Some of `records`, in the order `order` gives.
pub struct Picked<'a> {
    pub records: &'a RecordSet,
    pub order: &'a [u16],
}

impl Records for Picked<'_> {
    fn count(&self) -> usize {
        self.order.len()
    }
    fn len_of(&self, i: usize) -> usize {
        self.records.len_of(self.order[i] as usize)
    }
    fn write_one(&self, i: usize, out: &mut Vec<u8>) {
        self.records.write_one(self.order[i] as usize, out);
    }
    fn total(&self) -> usize {
        // `order` never repeats a record: all of them in any order are all the bytes.
        if self.order.len() == self.records.len() {
            self.records.total()
        } else {
            (0..self.count()).map(|i| self.len_of(i)).sum()
        }
    }
}

/// The sections of a response.
pub struct Sections<'a> {
    pub rcode: u8,
    pub authoritative: bool,
    pub recursion_available: bool,
    pub answer: &'a dyn Records,
    pub authority: &'a dyn Records,
    pub additional: &'a dyn Records,
    pub opt: OptOut<'a>,
}

/// Assembles a response to `q` into `out`, fitting it into `limit` bytes (RFC 2181 §9): additional
/// records are dropped first, and TC is set only when the answer and authority sections do not fit,
/// in which case they are left out whole. Returns whether TC was set. Allocates nothing beyond
/// `out`.
pub fn write_response(q: &Query, s: &Sections, limit: usize, out: &mut Vec<u8>) -> bool {
    out.clear();
    let opt_len = if q.edns.is_some() { opt_len(&s.opt) } else { 0 };
    let base = HEADER_LEN + q.question.len() + opt_len;
    let required = s.answer.total() + s.authority.total();
    let truncated = base + required > limit;
    let (answers, authorities) = if truncated { (0, 0) } else { (s.answer.count(), s.authority.count()) };
    let mut room = limit.saturating_sub(base + if truncated { 0 } else { required });
    let mut additional = 0;
    if !truncated {
        for i in 0..s.additional.count() {
            let len = s.additional.len_of(i);
            if len > room {
                break;
            }
            room -= len;
            additional += 1;
        }
    }
    let mut flags: u16 = 0x8000 | (q.flags & 0x7900); // QR, opcode, RD; CD below
    if s.authoritative {
        flags |= 0x0400;
    }
    if truncated {
        flags |= 0x0200;
    }
    if s.recursion_available {
        flags |= 0x0080;
    }
    flags |= q.flags & 0x0010;
    flags |= (s.rcode & 0x0F) as u16;
    out.reserve(base + if truncated { 0 } else { required });
    out.extend_from_slice(&q.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers as u16).to_be_bytes());
    out.extend_from_slice(&(authorities as u16).to_be_bytes());
    out.extend_from_slice(&((additional + q.edns.is_some() as usize) as u16).to_be_bytes());
    out.extend_from_slice(q.question);
    s.answer.write_all(answers, out);
    s.authority.write_all(authorities, out);
    s.additional.write_all(additional, out);
    if let Some(e) = q.edns {
        write_opt(&s.opt, e.dnssec_ok, out);
    }
    truncated
}

/// A response carrying only a header (and the question, when it could be read): FORMERR, NOTIMP.
pub fn write_error(
    packet: &[u8],
    id: u16,
    flags: u16,
    question_end: Option<usize>,
    rcode: u8,
    out: &mut Vec<u8>,
) {
    out.clear();
    let question = question_end.and_then(|end| packet.get(HEADER_LEN..end)).unwrap_or_default();
    let flags = 0x8000 | (flags & 0x7900) | (flags & 0x0010) | rcode as u16;
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&(!question.is_empty() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(question);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16, edns: Option<(u16, u8)>) -> Vec<u8> {
        let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, edns.is_some() as u8];
        p.extend(encode_name(name).unwrap());
        p.extend(qtype.to_be_bytes());
        p.extend(CLASS_IN.to_be_bytes());
        if let Some((size, version)) = edns {
            p.push(0);
            p.extend(TYPE_OPT.to_be_bytes());
            p.extend(size.to_be_bytes());
            p.extend([0, version, 0, 0, 0, 0]);
        }
        p
    }

    #[test]
    fn parses_a_query_with_edns() {
        let p = query("Orders.Demo", TYPE_SRV, Some((4096, 0)));
        let q = parse_query(&p).unwrap();
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.qtype, TYPE_SRV);
        assert_eq!(name_to_string(q.qname), "Orders.Demo.");
        assert_eq!(q.edns.unwrap().payload, 4096);
        assert_eq!(q.udp_limit(), MAX_UDP_PAYLOAD as usize);
        let mut key = [0u8; 255];
        let n = lower_name_into(q.qname, &mut key);
        assert_eq!(&key[..n], encode_name("orders.demo").unwrap().as_slice());
    }

    #[test]
    fn rejects_what_it_must() {
        assert_eq!(parse_query(&[0; 5]), Err(Reject::Drop));
        let mut response = query("a.b", TYPE_A, None);
        response[2] |= 0x80;
        assert_eq!(parse_query(&response), Err(Reject::Drop));
        let mut notify = query("a.b", TYPE_SOA, None);
        notify[2] = 0x20; // opcode 4
        assert!(matches!(parse_query(&notify), Err(Reject::NotImp { .. })));
        // A compression pointer in the question (a loop to itself) is malformed.
        let mut looped = query("a", TYPE_A, None);
        looped.truncate(12);
        looped.extend([0xC0, 12, 0, 1, 0, 1]);
        assert!(matches!(parse_query(&looped), Err(Reject::FormErr { .. })));
        let mut trailing = query("a.b", TYPE_A, None);
        trailing.push(0);
        assert!(matches!(parse_query(&trailing), Err(Reject::FormErr { .. })));
        let mut two_opts = query("a.b", TYPE_A, Some((1232, 0)));
        two_opts[11] = 2;
        two_opts.extend([0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(parse_query(&two_opts), Err(Reject::FormErr { .. })));
    }

    #[test]
    fn truncation_drops_additional_before_setting_tc() {
        let p = query("x.y", TYPE_SRV, None);
        let q = parse_query(&p).unwrap();
        let big = vec![0u8; 200];
        let answer: Vec<&[u8]> = vec![&big];
        let additional: Vec<&[u8]> = vec![&big, &big];
        let none: Vec<&[u8]> = Vec::new();
        let s = Sections {
            rcode: 0,
            authoritative: true,
            recursion_available: false,
            answer: &answer.as_slice(),
            authority: &none.as_slice(),
            additional: &additional.as_slice(),
            opt: OptOut::default(),
        };
        let mut out = Vec::new();
        assert!(!write_response(&q, &s, 512, &mut out));
        assert_eq!(u16::from_be_bytes([out[10], out[11]]), 1, "one additional record fits");
        assert!(write_response(&q, &s, 200, &mut out));
        assert_eq!(out[2] & 0x02, 0x02, "TC set");
        assert_eq!(u16::from_be_bytes([out[6], out[7]]), 0);
    }

    #[test]
    fn rare_sections_hold_nothing_until_pushed_then_what_a_record_set_holds() {
        let mut rare = RareRecords::default();
        let mut out = vec![9];
        rare.write_all(rare.count(), &mut out);
        assert_eq!((rare.is_empty(), rare.count(), rare.total(), out), (true, 0, 0, vec![9]));
        let mut set = RecordSet::default();
        for r in [&[1u8][..], &[2, 2]] {
            rare.push(r);
            set.push(r);
        }
        let written = |r: &dyn Records| {
            let mut out = Vec::new();
            r.write_all(r.count(), &mut out);
            let mut second = Vec::new();
            r.write_one(1, &mut second);
            (r.count(), r.total(), second, out)
        };
        assert_eq!(written(&*rare), written(&set));
        assert_eq!(rare.len(), 2);
    }

    /// Records of one length keep what they begin with in common once: an A set is its shared
    /// 12 bytes (and more of the addresses, when they share it), then the rest of each address. Whatever is pushed, each record reads back whole.
    #[test]
    fn records_of_one_length_share_their_common_start_and_read_back_whole() {
        let mut set = RecordSet::default();
        let a = |i: u8| record(&[0xC0, 0x0C], TYPE_A, 60, &[10, 0, 0, i]);
        for i in 0..10 {
            set.push(a(i));
        }
        // 10.0.0.0-9: the owner pointer, type, class, TTL, length and 10.0.0 once, a byte each.
        assert_eq!(set.heap_parts()[0].1, 15 + 10, "the shared start once, then each rest");
        assert_eq!(set.heap_parts()[1], (0, 0), "no ends to keep");
        assert_eq!((set.len(), set.total(), set.len_of(9)), (10, 160, 16));
        assert_eq!(set.to_vec(7), a(7));
        let mut all = Vec::new();
        set.write_all(10, &mut all);
        assert_eq!(all, (0..10).flat_map(a).collect::<Vec<_>>());

        // Against records kept whole, over pushes of every kind: the same length sharing all,
        // some or none of the start so far, and another length (back to back from then on).
        let mut seed = 0x2545F4914F6CDD1Du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..500 {
            let (mut set, mut whole) = (RecordSet::default(), Vec::<Vec<u8>>::new());
            let len = 1 + next() as usize % 6;
            for _ in 0..next() % 12 {
                let r: Vec<u8> = match (whole.first(), next() % 8) {
                    (_, 0) => vec![next() as u8; 1 + next() as usize % 6],
                    (Some(first), 1..=4) => {
                        let mut r = first.clone();
                        if let Some(b) = r.get_mut(next() as usize % first.len().max(1)) {
                            *b ^= 1 << (next() % 2);
                        }
                        r
                    }
                    _ => (0..len).map(|_| (next() % 3) as u8).collect(),
                };
                if next() % 2 == 0 {
                    set.push(&r);
                } else {
                    set.push_owned(r.clone());
                }
                whole.push(r);
            }
            assert_eq!(set.len(), whole.len());
            assert_eq!(set.total(), whole.iter().map(Vec::len).sum::<usize>());
            for (i, r) in whole.iter().enumerate() {
                assert_eq!((set.len_of(i), set.to_vec(i)), (r.len(), r.clone()), "{whole:?}");
            }
            let (mut out, n) = (Vec::new(), next() as usize % (whole.len() + 1));
            set.write_all(n, &mut out);
            assert_eq!(out, whole[..n].concat());
        }
    }

    #[test]
    fn a_record_in_parts_is_the_record_and_a_first_one_pushed_owned_keeps_its_buffer() {
        let (mname, rname) = (b"\x02ns\x00".as_slice(), b"\x0ahostmaster\x04demo\x00".as_slice());
        let numbers = soa_numbers(1, 2, 3, 4, 0x0102_0304);
        assert_eq!(numbers[..4], [0, 0, 0, 1]);
        assert_eq!(numbers[16..], [1, 2, 3, 4]);
        let rdata = [mname, rname, &numbers].concat();
        let soa =
            record_of_parts(&[0xC0, 0x0C], TYPE_SOA, 60, &[mname, &rname[..11], &rname[11..], &numbers]);
        assert_eq!(soa, record(&[0xC0, 0x0C], TYPE_SOA, 60, &rdata));
        assert_eq!(soa_rdata(mname, rname, 1, 2, 3, 4, 0x0102_0304), rdata);

        let (copy, at) = (soa.clone(), soa.as_ptr());
        let mut authority = RareRecords::default();
        authority.push_owned(soa);
        assert_eq!(authority.heap_parts()[0].0, at as usize, "the record's own buffer");
        assert_eq!((authority.len(), authority.to_vec(0)), (1, copy.clone()));
        // A second record is copied in, as `push` would.
        authority.push_owned(copy.clone());
        assert_eq!((authority.len(), authority.to_vec(1)), (2, copy));
    }

    #[test]
    fn record_sets_keep_each_record_and_write_in_the_order_picked() {
        let p = query("x.y", TYPE_A, None);
        let q = parse_query(&p).unwrap();
        let mut set = RecordSet::default();
        for r in [&[1u8][..], &[2, 2], &[3, 3, 3]] {
            set.push(r);
        }
        assert_eq!(
            (set.len(), set.to_vec(0), set.to_vec(1), set.to_vec(2)),
            (3, vec![1u8], vec![2u8, 2], vec![3u8, 3, 3])
        );
        assert_eq!(set.total(), 6);
        let base = HEADER_LEN + q.question.len();
        let none = RecordSet::default();
        let write = |answer: &dyn Records, additional: &dyn Records, limit: usize| {
            let s = Sections {
                rcode: 0,
                authoritative: true,
                recursion_available: false,
                answer,
                authority: &none,
                additional,
                opt: OptOut::default(),
            };
            let mut out = Vec::new();
            write_response(&q, &s, limit, &mut out);
            (
                u16::from_be_bytes([out[6], out[7]]),
                u16::from_be_bytes([out[10], out[11]]),
                out[base..].to_vec(),
            )
        };
        assert_eq!(write(&set, &none, 512), (3, 0, vec![1, 2, 2, 3, 3, 3]));
        let picked = Picked { records: &set, order: &[2, 0] };
        assert_eq!(picked.total(), 4);
        assert_eq!(write(&picked, &none, 512), (2, 0, vec![3, 3, 3, 1]));
        // Additional records are cut at a record's end: room for the first two only.
        assert_eq!(write(&picked, &set, base + 4 + 3), (2, 2, vec![3, 3, 3, 1, 1, 2, 2]));
    }

    #[test]
    fn never_panics_on_random_bytes() {
        let mut seed = 0x9E3779B97F4A7C15u64;
        for len in 0..600 {
            let packet: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = parse_query(&packet);
        }
    }
}
