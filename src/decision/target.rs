//! The adaptive threshold: a route's recent confidences (and predicted labels) in bounded
//! memory, so that `review.target_rate` diverts about that share of the least confident
//! responses, `budget_per_second` keeps the least confident ones when it binds, and
//! `sample_strata = "label"` audits every label as often.
//!
//! The sketch is a histogram of 1024 fixed buckets over [0, 1] whose weights decay
//! exponentially with `review.target_half_life` (forward decay: a response observed at `t`
//! weighs `2^((t − origin) / half_life)`, and every weight is rescaled when that grows large,
//! so time passing costs nothing). A quantile is read by walking the buckets and interpolating
//! inside the last one; it is recomputed every [`RECOMPUTE_EVERY`] responses, so deciding
//! costs a bucket increment.
//!
//! A quantile of the recent past lags a distribution that moves (a model getting better
//! diverts less than its share). The sketch also keeps the decayed share of responses that fell
//! below the target threshold in force, and an integral correction moves the quantile read
//! until that share is `target_rate` (integration time two decay time constants, which damps
//! the loop at ζ ≈ 0.7). Memory: 8 KiB of buckets and at most [`MAX_LABELS`] labels per
//! route. Pure: the clock is passed in.

use std::sync::Mutex;
use std::time::Instant;

/// Buckets of the histogram: a resolution of about 0.001 in confidence.
const BUCKETS: usize = 1024;
/// Responses between two readings of the quantiles (a walk of the buckets).
pub(super) const RECOMPUTE_EVERY: u32 = 16;
/// Labels tracked for `sample_strata = "label"`; further labels share one stratum.
pub(super) const MAX_LABELS: usize = 64;
/// The stratum of labels beyond [`MAX_LABELS`] (no label is empty: an empty one is ignored).
const OTHER_LABELS: &str = "";
/// Rescale the weights when the newest weighs 2^this (far below f64's range).
const RESCALE_AGE: f64 = 64.0;
/// A label whose weight fell below this share of all labels' is forgotten.
const STALE_LABEL_SHARE: f64 = 1e-6;

/// Decayed histogram of confidences, decayed label counts, and an arrival-rate estimate.
#[derive(Debug)]
pub struct Sketch {
    half_life_seconds: f64,
    weights: Box<[f64]>,
    total: f64,
    /// The weight of responses that fell below the target threshold in force.
    below: f64,
    labels: Vec<(Box<str>, f64)>,
    labels_total: f64,
    /// The forward-decay landmark: weights are relative to an observation made then.
    origin: Option<Instant>,
    /// The first confidence observed (the start of the arrival-rate estimate).
    first: Option<Instant>,
    /// Confidences observed, ever (the warm-up count).
    seen: u64,
    /// Labels observed, ever.
    labels_seen: u64,
}

impl Sketch {
    pub fn new(half_life_seconds: f64) -> Sketch {
        Sketch {
            half_life_seconds,
            weights: vec![0.0; BUCKETS].into_boxed_slice(),
            total: 0.0,
            below: 0.0,
            labels: Vec::new(),
            labels_total: 0.0,
            origin: None,
            first: None,
            seen: 0,
            labels_seen: 0,
        }
    }

    pub fn seen(&self) -> u64 {
        self.seen
    }

    pub fn labels_seen(&self) -> u64 {
        self.labels_seen
    }

    /// The weight of an observation at `now`, rescaling everything first when it grows large.
    /// Instants before the landmark (threads racing) weigh as at the landmark.
    fn weight_at(&mut self, now: Instant) -> f64 {
        let origin = *self.origin.get_or_insert(now);
        let age = now.saturating_duration_since(origin).as_secs_f64() / self.half_life_seconds;
        if age < RESCALE_AGE {
            return age.exp2();
        }
        let factor = (-age).exp2();
        self.weights.iter_mut().for_each(|w| *w *= factor);
        self.total *= factor;
        self.below *= factor;
        self.labels.iter_mut().for_each(|(_, w)| *w *= factor);
        self.labels_total *= factor;
        self.origin = Some(now);
        1.0
    }

    /// Adds one response's confidence (in [0, 1]); `below`: it fell below the target
    /// threshold in force.
    pub fn observe(&mut self, confidence: f64, below: bool, now: Instant) {
        let weight = self.weight_at(now);
        let bucket = ((confidence * BUCKETS as f64) as usize).min(BUCKETS - 1);
        self.weights[bucket] += weight;
        self.total += weight;
        if below {
            self.below += weight;
        }
        self.first.get_or_insert(now);
        self.seen += 1;
    }

    /// Adds one response's predicted label.
    pub fn observe_label(&mut self, label: &str, now: Instant) {
        let weight = self.weight_at(now);
        self.labels_total += weight;
        self.labels_seen += 1;
        let stratum = self.stratum_index(label).unwrap_or_else(|| {
            if self.labels.len() < MAX_LABELS {
                self.labels.push((label.into(), 0.0));
                self.labels.len() - 1
            } else {
                self.stratum_index(OTHER_LABELS).unwrap_or_else(|| {
                    // Full: the least weighty label makes way for the shared stratum.
                    let lightest = (0..self.labels.len())
                        .min_by(|&a, &b| self.labels[a].1.total_cmp(&self.labels[b].1))
                        .expect("MAX_LABELS > 0");
                    self.labels[lightest].0 = OTHER_LABELS.into();
                    lightest
                })
            }
        });
        self.labels[stratum].1 += weight;
    }

    fn stratum_index(&self, label: &str) -> Option<usize> {
        self.labels.iter().position(|(l, _)| &**l == label)
    }

    /// Forgets labels that have not been seen for many half-lives.
    pub fn prune_labels(&mut self) {
        let floor = self.labels_total * STALE_LABEL_SHARE;
        self.labels.retain(|(_, w)| *w >= floor);
    }

    /// The confidence below which `share` of the recent responses fall: 0 for share 0, 1 for
    /// share 1 (or nothing seen).
    pub fn quantile(&self, share: f64) -> f64 {
        let target = share * self.total;
        if target.is_nan() || target <= 0.0 {
            return 0.0;
        }
        let mut below = 0.0;
        for (i, &weight) in self.weights.iter().enumerate() {
            if weight > 0.0 && below + weight >= target {
                let within = ((target - below) / weight).clamp(0.0, 1.0);
                return (i as f64 + within) / BUCKETS as f64;
            }
            below += weight;
        }
        1.0
    }

    /// The recent share of responses below the target threshold in force.
    pub fn below_share(&self) -> f64 {
        if self.total > 0.0 {
            self.below / self.total
        } else {
            0.0
        }
    }

    /// Starts the below-target share at `share` (when the threshold starts being used).
    pub fn assume_below_share(&mut self, share: f64) {
        self.below = share * self.total;
    }

    /// How many responses the sketch's weight amounts to at `now` (each weighs 1 when new).
    pub fn effective_count(&self, now: Instant) -> f64 {
        self.origin.map_or(0.0, |origin| {
            let age = now.saturating_duration_since(origin).as_secs_f64() / self.half_life_seconds;
            self.total * (-age).exp2()
        })
    }

    /// Responses with a confidence per second, recently: the decayed count over the decayed
    /// time since the first one (exact for a steady rate). `None` before time has passed.
    pub fn rate(&self, now: Instant) -> Option<f64> {
        let (origin, first) = (self.origin?, self.first?);
        let half_life = self.half_life_seconds;
        let decay_since = |t: Instant| (-(now.saturating_duration_since(t).as_secs_f64()) / half_life).exp2();
        let current = self.total * decay_since(origin);
        let span = half_life / std::f64::consts::LN_2 * (1.0 - decay_since(first));
        (span > 0.0).then(|| current / span)
    }

    /// The audit percentage for a response predicted `label` so that every label recently
    /// seen gets the same expected number of audits: `sample_percent × (all / labels) /
    /// label's`, at most 100 (the whole of a label rarer than its share of audits).
    pub fn label_percent(&self, label: &str, sample_percent: f64) -> f64 {
        let weight = self
            .stratum_index(label)
            .or_else(|| self.stratum_index(OTHER_LABELS))
            .map_or(0.0, |i| self.labels[i].1);
        if weight.is_nan() || weight <= 0.0 || self.labels.is_empty() {
            return sample_percent;
        }
        let per_label = self.labels_total / self.labels.len() as f64;
        (sample_percent * per_label / weight).min(100.0)
    }
}

/// The thresholds in force for one response.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Live {
    /// `target_rate`'s quantile; `None` when unset or warming up.
    pub target: Option<f64>,
    /// The budget's quantile (the share it can afford); `None` when unlimited or warming up.
    pub budget: Option<f64>,
    /// The audit percentage for this response's label (`sample_strata = "label"`, warm).
    pub label_percent: Option<f64>,
}

/// One route's adaptive settings and its sketch.
#[derive(Debug)]
pub struct Adaptive {
    target_rate: Option<f64>,
    budget_per_second: Option<f64>,
    /// The audit sample's share, which spends the budget too.
    sample_share: f64,
    sample_percent: f64,
    by_label: bool,
    warmup: u64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    sketch: Sketch,
    until_recompute: u32,
    target: f64,
    /// The share whose quantile is the target threshold: `target_rate`, corrected.
    share: f64,
    budget: f64,
}

impl Adaptive {
    pub fn new(
        target_rate: Option<f64>,
        budget_per_second: Option<f64>,
        sample_percent: f64,
        by_label: bool,
        half_life_seconds: f64,
        warmup: u64,
    ) -> Adaptive {
        Adaptive {
            target_rate,
            budget_per_second,
            sample_share: sample_percent / 100.0,
            sample_percent,
            by_label,
            warmup,
            state: Mutex::new(State {
                sketch: Sketch::new(half_life_seconds),
                until_recompute: 0,
                target: 1.0,
                share: target_rate.unwrap_or(0.0),
                budget: 1.0,
            }),
        }
    }

    /// Whether the decision must read the response's top label.
    pub fn by_label(&self) -> bool {
        self.by_label
    }

    /// Adds a response to the sketch and returns the thresholds that apply to it (those
    /// computed before it, refreshed every [`RECOMPUTE_EVERY`] responses).
    pub fn observe(&self, confidence: Option<f64>, label: Option<&str>, now: Instant) -> Live {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let state = &mut *state;
        if let Some(label) = label.filter(|l| !l.is_empty() && self.by_label) {
            state.sketch.observe_label(label, now);
        }
        let label_percent = match label {
            Some(label) if self.by_label && state.sketch.labels_seen() >= self.warmup => {
                Some(state.sketch.label_percent(label, self.sample_percent))
            }
            _ => None,
        };
        let warm = state.sketch.seen() >= self.warmup;
        let live = Live {
            target: self.target_rate.filter(|_| warm).map(|_| state.target),
            budget: self.budget_per_second.filter(|_| warm).map(|_| state.budget),
            label_percent,
        };
        if let Some(confidence) = confidence {
            let below = live.target.is_some_and(|t| confidence < t);
            state.sketch.observe(confidence, below, now);
            let warmed_now = state.sketch.seen() == self.warmup.max(1);
            if warmed_now && let Some(rate) = self.target_rate {
                state.sketch.assume_below_share(rate);
            }
            if state.until_recompute == 0 || warmed_now {
                self.recompute(state, warm || warmed_now, now);
                state.until_recompute = RECOMPUTE_EVERY;
            }
            state.until_recompute -= 1;
        }
        live
    }

    fn recompute(&self, state: &mut State, warm: bool, now: Instant) {
        if let Some(rate) = self.target_rate {
            if warm {
                // Integral correction: the gap between the target and the share that fell
                // below the threshold, integrated over two decay time constants.
                let responses = state.sketch.effective_count(now).max(1.0);
                let gain = (f64::from(RECOMPUTE_EVERY) / (2.0 * responses)).min(0.5);
                let gap = rate - state.sketch.below_share();
                state.share = (state.share + gain * gap).clamp(rate / 4.0, (4.0 * rate).min(1.0));
            }
            state.target = state.sketch.quantile(state.share);
        }
        if let Some(budget) = self.budget_per_second {
            state.budget = match state.sketch.rate(now) {
                Some(arrivals) => {
                    let share = (budget / arrivals - self.sample_share).max(0.0);
                    state.sketch.quantile(share.min(1.0))
                }
                None => 1.0,
            };
        }
        if self.by_label {
            state.sketch.prune_labels();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn quantiles_of_a_uniform_spread() {
        let mut sketch = Sketch::new(60.0);
        let now = Instant::now();
        for i in 0..10_000 {
            sketch.observe(i as f64 / 10_000.0, false, now);
        }
        for share in [0.01, 0.05, 0.5, 0.9] {
            assert!((sketch.quantile(share) - share).abs() < 0.002, "{share}");
        }
        assert_eq!(sketch.quantile(0.0), 0.0);
        assert_eq!(sketch.quantile(1.0), 1.0);
    }

    #[test]
    fn old_confidences_fade_with_the_half_life() {
        let mut sketch = Sketch::new(10.0);
        let start = Instant::now();
        for _ in 0..1000 {
            sketch.observe(0.1, false, start);
        }
        // Ten half-lives later the old mass weighs 1/1024 of its first weight: a hundred new
        // responses outweigh it.
        let later = start + Duration::from_secs(100);
        for _ in 0..100 {
            sketch.observe(0.9, false, later);
        }
        // (Within the 0.9 bucket: a resolution of 1/1024.)
    assert!(sketch.quantile(0.5) > 0.899, "{}", sketch.quantile(0.5));
        // Far beyond the rescaling age, still finite and still right.
        let much_later = start + Duration::from_secs(10 * 1000);
        sketch.observe(0.3, false, much_later);
        assert!(sketch.quantile(0.5) >= 0.3 && sketch.quantile(0.5) < 0.31);
        assert!(sketch.total.is_finite());
    }

    #[test]
    fn the_arrival_rate_of_a_steady_stream() {
        let mut sketch = Sketch::new(30.0);
        let start = Instant::now();
        // 50 per second for 200 seconds.
        for i in 0..10_000u64 {
            sketch.observe(0.5, false, start + Duration::from_millis(i * 20));
        }
        let rate = sketch.rate(start + Duration::from_millis(10_000 * 20)).unwrap();
        assert!((rate - 50.0).abs() < 1.0, "{rate}");
        // Early on, as exact.
        let mut early = Sketch::new(30.0);
        for i in 0..100u64 {
            early.observe(0.5, false, start + Duration::from_millis(i * 20));
        }
        let rate = early.rate(start + Duration::from_millis(100 * 20)).unwrap();
        assert!((rate - 50.0).abs() < 2.0, "{rate}");
    }

    #[test]
    fn every_label_gets_the_same_expected_audits() {
        let mut sketch = Sketch::new(60.0);
        let now = Instant::now();
        for i in 0..1000 {
            let label = if i % 100 == 0 { "rare" } else if i % 2 == 0 { "a" } else { "b" };
            sketch.observe_label(label, now);
        }
        // 3 labels, 2 % audited: each label gets 2/3 % of all traffic audited.
        let rare = sketch.label_percent("rare", 2.0);
        let common = sketch.label_percent("a", 2.0);
        assert!((rare * 0.01 - 2.0 / 3.0).abs() < 1e-9, "{rare}");
        assert!((common * 0.495 - 2.0 / 3.0).abs() < 0.01, "{common}");
        // A label rarer than its share of audits is audited whole, not more.
        assert_eq!(sketch.label_percent("rare", 50.0), 100.0);
    }

    proptest::proptest! {
        #[test]
        fn quantiles_are_monotone_and_in_range(
            confidences in proptest::collection::vec((0.0f64..=1.0, 0u64..100_000), 1..300),
            shares in proptest::collection::vec(0.0f64..=1.0, 2..10),
        ) {
            let mut sketch = Sketch::new(30.0);
            let start = Instant::now();
            let mut elapsed = 0;
            for (confidence, step) in confidences {
                elapsed += step;
                sketch.observe(confidence, false, start + Duration::from_millis(elapsed));
            }
            let mut shares = shares;
            shares.sort_by(f64::total_cmp);
            let quantiles: Vec<f64> = shares.iter().map(|s| sketch.quantile(*s)).collect();
            proptest::prop_assert!(quantiles.iter().all(|q| (0.0..=1.0).contains(q)));
            proptest::prop_assert!(quantiles.windows(2).all(|w| w[0] <= w[1]), "{:?}", quantiles);
            proptest::prop_assert!(sketch.total.is_finite() && sketch.total > 0.0);
        }
    }

    #[test]
    fn labels_beyond_the_cap_share_one_stratum() {
        let mut sketch = Sketch::new(60.0);
        let now = Instant::now();
        for i in 0..(MAX_LABELS * 3) {
            sketch.observe_label(&format!("label-{i}"), now);
        }
        assert!(sketch.labels.len() <= MAX_LABELS);
        assert!(sketch.stratum_index(OTHER_LABELS).is_some());
        let unseen = sketch.label_percent("never seen", 1.0);
        assert!(unseen.is_finite() && unseen > 0.0);
    }
}
