//! Prints every metric family `PrometheusObserver` exports, one `name kind` per line (histograms
//! also list their `_bucket`, `_sum` and `_count` series). `cargo xtask` checks the operations
//! rules and dashboard against this list.

fn main() -> Result<(), strata_telemetry::TelemetryError> {
    let metrics = strata_telemetry::PrometheusObserver::new()?;
    for (name, kind) in metrics.metric_names() {
        println!("{name} {}", kind.as_str());
        if *kind == strata_telemetry::MetricKind::Histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                println!("{name}{suffix} series");
            }
        }
    }
    Ok(())
}
