//! Fuzzes what upstream resolvers send back: any bytes in, read as the reply to the query they
//! claim to answer (so the ID and question checks pass and the record walk is reached), then
//! served from the cache to clients with and without EDNS, at several size limits. Upstream
//! bytes are untrusted input: this must never panic, and a served reply carries the client's ID.
//!
//! Run: cargo fuzz run --fuzz-dir tests/fuzz reply

#![no_main]

use cloudmap_dns::dns::wire;
use cloudmap_dns::forward::reply::{self, Ttls};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(id) = wire::u16_at(data, 0) else { return };
    let Some(name_end) = wire::read_plain_name(data, wire::HEADER_LEN) else { return };
    let Some(question) = data.get(wire::HEADER_LEN..name_end + 4) else { return };
    let Ok(template) = reply::accept(data, id, question, reply::Clamps { min_ttl: 0, max_ttl: 86_400, max_negative_ttl: 3600 }) else { return };
    for edns in [false, true] {
        let mut client = vec![0xAB, 0xCD, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, edns as u8];
        client.extend_from_slice(question);
        if edns {
            client.extend_from_slice(&[0, 0, 41, 4, 0, 0, 0, 0x80, 0, 0, 0]);
        }
        let Ok(q) = wire::parse_query(&client) else { return };
        for limit in [512, 1232, 65535] {
            let mut out = Vec::new();
            template.write(&q, limit, Ttls::Elapsed(1), Some((3, "stale")), &mut out);
            assert_eq!(out[..2], [0xAB, 0xCD], "the client's ID");
            assert_eq!(&out[wire::HEADER_LEN..wire::HEADER_LEN + question.len()], &client[wire::HEADER_LEN..wire::HEADER_LEN + question.len()]);
        }
    }
});
