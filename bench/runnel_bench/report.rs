//! Output: summary table, JSON, and the latency-by-percentile plot (SVG, so it needs no
//! fonts or system libraries).

use std::collections::BTreeMap;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::load::{Metric, Outcome, METRICS};
use crate::spec::Check;
use crate::Args;

/// Latency percentiles of one histogram, in ms.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1e3;
        Percentiles {
            count: h.len(),
            mean: h.mean() / 1e3,
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            p9999: ms(h.value_at_quantile(0.9999)),
            max: ms(h.max()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Rates {
    pub records: u64,
    pub bytes: u64,
    pub elapsed_s: f64,
    pub msg_s: f64,
    /// 10^6 bytes per second of message payload.
    pub mb_s: f64,
}

impl Rates {
    fn new(records: u64, bytes: u64, elapsed_s: f64) -> Rates {
        let s = elapsed_s.max(1e-9);
        Rates {
            records,
            bytes,
            elapsed_s,
            msg_s: records as f64 / s,
            mb_s: bytes as f64 / 1e6 / s,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub name: Option<String>,
    pub topics: Vec<String>,
    /// Seconds the bench waited for CreateTopics.
    pub create_topics_s: f64,
    pub mode: &'static str,
    pub target_rate_msg_s: Option<f64>,
    pub produced: Rates,
    pub failed: u64,
    pub consumed: Rates,
    /// By metric tag: produce (from the intended send time in open loop), produce-sent,
    /// e2e. Empty histograms are left out.
    pub latency_ms: BTreeMap<&'static str, Percentiles>,
    pub broker_cpu_s: Option<f64>,
    pub broker_cpu_source: Option<String>,
    /// Broker CPU seconds over the run per GiB of payload produced (fetch work included).
    pub broker_cpu_s_per_gib_produced: Option<f64>,
    pub sla: Option<Vec<Check>>,
}

impl Results {
    pub fn new(args: &Args, o: &Outcome, sla: Option<Vec<Check>>) -> Results {
        let mut latency_ms = BTreeMap::new();
        for (m, tag) in METRICS {
            let h = o.latency(m);
            // In closed loop intended == sent: one histogram says it all.
            if h.is_empty() || (m == Metric::ProduceSent && !o.open_loop) {
                continue;
            }
            latency_ms.insert(tag, Percentiles::of(h));
        }
        let gib = o.produced.bytes as f64 / f64::from(1u32 << 30);
        Results {
            name: args.name.clone(),
            topics: o.topics.clone(),
            create_topics_s: o.create_s,
            mode: if o.open_loop { "open" } else { "closed" },
            target_rate_msg_s: args.rate,
            produced: Rates::new(o.produced.acked, o.produced.bytes, o.produced.elapsed_s),
            failed: o.produced.failed,
            consumed: Rates::new(o.consumed.records, o.consumed.bytes, o.consumed.elapsed_s),
            latency_ms,
            broker_cpu_s: o.broker_cpu_s.as_ref().map(|c| c.0),
            broker_cpu_source: o.broker_cpu_s.as_ref().map(|c| c.1.clone()),
            broker_cpu_s_per_gib_produced: o
                .broker_cpu_s
                .as_ref()
                .filter(|_| gib > 0.0)
                .map(|c| c.0 / gib),
            sla,
        }
    }
}

pub fn print_table(args: &Args, r: &Results) {
    let mode = match args.rate {
        Some(rate) => format!("open loop at {rate} msg/s"),
        None => "closed loop".to_string(),
    };
    println!();
    println!(
        "{}{mode}: topics={} partitions={} size={} acks={} compression={} linger={}ms producers={} consumers={} keys={}",
        r.name.as_ref().map(|n| format!("{n}: ")).unwrap_or_default(),
        args.topics,
        args.partitions,
        args.message_bytes,
        args.acks,
        args.compression,
        args.linger_ms,
        args.producers,
        args.consumers(),
        args.keys,
    );
    println!(
        "{:<14} {:>12} {:>8} {:>12} {:>10}",
        "", "records", "time s", "msg/s", "MB/s"
    );
    for (what, x) in [("produced", &r.produced), ("consumed", &r.consumed)] {
        println!(
            "{what:<14} {:>12} {:>8.2} {:>12.0} {:>10.1}",
            x.records, x.elapsed_s, x.msg_s, x.mb_s
        );
    }
    if r.failed > 0 {
        println!("delivery errors: {}", r.failed);
    }
    if r.create_topics_s >= 1.0 {
        println!(
            "creating the topics took {:.1} s (not counted above)",
            r.create_topics_s
        );
    }
    println!(
        "{:<14} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "latency ms", "count", "mean", "p50", "p90", "p99", "p99.9", "p99.99", "max"
    );
    for (tag, p) in METRICS
        .iter()
        .filter_map(|(_, t)| r.latency_ms.get_key_value(t))
    {
        println!(
            "{tag:<14} {:>10} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            p.count, p.mean, p.p50, p.p90, p.p99, p.p999, p.p9999, p.max
        );
    }
    if r.mode == "open" {
        println!("  produce: ack time - intended send time (coordinated-omission corrected); produce-sent: from the actual send");
    }
    if let (Some(cpu), Some(src)) = (r.broker_cpu_s, &r.broker_cpu_source) {
        match r.broker_cpu_s_per_gib_produced {
            Some(per) => {
                println!("broker CPU: {cpu:.2} s during the run, {per:.2} s/GiB produced ({src})")
            }
            None => println!("broker CPU: {cpu:.2} s during the run ({src})"),
        }
    }
}

pub fn print_sla(checks: &[Check]) {
    println!("SLA");
    for c in checks {
        let actual = c
            .actual
            .map(|a| format!("{a:.3}"))
            .unwrap_or_else(|| "no samples".into());
        println!(
            "  {:<16} target {:<18} actual {:<14} {}",
            c.name,
            c.target,
            actual,
            if c.pass { "PASS" } else { "FAIL" }
        );
    }
    let failed = checks.iter().filter(|c| !c.pass).count();
    if failed == 0 {
        println!("SLA: PASS");
    } else {
        println!("SLA: FAIL ({failed} of {} targets missed)", checks.len());
    }
}

/// The flat line `perf/compare` reads (`json {...}`).
pub fn compat_line(r: &Results) -> String {
    let p = r.latency_ms.get("produce");
    let get = |f: fn(&Percentiles) -> f64| p.map(f).unwrap_or(0.0);
    let e2e = r.latency_ms.get("e2e");
    serde_json::json!({
        "produce_mb_s": r.produced.mb_s,
        "produce_msg_s": r.produced.msg_s,
        "acked": r.produced.records,
        "failed": r.failed,
        "p50_ms": get(|p| p.p50),
        "p99_ms": get(|p| p.p99),
        "p999_ms": get(|p| p.p999),
        "max_ms": get(|p| p.max),
        "e2e_p50_ms": e2e.map(|p| p.p50),
        "e2e_p99_ms": e2e.map(|p| p.p99),
        "e2e_p999_ms": e2e.map(|p| p.p999),
        "consume_mb_s": r.consumed.mb_s,
        "consumed": r.consumed.records,
        "cpu_s_per_gib": r.broker_cpu_s_per_gib_produced,
        "sla_pass": r.sla.as_ref().map(|c| c.iter().all(|c| c.pass)),
    })
    .to_string()
}

pub fn write_json(path: &Path, args: &Args, r: &Results) -> Result<(), String> {
    let doc = serde_json::json!({ "config": args, "results": r });
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
}

/// Latency by percentile, HdrHistogram style: x is 1/(1 - quantile) on a log axis, so
/// 90%, 99%, 99.9% ... are evenly spaced; y is latency in ms on a log axis.
pub fn write_plot(path: &Path, args: &Args, o: &Outcome) -> Result<(), String> {
    use plotters::prelude::*;

    let mut series: Vec<(&str, Vec<(f64, f64)>)> = Vec::new();
    let mut x_max: f64 = 100.0;
    let (mut y_min, mut y_max) = (f64::MAX, 0f64);
    for (m, tag) in METRICS {
        let h = o.latency(m);
        if h.is_empty() || (m == Metric::ProduceSent && !o.open_loop) {
            continue;
        }
        // Resolution ends where the sample count does: 1000 samples say nothing of 99.99%.
        let x_cap = 10f64
            .powf((h.len() as f64).log10().ceil())
            .clamp(100.0, 1e7);
        x_max = x_max.max(x_cap);
        let pts: Vec<(f64, f64)> = h
            .iter_quantiles(5)
            .map(|v| {
                let q = v.quantile_iterated_to();
                let x = if q >= 1.0 {
                    x_cap
                } else {
                    (1.0 / (1.0 - q)).min(x_cap)
                };
                (x, (v.value_iterated_to() as f64 / 1e3).max(1e-3))
            })
            .collect();
        for (_, y) in &pts {
            y_min = y_min.min(*y);
            y_max = y_max.max(*y);
        }
        let label = match m {
            Metric::Produce if o.open_loop => "produce (from intended send)",
            Metric::Produce => "produce (send -> ack)",
            Metric::ProduceSent => "produce (from actual send, uncorrected)",
            Metric::E2e => "end-to-end (create -> consumed)",
        };
        let _ = tag;
        series.push((label, pts));
    }
    if series.is_empty() {
        return Err("no latency samples to plot".into());
    }
    let y_lo = 10f64.powf(y_min.log10().floor());
    let y_hi = 10f64.powf((y_max * 1.5).log10().ceil());
    let title = format!(
        "{}{}, {} B, {} partitions",
        args.name
            .as_ref()
            .map(|n| format!("{n}: "))
            .unwrap_or_default(),
        match args.rate {
            Some(r) => format!("open loop {r} msg/s"),
            None => "closed loop".into(),
        },
        args.message_bytes,
        args.partitions
    );
    let err = |e: &dyn std::fmt::Debug| format!("{}: {e:?}", path.display());
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((1f64..x_max).log_scale(), (y_lo..y_hi).log_scale())
        .map_err(|e| err(&e))?;
    let percentile = |x: &f64| {
        let p = 100.0 - 100.0 / x;
        let s = format!("{p:.5}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        format!("{s}%")
    };
    let ms = |y: &f64| format!("{y}");
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&percentile)
        .y_label_formatter(&ms)
        .draw()
        .map_err(|e| err(&e))?;
    let colors = [RED, BLUE, GREEN];
    for (i, (label, pts)) in series.into_iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
