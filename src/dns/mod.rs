//! The DNS side: wire format (`wire`), pre-encoded answers (`answer`), query handling and the
//! answer cache (`engine`), and the UDP and TCP listeners (`server`).

pub mod answer;
pub mod engine;
mod pktinfo;
pub mod server;
pub mod wire;
