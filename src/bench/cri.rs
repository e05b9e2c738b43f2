//! `odfs-bench --cri URL`: the same calls on a CRI engine (containerd or
//! CRI-O) and on the machine's Docker engine, alternated round by round:
//! a warm call (the fd path, which should not depend on the engine), a
//! cold one (a profile's first call: its sandbox and container made and
//! started), and stdio through `cat`.

use std::process::Command;

use super::run::{shuffled, time_ms, Binaries, Mount, RemoteEngine, IMAGE};
use super::stats::{markdown_table, ratio, Measured};

pub struct Figures {
    pub engine: String,
    /// Docker's, then the CRI engine's.
    pub warm: [Measured; 2],
    pub cold: [Measured; 2],
}

/// A catalog of one warm profile and `cold` profiles of one command each,
/// told apart by their `pids` limit so each has a container of its own.
fn catalog(cold: usize) -> String {
    let mut text = format!("[image.warm]\nref = \"{IMAGE}\"\nnetwork = \"none\"\nkeep_alive = \"1h\"\ncommands = [\"true\"]\n");
    for i in 0..cold {
        text += &format!(
            "\n[image.cold{i}]\nref = \"{IMAGE}\"\nnetwork = \"none\"\nkeep_alive = \"1h\"\npids = {}\n\n[command.cold{i}-true]\nimage = \"cold{i}\"\npath = \"/bin/true\"\n",
            5000 + i
        );
    }
    text
}

/// `rounds` warm calls and `cold` first calls on each engine.
pub fn run(bins: &Binaries, url: &str, rounds: usize, cold: usize, progress: &mut dyn FnMut(&str)) -> std::io::Result<Figures> {
    let text = catalog(cold);
    let docker = Mount::start(bins, "docker", &text)?;
    let cri = Mount::start_on(bins, "cri", &text, Some(&RemoteEngine { url: url.to_string(), certs: None }))?;
    let mounts = [&docker, &cri];
    let call = |m: &Mount, tool: &str| {
        let mut c = Command::new(m.shim(tool));
        c.current_dir(m.work());
        time_ms(&mut c)
    };
    progress("CRI engine: cold calls (a sandbox and a container each)");
    let mut cold_ms: [Vec<f64>; 2] = Default::default();
    for round in 0..cold {
        shuffled(round, 2, |i| {
            cold_ms[i].push(call(mounts[i], &format!("cold{round}-true"))?);
            Ok(())
        })?;
    }
    progress("CRI engine: warm calls");
    for m in mounts {
        call(m, "true")?;
    }
    let mut warm_ms: [Vec<f64>; 2] = Default::default();
    for round in 0..rounds {
        shuffled(round, 2, |i| {
            warm_ms[i].push(call(mounts[i], "true")?);
            Ok(())
        })?;
    }
    let [wd, wc] = warm_ms;
    let [cd, cc] = cold_ms;
    Ok(Figures {
        engine: url.to_string(),
        warm: [Measured::new("Docker engine", wd), Measured::new("CRI engine", wc)],
        cold: [Measured::new("Docker engine", cd), Measured::new("CRI engine", cc)],
    })
}

pub fn markdown(f: &Figures) -> String {
    let rows = |m: &[Measured; 2]| -> Vec<Vec<String>> {
        m.iter()
            .map(|x| vec![x.name.clone(), format!("{:.2} ms", x.summary.median), format!("{:.2} ms", x.summary.p90), ratio(x.summary.median, m[0].summary.median), x.summary.n.to_string()])
            .collect()
    };
    let header = ["engine", "median", "p90", "ratio", "samples"];
    let mut out = format!("CRI engine: {} (one run, alternated with the machine's Docker engine).\n\nWarm call of `true`:\n\n", f.engine);
    out += &markdown_table(&header, &rows(&f.warm));
    out += "\nCold call of `true` (the profile's first):\n\n";
    out += &markdown_table(&header, &rows(&f.cold));
    let (d, c) = (f.warm[0].summary.median, f.warm[1].summary.median);
    out += &format!("\n- warm through the CRI / through Docker: {} (target ≤ 1.2: {})\n", ratio(c, d), if c <= 1.2 * d { "met" } else { "missed" });
    out
}
