//! The DNS side: wire format (`wire`), pre-encoded answers (`answer`), query handling and the
//! answer cache (`engine`), the UDP and TCP listeners (`server`), response rate limiting
//! (`ratelimit`), and CPU cache prefetches for the hot path (`prefetch`).

pub mod answer;
pub(crate) mod copies;
pub mod engine;
#[cfg(target_os = "linux")]
pub mod mmsg;
mod pktinfo;
pub(crate) mod prefetch;
pub mod ratelimit;
pub mod server;
pub mod wire;
