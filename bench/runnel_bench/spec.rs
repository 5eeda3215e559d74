//! Workload spec files and SLA targets.
//!
//! A spec is TOML whose top-level keys are `runnel-bench` flags by their long names
//! (`rate = 5000`, `message_bytes = 1024`, `partitions = 16`, `duration_s = 30`, ...);
//! an optional `[sla]` table holds targets, and `[runner]` settings for
//! perf/run-standard (ignored here). The spec's keys become flags placed before the
//! command line's, so anything on the command line overrides the file.
//!
//! ```toml
//! name = "16p-1KiB-5k"
//! rate = 5000
//! message_bytes = 1024
//! partitions = 16
//! duration_s = 30
//! [sla]
//! p99_ms = 20          # produce latency from intended send time
//! p999_ms = 50
//! e2e_p99_ms = 50      # create -> consumed
//! min_msg_s = 4900     # acked throughput
//! ```

use std::ffi::OsString;

use clap::Parser;
use serde::Serialize;

use crate::load::{Metric, Outcome};
use crate::Args;

/// Latency targets by key: (metric, quantile; 1.0 = max).
const LATENCY_TARGETS: [(&str, Metric, f64); 12] = [
    ("p50_ms", Metric::Produce, 0.5),
    ("p90_ms", Metric::Produce, 0.9),
    ("p99_ms", Metric::Produce, 0.99),
    ("p999_ms", Metric::Produce, 0.999),
    ("p9999_ms", Metric::Produce, 0.9999),
    ("max_ms", Metric::Produce, 1.0),
    ("e2e_p50_ms", Metric::E2e, 0.5),
    ("e2e_p90_ms", Metric::E2e, 0.9),
    ("e2e_p99_ms", Metric::E2e, 0.99),
    ("e2e_p999_ms", Metric::E2e, 0.999),
    ("e2e_p9999_ms", Metric::E2e, 0.9999),
    ("e2e_max_ms", Metric::E2e, 1.0),
];

/// The `[sla]` table: upper bounds on latency (ms), lower bounds on throughput.
#[derive(Debug, Clone, Default)]
pub struct Sla {
    targets: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    /// e.g. "<= 20 ms"
    pub target: String,
    /// None when nothing was measured (e.g. e2e without consumers): a failure.
    pub actual: Option<f64>,
    pub pass: bool,
}

impl Sla {
    fn from_toml(v: &toml::Value) -> Result<Sla, String> {
        let table = v.as_table().ok_or("[sla] must be a table")?;
        let mut targets = Vec::new();
        for (k, v) in table {
            let known = LATENCY_TARGETS.iter().any(|(n, _, _)| n == k)
                || k == "min_msg_s"
                || k == "min_mb_s";
            if !known {
                let names: Vec<&str> = LATENCY_TARGETS.iter().map(|(n, _, _)| *n).collect();
                return Err(format!(
                    "[sla] {k}: unknown target (known: {}, min_msg_s, min_mb_s)",
                    names.join(", ")
                ));
            }
            let x = v
                .as_float()
                .or_else(|| v.as_integer().map(|i| i as f64))
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| format!("[sla] {k}: expected a non-negative number"))?;
            targets.push((k.clone(), x));
        }
        Ok(Sla { targets })
    }

    pub fn describe(&self) -> String {
        let t: Vec<String> = self
            .targets
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        t.join(" ")
    }

    pub fn evaluate(&self, o: &Outcome) -> Vec<Check> {
        let mut checks = Vec::new();
        for (k, target) in &self.targets {
            if let Some((_, m, q)) = LATENCY_TARGETS.iter().find(|(n, _, _)| n == k) {
                let h = o.latency(*m);
                let actual = (!h.is_empty()).then(|| {
                    let us = if *q >= 1.0 {
                        h.max()
                    } else {
                        h.value_at_quantile(*q)
                    };
                    us as f64 / 1e3
                });
                checks.push(Check {
                    name: k.clone(),
                    target: format!("<= {target} ms"),
                    actual,
                    pass: actual.is_some_and(|a| a <= *target),
                });
            } else {
                let secs = o.produced.elapsed_s.max(1e-9);
                let actual = if k == "min_msg_s" {
                    o.produced.acked as f64 / secs
                } else {
                    o.produced.bytes as f64 / 1e6 / secs
                };
                let unit = if k == "min_msg_s" { "msg/s" } else { "MB/s" };
                checks.push(Check {
                    name: k.clone(),
                    target: format!(">= {target} {unit}"),
                    actual: Some(actual),
                    pass: actual >= *target,
                });
            }
        }
        // A run that lost deliveries never meets an SLA.
        checks.push(Check {
            name: "delivery_errors".into(),
            target: "= 0".into(),
            actual: Some(o.produced.failed as f64),
            pass: o.produced.failed == 0,
        });
        checks
    }
}

/// Parses the command line; with `--spec FILE`, parses again with the file's keys as
/// leading flags. Returns the SLA targets when the spec has them.
pub fn parse_with_spec() -> Result<(Args, Option<Sla>), String> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let first = Args::parse_from(&argv);
    let Some(path) = first.spec.clone() else {
        return Ok((first, None));
    };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut flags: Vec<OsString> = vec![argv[0].clone()];
    let mut sla = None;
    for (k, v) in &table {
        let flag = format!("--{}", k.replace('_', "-"));
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            _ => Err(format!(
                "{}: {k}: expected a string or number",
                path.display()
            )),
        };
        match (k.as_str(), v) {
            ("sla", v) => {
                sla = Some(Sla::from_toml(v).map_err(|e| format!("{}: {e}", path.display()))?)
            }
            // `description` is for people; `[runner]` is for perf/run-standard.
            ("description", _) | ("runner", _) => {}
            ("spec", _) => {
                return Err(format!(
                    "{}: a spec cannot name another spec",
                    path.display()
                ))
            }
            (_, toml::Value::Boolean(true)) => flags.push(flag.into()),
            (_, toml::Value::Boolean(false)) => {}
            (_, toml::Value::Array(items)) => {
                for item in items {
                    flags.push(format!("{flag}={}", scalar(item)?).into());
                }
            }
            (_, v) => flags.push(format!("{flag}={}", scalar(v)?).into()),
        }
    }
    flags.extend(argv.into_iter().skip(1));
    let args = Args::try_parse_from(&flags).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((args, sla))
}
