//! The DNS side: wire format (`wire`), pre-encoded answers (`answer`), query handling and the
//! answer cache (`engine`), the UDP and TCP listeners (`server`), and response rate limiting
//! (`ratelimit`).

pub mod answer;
pub mod engine;
#[cfg(target_os = "linux")]
pub mod mmsg;
mod pktinfo;
pub mod ratelimit;
pub mod server;
pub mod wire;
