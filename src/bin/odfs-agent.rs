//! `odfs-agent`: PID 1 in every odfs container (see `odfs::agent`).

fn main() {
    match odfs::agent::parse_args(std::env::args()) {
        Ok(config) => odfs::agent::run(config),
        Err(e) => {
            eprintln!("odfs-agent: {e}; usage: odfs-agent --socket PATH [--allow-local-peers]");
            std::process::exit(2);
        }
    }
}
