//! The benchmarks' UDP load generator (bench/udp_load.rs) as a command, for scripts that put it beside
//! other servers (bench/half-load.sh):
//!
//! `loadgen SERVER[,SERVER...] QUERY_FILE SECONDS RATE|max[,RATE...] [CPU [SLICE_MS]]`
//!
//! RATE: queries per second, open loop; `max`: 200 queries in flight, as fast as the server
//! answers. CPU pins the generator. Prints one line: qps, sent, received, lost, bad, latency
//! percentiles (ms).
//!
//! Several servers (and a rate each, or one for all) are loaded in turn, SLICE_MS each (default
//! 20), until each has had SECONDS of load: servers that share a CPU then share its
//! interruptions. One line per server, `server ADDRESS` first.
//!
//! With `LOADGEN_POOL=DIR`, each server's run is also added to `DIR/ADDRESS.pool`, and
//! `loadgen pooled FILE` prints the line of every run added there as one: percentiles over all
//! their queries, steadier from run to run than any one run's (a run's p99 turns on which server's
//! turns the hypervisor's steal happened to fall in).
//!
//! With `LOADGEN_SLOW=DIR`, each server's answers that took 0.5 ms or more are listed in
//! `DIR/ADDRESS.slow`, one `SENT_US LATENCY_US` line each (sent: µs since the run began): whether
//! a tail is scattered answers (a server's own cost) or bursts of them (a stall).

#[path = "udp_load.rs"]
mod udp_load;

use std::net::SocketAddr;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, file] = args.as_slice()
        && cmd == "pooled"
    {
        let report = std::fs::read_to_string(file).ok().and_then(|t| udp_load::Report::from_text(&t));
        let Some(report) = report else {
            eprintln!("loadgen: {file} is not a pool file");
            std::process::exit(2);
        };
        println!("{}", report.line());
        return;
    }
    let [servers, file, seconds, rates, rest @ ..] = args.as_slice() else {
        eprintln!("usage: loadgen SERVER[,SERVER...] QUERY_FILE SECONDS RATE|max[,RATE...] [CPU [SLICE_MS]]");
        std::process::exit(2);
    };
    let fail = |what: &str| -> ! {
        eprintln!("loadgen: {what}");
        std::process::exit(2)
    };
    let servers: Vec<SocketAddr> =
        servers.split(',').map(|s| s.parse().unwrap_or_else(|_| fail("SERVER is ADDRESS:PORT"))).collect();
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| fail(&format!("{file}: {e}")));
    let queries = udp_load::query_file(&text);
    if queries.is_empty() {
        fail("no queries in the file");
    }
    let seconds: f64 =
        seconds.parse().ok().filter(|s: &f64| *s > 0.0).unwrap_or_else(|| fail("SECONDS is a number"));
    let paces: Vec<udp_load::Pace> = rates
        .split(',')
        .map(|rate| match rate {
            "max" => udp_load::Pace::Window(200),
            r => udp_load::Pace::Rate(
                r.parse().ok().filter(|r: &f64| *r > 0.0).unwrap_or_else(|| fail("RATE is a number or max")),
            ),
        })
        .collect();
    if paces.len() != 1 && paces.len() != servers.len() {
        fail("give one RATE, or one per SERVER");
    }
    let slow_dir = std::env::var("LOADGEN_SLOW").ok().filter(|d| !d.is_empty());
    let targets: Vec<udp_load::Target> = servers
        .iter()
        .enumerate()
        .map(|(i, &server)| udp_load::Target {
            server,
            pace: paces[i.min(paces.len() - 1)],
            list_slow: slow_dir.is_some(),
        })
        .collect();
    if let Some(cpu) = rest.first() {
        udp_load::pin_to(cpu.parse().unwrap_or_else(|_| fail("CPU is a number")));
    }
    let duration = Duration::from_secs_f64(seconds);
    let slice = match rest.get(1) {
        Some(ms) => Duration::from_millis(
            ms.parse().ok().filter(|ms: &u64| *ms > 0).unwrap_or_else(|| fail("SLICE_MS is a whole number")),
        ),
        None if targets.len() == 1 => duration,
        None => Duration::from_millis(20),
    };
    let reports = udp_load::run_interleaved(&targets, &queries, duration, slice);
    if let Some(dir) = std::env::var("LOADGEN_POOL").ok().filter(|d| !d.is_empty()) {
        for (target, report) in targets.iter().zip(&reports) {
            let path = std::path::Path::new(&dir).join(format!("{}.pool", target.server));
            let pooled = match std::fs::read_to_string(&path) {
                Ok(text) => match udp_load::Report::from_text(&text) {
                    Some(before) => before.merge(report.clone()),
                    None => fail(&format!("{} is not a pool file", path.display())),
                },
                Err(_) => report.clone(),
            };
            if let Err(e) = std::fs::write(&path, pooled.to_text()) {
                fail(&format!("{}: {e}", path.display()));
            }
        }
    }
    if let Some(dir) = slow_dir {
        for (target, report) in targets.iter().zip(&reports) {
            let path = std::path::Path::new(&dir).join(format!("{}.slow", target.server));
            let text: String = report.slow.iter().map(|(at, us)| format!("{at} {us}\n")).collect();
            if let Err(e) = std::fs::write(&path, text) {
                fail(&format!("{}: {e}", path.display()));
            }
        }
    }
    if let [report] = reports.as_slice() {
        println!("{}", report.line());
    } else {
        for (target, report) in targets.iter().zip(&reports) {
            println!("server {} {}", target.server, report.line());
        }
    }
}
