//! The benchmarks' UDP load generator (bench/udp_load.rs) as a command, for scripts that put it beside
//! other servers (bench/half-load.sh):
//!
//! `loadgen SERVER QUERY_FILE SECONDS RATE|max [CPU]`
//!
//! RATE: queries per second, open loop; `max`: 200 queries in flight, as fast as the server
//! answers. CPU pins the generator. Prints one line: qps, sent, received, lost, bad, latency
//! percentiles (ms).

#[path = "udp_load.rs"]
mod udp_load;

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, file, seconds, rate, rest @ ..] = args.as_slice() else {
        eprintln!("usage: loadgen SERVER QUERY_FILE SECONDS RATE|max [CPU]");
        std::process::exit(2);
    };
    let fail = |what: &str| -> ! {
        eprintln!("loadgen: {what}");
        std::process::exit(2)
    };
    let server = server.parse().unwrap_or_else(|_| fail("SERVER is ADDRESS:PORT"));
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| fail(&format!("{file}: {e}")));
    let queries = udp_load::query_file(&text);
    if queries.is_empty() {
        fail("no queries in the file");
    }
    let seconds: f64 = seconds.parse().unwrap_or_else(|_| fail("SECONDS is a number"));
    let pace = match rate.as_str() {
        "max" => udp_load::Pace::Window(200),
        r => udp_load::Pace::Rate(
            r.parse().ok().filter(|r: &f64| *r > 0.0).unwrap_or_else(|| fail("RATE is a number or max")),
        ),
    };
    if let Some(cpu) = rest.first() {
        udp_load::pin_to(cpu.parse().unwrap_or_else(|_| fail("CPU is a number")));
    }
    let report = udp_load::run(server, &queries, pace, Duration::from_secs_f64(seconds));
    println!("{}", report.line());
}
