//! `odfs-agent`: PID 1 in every odfs container, and the relay of a call on a
//! remote engine (see `odfs::agent`).

fn main() {
    match odfs::agent::parse_args(std::env::args()) {
        Ok(odfs::agent::Mode::Serve(config)) => odfs::agent::run(config),
        Ok(odfs::agent::Mode::Relay { socket }) => std::process::exit(odfs::agent::relay::run(&socket)),
        Ok(odfs::agent::Mode::Hold) => odfs::agent::hold(),
        Err(e) => {
            eprintln!("odfs-agent: {e}; usage: odfs-agent [relay] --socket PATH [--allow-local-peers] | odfs-agent hold");
            std::process::exit(2);
        }
    }
}
