//! What the daemon reports, printed: `ls`, `show`, `status`, `stats`,
//! the command-not-found `hint`, and `restart`'s answer.

use std::process::ExitCode;

use anyhow::Context;
use odfs::protocol::{self, Request, Response};

use super::ask;

/// The rows of `list` for the command `only` names (all when none); the
/// error `none(command)` when it has none.
fn only_of<T>(mut list: Vec<T>, only: Option<&str>, command: impl Fn(&T) -> &String, none: impl Fn(&str) -> String) -> anyhow::Result<Vec<T>> {
    if let Some(c) = only {
        list.retain(|row| command(row) == c);
        if list.is_empty() {
            anyhow::bail!(none(c));
        }
    }
    Ok(list)
}

pub(crate) fn list(socket: &std::path::Path, only: Option<&str>, json: bool) -> anyhow::Result<()> {
    let Response::Commands(list) = ask(socket, Request::List)? else { anyhow::bail!("unexpected answer from the daemon") };
    // A command of the archive is not among the catalog's rows: its
    // package and view are all there is to show.
    if let Some(c) = only.filter(|c| !list.iter().any(|i| i.command == *c)) {
        if json {
            let v = view_of(socket, c)?;
            let row = serde_json::json!({"command": c, "package": v.package, "fetched": !v.unfetched, "host": v.host, "image": v.image});
            println!("{}", serde_json::to_string_pretty(&row)?);
            return Ok(());
        }
        return print_view(socket, c);
    }
    let list = only_of(list, only, |i| &i.command, |c| format!("{c} is not in the catalog (odfs ls lists what is)"))?;
    if json {
        let rows: Vec<_> = list
            .iter()
            .map(|i| serde_json::json!({"command": i.command, "image": i.image, "ref": i.reference, "program": i.program,
                "args": i.args, "network": i.network, "user": i.user, "keep_alive": i.keep_alive, "state": i.state.as_str(), "origin": i.origin, "version": i.version, "source": i.source}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&if only.is_some() { rows[0].clone() } else { serde_json::Value::Array(rows) })?);
    } else if let (Some(_), Some(i)) = (only, list.first()) {
        let args = if i.args.is_empty() { String::new() } else { format!(" {}", i.args.join(" ")) };
        println!("command:    {}\nimage:      {} ({})\nsource:     {}\nruns:       {}{}\nnetwork:    {}\nuser:       {}\nkeep-alive: {}\nstate:      {}\ndefined at: {}",
            i.command, i.image, i.reference, i.source, i.program, args, i.network, i.user, i.keep_alive, i.state.as_str(), i.origin);
        if !i.version.is_empty() {
            println!("version:    {}", i.version);
        }
        print_view(socket, &i.command)?;
    } else {
        println!("{:<20} {:<16} {:<10} {:<10} REF", "COMMAND", "IMAGE", "VERSION", "STATE");
        for i in list {
            let version = i.version.split(' ').next().unwrap_or("");
            println!("{:<20} {:<16} {:<10} {:<10} {}", i.command, i.image, if version.is_empty() { "-" } else { version }, i.state.as_str(), i.reference);
        }
    }
    Ok(())
}

/// What the daemon says a command's tool sees (and its package).
fn view_of(socket: &std::path::Path, command: &str) -> anyhow::Result<odfs::protocol::ViewInfo> {
    match ask(socket, Request::View { command: command.to_string() })? {
        Response::View(v) => Ok(v),
        Response::Error(f) => anyhow::bail!(f.message),
        _ => anyhow::bail!("unexpected answer from the daemon"),
    }
}

/// `odfs show`'s lines on what the tool sees of the host.
fn print_view(socket: &std::path::Path, command: &str) -> anyhow::Result<()> {
    let v = view_of(socket, command)?;
    let list = |l: &[String]| if l.is_empty() { "(none)".to_string() } else { l.join(" ") };
    if let Some((first, rest)) = v.package.split_first() {
        println!("command:    {command}\npackage:    {first}");
        for line in rest {
            println!("            {line}");
        }
    }
    if v.unfetched {
        println!("image:      not on this machine yet: its first call fetches it (as [archive.debian] fetch says); what it sees is known then");
        return Ok(());
    }
    if !v.version.is_empty() {
        println!("runs here: {}", v.version);
    }
    if v.remote {
        println!("host view:  {} (the remote host's remote_dirs; nothing else of this host)", list(&v.host));
        println!("processes:  {}", v.namespaces);
        println!("environment: {}", v.environment);
        if !v.devices.is_empty() {
            println!("devices:    {}", v.devices);
        }
        return Ok(());
    }
    println!("host view:  {} (same paths, the caller's permissions)", list(&v.host));
    let filled = if v.filled.is_empty() { String::new() } else { format!("; the image fills {}", v.filled.join(" ")) };
    println!("image's own: {} (read-only; a host path named there is refused{filled})", list(&v.image));
    if !v.private.is_empty() {
        println!("note: later mounts under {} do not reach the tool: their host mount is private (mount --make-rshared /)", v.private.join(" "));
    }
    println!("processes:  {}", v.namespaces);
    println!("environment: {}", v.environment);
    if !v.devices.is_empty() {
        println!("devices:    {}", v.devices);
    }
    Ok(())
}

/// `odfs hint`: one suggestion per provider on stderr, or silence and 1.
pub(crate) fn hint(socket: &std::path::Path, command: &str, mount: &std::path::Path) -> ExitCode {
    let answer = (|| -> anyhow::Result<Response> {
        let conn = std::os::unix::net::UnixStream::connect(socket)?;
        // A hook must never hang the shell: answer within a second or not at all.
        conn.set_read_timeout(Some(std::time::Duration::from_secs(1)))?;
        protocol::send(&conn, &Request::Hint { command: command.to_string() }, &[])?;
        protocol::recv::<Response>(&conn)?.map(|(r, _)| r).ok_or_else(|| anyhow::anyhow!("no answer"))
    })();
    let Ok(Response::Done(text)) = answer else { return ExitCode::from(1) };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("versions ") {
            let mut words = rest.split(' ');
            let base = words.next().unwrap_or_default();
            let offered: Vec<String> = words.map(|v| format!("{base}@{v}")).collect();
            eprintln!("odfs: the catalog offers {} (a .odfs.toml [pins] entry picks one per project; odfs show {base})", offered.join(", "));
            continue;
        }
        let mut f = line.splitn(3, ' ');
        match (f.next(), f.next(), f.next()) {
            (Some("archive"), Some(package), Some(rest)) => eprintln!(
                "odfs: {command} is in Debian package {package} {} of {}, served by odfs at {}: its first call fetches it; add it to the end of PATH: . /etc/profile.d/odfs.sh",
                rest.split_once(' ').map_or(rest, |v| v.0),
                rest.split_once(' ').map_or("", |v| v.1),
                mount.join(command).display()
            ),
            (Some("catalog"), Some(image), _) => eprintln!(
                "odfs: {command} is served by odfs (image {image}) at {}; add it to the end of PATH: . /etc/profile.d/odfs.sh",
                mount.join(command).display()
            ),
            (Some(image), Some(path), None) => eprintln!(
                "odfs: {command} is in image {image} ({path}) on this machine; to use it: sudo odfs add {command} --image {image} --path {path}"
            ),
            _ => {}
        }
    }
    ExitCode::SUCCESS
}

/// One request to a running daemon, one answer.
/// `odfs restart`: ask for a successor, then wait for the daemon that
/// answered (the control socket's peer) to hand over and exit. Under
/// systemd the daemon runs its binary anew in place and answers once it
/// serves again.
pub(crate) fn restart(socket: &std::path::Path) -> anyhow::Result<()> {
    let conn = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("daemon not reachable at {} (is `odfs mount` running?)", socket.display()))?;
    let old = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)?.pid();
    drop(conn);
    let text = match ask(socket, Request::Restart)? {
        Response::Done(text) => text,
        Response::Restarted(text) => {
            println!("{text}");
            return Ok(());
        }
        Response::Error(f) => anyhow::bail!("{f}"),
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // Gone, or a zombie its parent has not reaped yet.
    let running = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
    };
    while running(old) {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("restart: the daemon (pid {old}) has not handed over after 60 s; see its log");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ask(socket, Request::Status).context("restart: the new daemon does not answer; see its log")?;
    println!("{text}");
    Ok(())
}

pub(crate) fn status(socket: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let Response::Status { engine, containers: list, idle: budget, images, disk, archive } = ask(socket, Request::Status)? else {
        anyhow::bail!("unexpected answer from the daemon")
    };
    if json {
        let rows: Vec<_> = list
            .iter()
            .map(|c| serde_json::json!({"image": c.image, "container": c.container, "state": c.state.as_str(),
                                        "running_tools": c.running_tools, "idle_ms": c.idle_ms, "next": c.next,
                                        "exec_path": c.exec_path.as_str(), "memory": c.memory}))
            .collect();
        let engine = serde_json::json!({"host": engine.host, "remote": engine.remote, "exec_path": engine.exec_path.as_str(),
                                        "source": engine.source, "version": engine.version.as_ref().ok(), "runtime": engine.runtime,
                                        "error": engine.version.as_ref().err()});
        let images: Vec<_> = images
            .iter()
            .map(|i| serde_json::json!({"references": i.references, "id": i.id, "size": i.size, "last_used_ms": i.last_used_ms,
                                        "containers": i.containers, "needed": i.needed}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"engine": engine, "containers": rows, "idle_budget": budget, "images": images, "disk": disk,
                "archive": archive.iter().map(|(ok, line)| serde_json::json!({"ok": ok, "line": line})).collect::<Vec<_>>()}))?
        );
    } else {
        let place = if engine.remote { "remote" } else { "local" };
        let answer = engine.version.unwrap_or_else(|e| format!("NOT REACHABLE: {e}"));
        println!("engine: {} ({place}, exec path {}, from {}): {answer}", engine.host, engine.exec_path.as_str(), engine.source);
        println!("runtime: {}", engine.runtime);
        println!("idle: {budget}");
        for (ok, line) in &archive {
            let tag = match ok {
                Some(false) => "MISSING: ",
                None => "note: ",
                Some(true) => "",
            };
            println!("{tag}{line}");
        }
        println!("{:<16} {:<12} {:>7} {:>7} {:>9} {:<5}  {:<40} NEXT", "IMAGE", "STATE", "RUNNING", "IDLE", "MEMORY", "EXEC", "CONTAINER");
        for c in list {
            let idle = format!("{}s", c.idle_ms / 1000);
            let memory = if c.memory == 0 { "-".to_string() } else { format!("{:.1}M", c.memory as f64 / (1u64 << 20) as f64) };
            println!("{:<16} {:<12} {:>7} {:>7} {:>9} {:<5}  {:<40} {}", c.image, c.state.as_str(), c.running_tools, idle, memory, c.exec_path.as_str(), c.container, c.next);
        }
        println!();
        println!("disk: {disk}");
        println!("{:<14} {:>10} {:>10} {:<8} REFERENCE", "IMAGE ID", "SIZE", "LAST USED", "NEEDED");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        for i in images {
            let used = i.last_used_ms.map_or("never".to_string(), |t| format!("{}d ago", (now - t).max(0) / 86_400_000));
            let id = i.id.strip_prefix("sha256:").unwrap_or(&i.id);
            let names = if i.references.is_empty() { "(untagged)".to_string() } else { i.references.join(", ") };
            let size = format!("{:.1}M", i.size as f64 / (1u64 << 20) as f64);
            println!("{:<14} {:>10} {:>10} {:<8} {names}", &id[..id.len().min(12)], size, used, if i.needed { "catalog" } else { "-" });
        }
    }
    Ok(())
}

pub(crate) fn stats(socket: &std::path::Path, only: Option<&str>, json: bool) -> anyhow::Result<()> {
    let Response::Stats(list) = ask(socket, Request::Stats)? else { anyhow::bail!("unexpected answer from the daemon") };
    let list = only_of(list, only, |s| &s.command, |c| format!("{c}: no calls recorded since the daemon started"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list.iter().map(|s| serde_json::json!({
            "command": s.command, "image": s.image, "calls": s.calls, "warm": s.warm, "paused": s.paused, "cold": s.cold,
            "mtbc_s": s.mtbc, "mtts_s": s.mtts, "mtte_s": s.mtte, "epsilon_s": s.epsilon, "keep_alive": s.window,
        })).collect::<Vec<_>>())?);
        return Ok(());
    }
    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
    println!("{:<16} {:<12} {:>6} {:>5} {:>6} {:>5} {:>9} {:>8} {:>8} {:>9}  KEEP-ALIVE", "COMMAND", "IMAGE", "CALLS", "WARM", "PAUSED", "COLD", "MTBC s", "MTTS s", "MTTE s", "EPSILON s");
    for s in list {
        println!(
            "{:<16} {:<12} {:>6} {:>5} {:>6} {:>5} {:>9} {:>8} {:>8} {:>9}  {}",
            s.command, s.image, s.calls, s.warm, s.paused, s.cold, f(s.mtbc), f(s.mtts), f(s.mtte), f(s.epsilon), s.window
        );
    }
    Ok(())
}
