//! Load generator for the restaurant points server. It speaks only the wire
//! contract (REST login, `/ws`, commands), so it can measure any server that
//! speaks it. The scenarios arrive with the load-test work; this binary
//! states so instead of pretending to measure.

fn main() {
    eprintln!("loadtest: no scenarios yet; see protocol/README.md for the wire contract");
    std::process::exit(2);
}
