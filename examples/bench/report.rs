//! What a run measured, summarised (medians over rounds), as ratios, as Markdown tables and as
//! one JSON document.

use serde::Serialize;

use crate::load::WrkRun;

/// One closed-loop round against one target.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub target: &'static str,
    pub round: usize,
    pub wrk: WrkRun,
    pub requests_per_second: f64,
    /// CPU of the proxy process (and its children) from the start of the load until its review
    /// records were all handed to the broker; `None` for the upstream itself.
    pub proxy_cpu_seconds: Option<f64>,
    pub proxy_cpu_seconds_per_1k: Option<f64>,
    /// VmHWM of the proxy process after this round (a high-water mark since it started).
    pub proxy_peak_rss_bytes: Option<u64>,
    pub review: Option<ReviewCounts>,
    /// CPU of the broker process over the same window, when the broker's pid is known.
    pub broker_cpu_seconds: Option<f64>,
}

/// reviewloop's own counters over one round (deltas of its /metrics).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReviewCounts {
    pub requests: u64,
    pub diverted: u64,
    pub delivered: u64,
    pub failed: u64,
    pub skipped_queue_full: u64,
    pub skipped_kafka_error: u64,
    /// From the end of the load until every diverted record was delivered or counted as lost.
    pub drain_seconds: f64,
    /// Delivered records over (load duration + drain).
    pub delivered_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub target: &'static str,
    pub label: &'static str,
    pub rounds: usize,
    pub requests_per_second: f64,
    pub requests_per_second_min: f64,
    pub requests_per_second_max: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub cpu_seconds_per_1k: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
    /// Diverted / proxied requests, over all rounds.
    pub diverted_fraction: Option<f64>,
    pub review_records_delivered: Option<u64>,
    pub review_records_lost: Option<u64>,
    pub review_records_per_second: Option<f64>,
    pub broker_cpu_seconds_per_1k: Option<f64>,
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn median_of(rounds: &[&Round], f: impl Fn(&Round) -> Option<f64>) -> Option<f64> {
    let mut values: Vec<f64> = rounds.iter().filter_map(|r| f(r)).collect();
    (!values.is_empty()).then(|| median(&mut values))
}

pub fn summarise(target: &'static str, label: &'static str, rounds: &[Round]) -> Summary {
    let mine: Vec<&Round> = rounds.iter().filter(|r| r.target == target).collect();
    let ms = |us: u64| us as f64 / 1000.0;
    let rps: Vec<f64> = mine.iter().map(|r| r.requests_per_second).collect();
    let reviews: Vec<&ReviewCounts> = mine.iter().filter_map(|r| r.review.as_ref()).collect();
    let (requests, diverted, delivered, lost) =
        reviews.iter().fold((0, 0, 0, 0), |(rq, dv, dl, ls), c| {
            (
                rq + c.requests,
                dv + c.diverted,
                dl + c.delivered,
                ls + c.failed + c.skipped_queue_full + c.skipped_kafka_error,
            )
        });
    let nan = f64::NAN;
    Summary {
        target,
        label,
        rounds: mine.len(),
        requests_per_second: median_of(&mine, |r| Some(r.requests_per_second)).unwrap_or(nan),
        requests_per_second_min: rps.iter().cloned().fold(f64::INFINITY, f64::min),
        requests_per_second_max: rps.iter().cloned().fold(0.0, f64::max),
        p50_ms: median_of(&mine, |r| Some(ms(r.wrk.latency_us.p50))).unwrap_or(nan),
        p90_ms: median_of(&mine, |r| Some(ms(r.wrk.latency_us.p90))).unwrap_or(nan),
        p99_ms: median_of(&mine, |r| Some(ms(r.wrk.latency_us.p99))).unwrap_or(nan),
        errors: mine.iter().map(|r| r.wrk.errors.total()).sum(),
        cpu_seconds_per_1k: median_of(&mine, |r| r.proxy_cpu_seconds_per_1k),
        peak_rss_bytes: mine.iter().filter_map(|r| r.proxy_peak_rss_bytes).max(),
        diverted_fraction: (requests > 0).then(|| diverted as f64 / requests as f64),
        review_records_delivered: (!reviews.is_empty()).then_some(delivered),
        review_records_lost: (!reviews.is_empty()).then_some(lost),
        review_records_per_second: median_of(&mine, |r| {
            r.review
                .as_ref()
                .filter(|c| c.diverted > 0)
                .map(|c| c.delivered_per_second)
        }),
        broker_cpu_seconds_per_1k: median_of(&mine, |r| {
            Some(r.broker_cpu_seconds? / r.wrk.requests as f64 * 1000.0)
        }),
    }
}

/// reviewloop against a baseline: above 1 means reviewloop has more of it.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    pub target: &'static str,
    pub baseline: &'static str,
    pub requests_per_second: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub cpu_per_request: Option<f64>,
    pub peak_rss: Option<f64>,
}

pub fn ratios(of: &Summary, to: &Summary) -> Ratios {
    let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    Ratios {
        target: of.target,
        baseline: to.target,
        requests_per_second: of.requests_per_second / to.requests_per_second,
        p50: of.p50_ms / to.p50_ms,
        p90: of.p90_ms / to.p90_ms,
        p99: of.p99_ms / to.p99_ms,
        cpu_per_request: ratio(of.cpu_seconds_per_1k, to.cpu_seconds_per_1k),
        peak_rss: ratio(
            of.peak_rss_bytes.map(|b| b as f64),
            to.peak_rss_bytes.map(|b| b as f64),
        ),
    }
}

/// One request at a time through one target.
#[derive(Debug, Clone, Serialize)]
pub struct SingleConnection {
    pub target: &'static str,
    pub label: &'static str,
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests_per_second: f64,
    /// Median latency minus the direct median, in microseconds.
    pub added_p50_us: f64,
}

/// Server-sent events through one target.
#[derive(Debug, Clone, Serialize)]
pub struct Sse {
    pub target: &'static str,
    pub label: &'static str,
    pub samples: usize,
    pub first_event_p50_ms: f64,
    pub first_event_p90_ms: f64,
    pub stream_end_p50_ms: f64,
    pub added_first_event_p50_ms: f64,
}

fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or("–".into(), |v| format!("{v:.digits$}"))
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("–".into(), |b| format!("{:.1}", b as f64 / 1048576.0))
}

pub fn load_table(summaries: &[Summary]) -> String {
    let mut out = String::from(
        "| target | req/s (min–max) | p50 ms | p90 ms | p99 ms | CPU s / 1k req | peak RSS MiB | diverted | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for s in summaries {
        out.push_str(&format!(
            "| {} | {:.0} ({:.0}–{:.0}) | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} |\n",
            s.label,
            s.requests_per_second,
            s.requests_per_second_min,
            s.requests_per_second_max,
            s.p50_ms,
            s.p90_ms,
            s.p99_ms,
            opt(s.cpu_seconds_per_1k, 3),
            mib(s.peak_rss_bytes),
            s.diverted_fraction
                .map_or("–".into(), |f| format!("{:.1} %", f * 100.0)),
            s.errors,
        ));
    }
    out
}

pub fn ratio_table(rows: &[(&str, &Ratios)]) -> String {
    let mut out = String::from(
        "| reviewloop / baseline | req/s | p50 | p90 | p99 | CPU per request | peak RSS |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (label, r) in rows {
        out.push_str(&format!(
            "| {label} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |\n",
            r.requests_per_second,
            r.p50,
            r.p90,
            r.p99,
            opt(r.cpu_per_request, 2),
            opt(r.peak_rss, 2),
        ));
    }
    out
}

pub fn single_table(rows: &[SingleConnection]) -> String {
    let mut out = String::from(
        "| target | p50 µs | p99 µs | req/s | added p50 µs |\n|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:+.0} |\n",
            r.label, r.p50_us, r.p99_us, r.requests_per_second, r.added_p50_us
        ));
    }
    out
}

pub fn sse_table(rows: &[Sse]) -> String {
    let mut out = String::from(
        "| target | first event p50 ms | p90 ms | stream end p50 ms | added first event ms |\n\
         |---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {:.3} | {:.3} | {:.1} | {:+.3} |\n",
            r.label,
            r.first_event_p50_ms,
            r.first_event_p90_ms,
            r.stream_end_p50_ms,
            r.added_first_event_p50_ms
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }
}
