//! What the benchmark modules share: the child-role variable, the machine
//! name, result rows, and the JSON/SVG report.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Environment variable telling a child process its role.
pub const ROLE: &str = "XENRING_BENCH_ROLE";

/// One measured figure, with what it is compared against.
#[derive(Debug, Clone)]
pub struct Row {
    /// Figure group, e.g. "P1 stream throughput".
    pub group: &'static str,
    /// What was measured, e.g. "xenring vchan stream".
    pub name: String,
    /// The value.
    pub value: f64,
    /// Its unit, e.g. "MB/s", "req/s", "us".
    pub unit: &'static str,
}

/// CPU model and core count.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cpu}, {cores} cores")
}

/// Starts this binary again in `role`, with `envs`, stdout piped.
#[allow(dead_code)] // until a figure module spawns children
pub fn spawn(role: &str, envs: &[(&str, String)]) -> Child {
    let mut c = Command::new(std::env::current_exe().expect("own path"));
    c.env(ROLE, role).stdout(Stdio::piped());
    for (k, v) in envs {
        c.env(k, v);
    }
    c.spawn().expect("spawn a benchmark child")
}

/// Prints the table and writes JSON and an SVG bar chart (each group's bars
/// scaled to that group's largest value).
pub fn report(machine: &str, rows: &[Row]) {
    println!();
    let mut group = "";
    for r in rows {
        if r.group != group {
            group = r.group;
            println!("{group}:");
        }
        println!("  {:<52} {:>12.1} {}", r.name, r.value, r.unit);
    }
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/xenring-bench");
    std::fs::create_dir_all(&out).expect("create target/xenring-bench");
    let json_rows: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "    {{\"group\": {:?}, \"name\": {:?}, \"value\": {:.3}, \"unit\": {:?}}}",
                r.group, r.name, r.value, r.unit
            )
        })
        .collect();
    let json = format!(
        "{{\n  \"machine\": {machine:?},\n  \"rows\": [\n{}\n  ]\n}}\n",
        json_rows.join(",\n")
    );
    std::fs::write(out.join("transport.json"), json).expect("write transport.json");
    std::fs::write(out.join("transport.svg"), svg(machine, rows)).expect("write transport.svg");
    println!("\nwritten to {}/transport.{{json,svg}}", out.display());
}

fn svg(machine: &str, rows: &[Row]) -> String {
    let bar_h = 22.0;
    let left = 360.0;
    let width = 900.0;
    let mut y = 50.0;
    let mut body = String::new();
    let mut groups: Vec<&str> = Vec::new();
    for r in rows {
        if !groups.contains(&r.group) {
            groups.push(r.group);
        }
    }
    for g in groups {
        let members: Vec<&Row> = rows.iter().filter(|r| r.group == g).collect();
        let max = members
            .iter()
            .map(|r| r.value)
            .fold(0.0f64, f64::max)
            .max(1e-9);
        body.push_str(&format!(
            "<text x=\"10\" y=\"{y}\" font-weight=\"bold\">{}</text>\n",
            esc(g)
        ));
        y += 8.0;
        for r in members {
            let w = (width - left - 120.0) * r.value / max;
            body.push_str(&format!(
                "<text x=\"10\" y=\"{}\">{}</text><rect x=\"{left}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"#4a7ab5\"/><text x=\"{:.1}\" y=\"{}\">{:.1} {}</text>\n",
                y + 15.0,
                esc(&r.name),
                bar_h - 4.0,
                left + w + 6.0,
                y + 15.0,
                r.value,
                esc(r.unit)
            ));
            y += bar_h;
        }
        y += 24.0;
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"13\">\n<text x=\"10\" y=\"24\" font-size=\"15\">xenring transport benchmarks ({})</text>\n{body}</svg>\n",
        y + 10.0,
        esc(machine)
    )
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
