//! The benchmark's results as a Markdown report (with the targets they are
//! held to) and as a plot of the warm-call latency distributions.

use std::path::Path;

use super::run::Results;
use super::stats::Measured;
use super::stats::{figure, markdown_table, ratio};

/// Markers around the generated part of docs/performance.md: the text
/// outside them is written by hand and kept.
pub const BEGIN: &str = "<!-- odfs-bench: generated, do not edit -->";
pub const END: &str = "<!-- odfs-bench: end -->";

fn row(m: &Measured, unit: &str, against: Option<&Measured>) -> Vec<String> {
    vec![
        m.name.clone(),
        m.summary.n.to_string(),
        format!("{} {unit}", figure(m.summary.median)),
        format!("{} {unit}", figure(m.summary.p90)),
        against.map_or(String::new(), |a| ratio(m.summary.median, a.summary.median)),
    ]
}

fn check(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "missed"
    }
}

/// The report: tables per section, then the targets and whether each was met.
pub fn markdown(r: &Results, machine: &str) -> String {
    let header = ["candidate", "n", "median", "p90", "ratio"];
    let native = &r.warm[0];
    let mut out = format!("Machine: {machine}\n\n");

    out += "### 1. Warm call of `true` (ratio: to native)\n\n";
    out += &markdown_table(&header, &r.warm.iter().map(|m| row(m, "ms", Some(native))).collect::<Vec<_>>());

    out += &stages(&r.stages);

    out += "\n### 2. Paused and cold calls (ratio: to `docker run --rm`)\n\n";
    let docker_cold = &r.cold[1];
    let mut rows: Vec<Vec<String>> = r.paused.iter().map(|m| row(m, "ms", Some(docker_cold))).collect();
    rows.extend(r.cold.iter().map(|m| row(m, "ms", Some(docker_cold))));
    out += &markdown_table(&header, &rows);
    let (ahead_memory, ahead_disk) = r.held.made_ahead;
    out += &format!(
        "\nWhat an idle container holds: frozen, {:.1} MiB (its cgroup and the engine's process beside it, as the idle budget counts them); \
         made ahead (created, not started), {} B of memory (no process) and {} B of writable layer on the engine's disk.\n",
        r.held.frozen_bytes as f64 / (1u64 << 20) as f64,
        ahead_memory,
        ahead_disk
    );
    out += &brought("a cold call (its container started for it, made ahead or not)", &r.cold_stages);
    out += &brought("a paused call (its container thawed for it)", &r.paused_stages);

    out += "\n### 3. Stdio throughput through `cat` (MB/s; ratio: to native)\n\n";
    out += &markdown_table(&header, &r.stdio.iter().map(|m| row(m, "MB/s", Some(&r.stdio[0]))).collect::<Vec<_>>());

    let b = &r.burst;
    out += &format!(
        "\n### 4. Burst\n\n{} concurrent first calls of a command whose container is absent: {} ms wall, {} container(s) created, {} failure(s).\n",
        b.callers,
        figure(b.wall_ms),
        b.containers,
        b.failures
    );

    let d = &r.discovery;
    out += &format!("\n### 5. Discovery in a catalog of {} commands (ratio: to the empty-dir miss)\n\n", d.commands);
    out += &markdown_table(
        &header,
        &[row(&d.ls, "ms", None), row(&d.miss_mount, "ms", Some(&d.miss_empty)), row(&d.miss_empty, "ms", None)],
    );
    out += &format!("\nDaemon RSS with {} commands: {:.1} MiB.\n", d.commands, d.rss_kib as f64 / 1024.0);

    out += "\n### 6. The launcher's own cost\n\n";
    out += &match r.launcher_instructions {
        Some(n) => format!("{n} instructions per warm call (valgrind callgrind, median).\n"),
        None => "not measured: valgrind is not installed.\n".to_string(),
    };

    out += "\n### 7. Remote engine: the relay path against the local fd path\n\n";
    out += &remote(r.remote.as_ref(), &header);

    let (calls, loops) = r.loops.first().map_or((0, 0), |l| (l.calls, l.native.samples.len()));
    out += &format!("\n### 8. Loops of {calls} calls of `true` (ms per call, {loops} loop(s) each; ratio: to native)\n\n");
    let rows: Vec<Vec<String>> = r.loops.iter().flat_map(|l| [row(&l.native, "ms", None), row(&l.odfs, "ms", Some(&l.native))]).collect();
    out += &markdown_table(&header, &rows);

    out += "\n### Targets\n\n";
    out += &targets(r);
    out
}

/// Section 7: the relay path of a remote engine against the local fd path.
fn remote(rr: Option<&super::run::RemoteResults>, header: &[&str]) -> String {
    match rr {
        Some(rr) => {
            let mut t = format!("Remote engine: {} (loopback TCP with TLS).\n\nWarm call of `true` (ratio: to the local fd path):\n\n", rr.engine);
            t += &markdown_table(header, &rr.warm.iter().map(|m| row(m, "ms", Some(&rr.warm[0]))).collect::<Vec<_>>());
            t += "\nStdio throughput through `cat` (MB/s; ratio: to the local fd path):\n\n";
            t += &markdown_table(header, &rr.stdio.iter().map(|m| row(m, "MB/s", Some(&rr.stdio[0]))).collect::<Vec<_>>());
            t += &format!("\nCalls of `true` per second, {} concurrent callers:\n\n", rr.parallel);
            let rows: Vec<Vec<String>> = rr.calls_per_s.iter().map(|(name, v)| vec![name.clone(), format!("{v:.0} calls/s")]).collect();
            t += &markdown_table(&["path", "throughput"], &rows);
            t
        }
        None => "not measured: no remote engine given (`--remote`).\n".to_string(),
    }
}

/// The targets, each with what was measured and whether it was met.
fn targets(r: &Results) -> String {
    let native = &r.warm[0];
    let (shim, exec) = (&r.warm[1], &r.warm[2]);
    let docker_cold = &r.cold[1];
    let (b, d) = (&r.burst, &r.discovery);
    let med = |m: &Measured| m.summary.median;
    let targets = vec![
        vec!["warm shim ≤ 2.0× native".into(), ratio(med(shim), med(native)), check(med(shim) <= 2.0 * med(native)).into()],
        vec![
            "warm shim p90 ≤ 2.5× native p90".into(),
            ratio(shim.summary.p90, native.summary.p90),
            check(shim.summary.p90 <= 2.5 * native.summary.p90).into(),
        ],
        vec!["warm shim ≤ 1/25 of docker exec".into(), format!("1/{:.0}", med(exec) / med(shim)), check(med(shim) * 25.0 <= med(exec)).into()],
        vec![
            "pinned bare name ≤ 1.1× NAME@VERSION (warm)".into(),
            ratio(med(&r.warm[4]), med(&r.warm[5])),
            check(med(&r.warm[4]) <= 1.1 * med(&r.warm[5])).into(),
        ],
        vec!["paused ≤ 1.5× warm".into(), ratio(med(&r.paused[0]), med(shim)), check(med(&r.paused[0]) <= 1.5 * med(shim)).into()],
        vec!["cold ≤ 0.3× docker run --rm".into(), ratio(med(&r.cold[0]), med(docker_cold)), check(med(&r.cold[0]) <= 0.3 * med(docker_cold)).into()],
        vec!["stdio ≥ 0.95× native".into(), ratio(med(&r.stdio[1]), med(&r.stdio[0])), check(med(&r.stdio[1]) >= 0.95 * med(&r.stdio[0])).into()],
        vec!["burst: 1 container, 0 failures".into(), format!("{}, {}", b.containers, b.failures), check(b.containers == 1 && b.failures == 0).into()],
        vec![format!("ls of {} ≤ 50 ms", d.commands), format!("{} ms", figure(med(&d.ls))), check(med(&d.ls) <= 50.0).into()],
        vec![
            "PATH miss ≤ 2× empty-dir miss".into(),
            ratio(med(&d.miss_mount), med(&d.miss_empty)),
            check(med(&d.miss_mount) <= 2.0 * med(&d.miss_empty)).into(),
        ],
        vec![
            format!("daemon RSS ≤ 50 MiB at {}", d.commands),
            format!("{:.1} MiB", d.rss_kib as f64 / 1024.0),
            check(d.rss_kib <= 50 * 1024).into(),
        ],
    ];
    let mut targets = targets;
    if let Some(n) = r.launcher_instructions {
        targets.push(vec!["launcher ≤ 90k instructions per warm call".into(), n.to_string(), check(n <= 90_000).into()]);
    }
    for l in &r.loops {
        let (native, odfs) = (med(&l.native), med(&l.odfs));
        targets.push(if l.how.ends_with("-P8") {
            // In parallel, what counts is calls per second.
            vec![format!("{} ≥ 0.5× native throughput", l.how), ratio(native, odfs), check(native >= 0.5 * odfs).into()]
        } else {
            vec![format!("{} ≤ 2.2× native", l.how), ratio(odfs, native), check(odfs <= 2.2 * native).into()]
        });
    }
    markdown_table(&["target", "measured", ""], &targets)
}

/// Section 2b: where the time of calls whose container came up for them
/// goes, stage by stage.
fn brought(what: &str, b: &super::run::Brought) -> String {
    let mut out = format!(
        "\nWhere {what} spends its time: {} calls traced (`ODFS_STAGES`), whole call median {} ms.\n\n",
        b.whole.summary.n,
        figure(b.whole.summary.median)
    );
    let share = |m: &Measured| format!("{:.0}%", 100.0 * m.summary.median / b.whole.summary.median);
    let rows: Vec<Vec<String>> =
        b.stages.iter().map(|m| vec![m.name.clone(), format!("{} ms", figure(m.summary.median)), format!("{} ms", figure(m.summary.p90)), share(m)]).collect();
    out += &markdown_table(&["stage", "median", "p90", "share"], &rows);
    out
}

/// Section 1b: the stages of traced warm calls, with their share of the
/// whole, and what runs alongside the tool.
fn stages(st: &super::run::Stages) -> String {
    let mut out = format!(
        "\nWhere a warm call's time goes: {} calls traced stage by stage (`ODFS_STAGES`), each beside a native call \
         (native median {} ms, traced call median {} ms). The stages follow one another; medians do not add up exactly.\n\n",
        st.whole.summary.n,
        figure(st.native.summary.median),
        figure(st.whole.summary.median)
    );
    let share = |m: &Measured| format!("{:.0}%", 100.0 * m.summary.median / st.whole.summary.median);
    let mut rows: Vec<Vec<String>> = st
        .stages
        .iter()
        .map(|m| vec![m.name.clone(), format!("{} ms", figure(m.summary.median)), format!("{} ms", figure(m.summary.p90)), share(m)])
        .collect();
    rows.extend(st.alongside.iter().map(|m| {
        vec![format!("(alongside) {}", m.name), format!("{} ms", figure(m.summary.median)), format!("{} ms", figure(m.summary.p90)), String::new()]
    }));
    out += &markdown_table(&["stage", "median", "p90", "share"], &rows);
    out
}

/// Put `generated` between the markers of `doc` (appending them if absent),
/// keeping the hand-written text around.
pub fn splice(doc: &str, generated: &str) -> String {
    let block = format!("{BEGIN}\n{generated}{END}");
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{block}{}", &doc[..a], &doc[b + END.len()..]),
        _ => format!("{doc}\n{block}\n"),
    }
}

/// Cumulative distributions of the warm calls on a log time axis.
pub fn plot(r: &Results, png: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    let font = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
        .map_err(|e| format!("no font for the plot (fonts-dejavu-core): {e}"))?;
    // plotters keeps registered fonts for the life of the process.
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into_boxed_slice()))
        .map_err(|_| "cannot load the plot font".to_string())?;
    let series: Vec<&Measured> = r.warm.iter().chain([&r.paused[0], &r.cold[0]]).collect();
    let all: Vec<f64> = series.iter().flat_map(|m| m.samples.iter().copied()).filter(|x| *x > 0.0).collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min).max(0.01) * 0.8;
    let hi = all.iter().copied().fold(0.0, f64::max).max(lo * 10.0) * 1.2;
    let root = BitMapBackend::new(png, (960, 540)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("odfs: latency of one call of `true` (cumulative)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("milliseconds (log scale)")
        .y_desc("fraction of calls")
        .draw()
        .map_err(|e| err(&e))?;
    let colors = [BLACK, BLUE, RED, MAGENTA, GREEN, CYAN];
    for (m, color) in series.iter().zip(colors) {
        let mut s = m.samples.clone();
        s.sort_by(f64::total_cmp);
        let n = s.len() as f64;
        // A step from 0 at the fastest call, so short series show too.
        let mut points = vec![(s.first().copied().unwrap_or(lo), 0.0)];
        points.extend(s.iter().enumerate().map(|(i, x)| (*x, (i + 1) as f64 / n)));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(format!("{} (median {} ms)", m.name, figure(m.summary.median)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splicing_keeps_the_hand_written_text() {
        let doc = format!("# Perf\nintro\n{BEGIN}\nold table\n{END}\n## Where the time goes\nanalysis\n");
        let out = splice(&doc, "new table\n");
        assert_eq!(out, format!("# Perf\nintro\n{BEGIN}\nnew table\n{END}\n## Where the time goes\nanalysis\n"));
        let fresh = splice("# Perf\n", "t\n");
        assert_eq!(fresh, format!("# Perf\n\n{BEGIN}\nt\n{END}\n"));
    }
}
