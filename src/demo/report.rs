//! What the demo prints: the live table (one row per window) and the closing summary. Pure:
//! it formats numbers the demo collected.

use std::fmt::Write as _;
use std::time::Duration;

use super::model::Evaluation;
use super::traffic::Tally;

/// One reporting window: what the clients saw, and the loop's counters at its end.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Time since the traffic started, at the end of the window.
    pub elapsed: Duration,
    pub tally: Tally,
    /// Retraining records written so far.
    pub retraining: u64,
    /// Reviews sent so far without a retraining record or a dead letter yet: waiting for a
    /// reviewer, or for the joiner.
    pub pending: u64,
    /// Retraining records the model has learned from so far.
    pub learned: u64,
    /// The audit sample's reviews the joiner compared with the model during the window.
    pub audit: Audit,
}

/// Reviews of the audit sample (`reason="sampled"`) the joiner compared with the model's
/// answer (`reviewloop_model_agreement_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Audit {
    pub agreed: u64,
    pub compared: u64,
}

impl Audit {
    /// The model's accuracy as the audit estimates it.
    pub fn accuracy(&self) -> Option<f64> {
        (self.compared > 0).then(|| self.agreed as f64 / self.compared as f64)
    }

    /// The counts since `earlier`.
    pub fn since(&self, earlier: Audit) -> Audit {
        Audit {
            agreed: self.agreed.saturating_sub(earlier.agreed),
            compared: self.compared.saturating_sub(earlier.compared),
        }
    }

    /// One binomial standard error of the estimate.
    pub fn standard_error(&self) -> Option<f64> {
        let p = self.accuracy()?;
        Some((p * (1.0 - p) / self.compared as f64).sqrt())
    }
}

/// Everything a run produced, for the summary and for tests.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub windows: Vec<Window>,
    pub total: Tally,
    /// Review records the proxy handed to Kafka and the broker acknowledged.
    pub reviews_delivered: u64,
    /// Review records that never reached Kafka (queue full, Kafka error).
    pub reviews_lost: u64,
    /// Responses over the review budget (counted, not sent).
    pub over_budget: u64,
    pub answers: u64,
    pub wrong_answers: u64,
    /// Reviews the reviewers could not read (not tickets); they stay pending.
    pub unreadable: u64,
    pub retraining: u64,
    pub dead_letters: u64,
    /// Delivered reviews without a retraining record or a dead letter.
    pub pending: u64,
    /// `reviewloop_reviews_pending`: reviews (and early answers) the joiner holds.
    pub joiner_pending: i64,
    pub learned: u64,
    /// Whether every delivered review was resolved before the run ended.
    pub drained: bool,
    /// Labelled tickets the model started from.
    pub pilot: usize,
    /// The model on held-out tickets before the run, and after.
    pub before: Evaluation,
    pub after: Evaluation,
    /// The whole run's audit.
    pub audit: Audit,
}

impl Summary {
    pub fn first(&self) -> Option<&Tally> {
        self.windows
            .iter()
            .map(|w| &w.tally)
            .find(|t| t.answered > 0)
    }

    pub fn last(&self) -> Option<&Tally> {
        self.windows
            .iter()
            .rev()
            .map(|w| &w.tally)
            .find(|t| t.answered > 0)
    }
}

pub fn header() -> String {
    format!(
        "{:>6}  {:>8}  {:>7}  {:>8}  {:>10}  {:>7}  {:>8}  {:>13}",
        "time", "requests", "review", "low-conf", "retraining", "pending", "accuracy", "audited"
    )
}

pub fn row(window: &Window) -> String {
    let t = &window.tally;
    format!(
        "{:>5}s  {:>8}  {:>7}  {:>8}  {:>10}  {:>7}  {:>8}  {:>13}{}",
        window.elapsed.as_secs(),
        t.requests,
        percent(t.review_rate()),
        percent(t.low_confidence_share()),
        window.retraining,
        window.pending,
        percent(t.accuracy()),
        match window.audit.accuracy() {
            Some(accuracy) => format!("{} of {}", percent(accuracy), window.audit.compared),
            None => "-".to_owned(),
        },
        if t.errors > 0 {
            format!("  ({} errors)", t.errors)
        } else {
            String::new()
        }
    )
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

/// `a → b  (±d points…)`.
fn change(first: f64, last: f64, note: &str) -> String {
    format!(
        "{} → {}  ({:+.1} points{note})",
        percent(first),
        percent(last),
        (last - first) * 100.0
    )
}

pub fn summary(s: &Summary, elapsed: Duration) -> String {
    let mut out = String::new();
    let mut line = |label: &str, text: String| {
        let _ = writeln!(out, "  {label:<18}{text}");
    };
    if let (Some(first), Some(last)) = (s.first(), s.last()) {
        line(
            "accuracy",
            change(first.accuracy(), last.accuracy(), ", first window → last"),
        );
        line(
            "review rate",
            change(first.review_rate(), last.review_rate(), ""),
        );
        line(
            "low confidence",
            change(
                first.low_confidence_share(),
                last.low_confidence_share(),
                "",
            ),
        );
    }
    if let (Some(audited), Some(error)) = (s.audit.accuracy(), s.audit.standard_error()) {
        line(
            "audited accuracy",
            format!(
                "{} ± {:.1} points from {} sampled reviews; true: {} on those answers, {} on all",
                percent(audited),
                error * 100.0,
                s.audit.compared,
                percent(s.total.sampled_accuracy()),
                percent(s.total.accuracy()),
            ),
        );
    }
    line(
        "held-out tickets",
        format!(
            "{} → {} accurate, unsure of {} → {}  (before the run → after)",
            percent(s.before.accuracy),
            percent(s.after.accuracy),
            percent(s.before.unsure),
            percent(s.after.unsure)
        ),
    );
    line(
        "reviews",
        format!(
            "{} sent to Kafka{}: {} retraining records, {} dead letters, {} pending",
            s.reviews_delivered,
            if s.reviews_lost > 0 {
                format!(" ({} lost)", s.reviews_lost)
            } else {
                String::new()
            },
            s.retraining,
            s.dead_letters,
            s.pending
        ),
    );
    if s.over_budget > 0 {
        line(
            "over budget",
            format!(
                "{} unsure answers not sent (review.budget_per_second)",
                s.over_budget
            ),
        );
    }
    line(
        "reviewers",
        format!(
            "{} answers, {} of them wrong{}",
            s.answers,
            s.wrong_answers,
            if s.unreadable > 0 {
                format!(", {} reviews they could not read", s.unreadable)
            } else {
                String::new()
            }
        ),
    );
    line(
        "model",
        format!(
            "learned from {} retraining records, after {} labelled tickets to start",
            s.learned, s.pilot
        ),
    );
    if !s.drained {
        line(
            "",
            "(stopped before every review was resolved: the pending ones are counted above)"
                .to_owned(),
        );
    }
    let t = &s.total;
    format!(
        "\nSummary: {} requests in {:.0}s ({:.0}/s), {} errors\n{out}",
        t.requests,
        elapsed.as_secs_f64(),
        t.requests as f64 / elapsed.as_secs_f64().max(1e-9),
        t.errors
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(answered: u64, reviewed: u64, low: u64, correct: u64) -> Tally {
        Tally {
            requests: answered,
            answered,
            errors: 0,
            reviewed,
            low_confidence: low,
            correct,
            ..Tally::default()
        }
    }

    fn window(secs: u64, tally: Tally) -> Window {
        Window {
            elapsed: Duration::from_secs(secs),
            tally,
            retraining: 10,
            pending: 2,
            learned: 9,
            audit: Audit {
                agreed: 9,
                compared: 10,
            },
        }
    }

    #[test]
    fn a_row_lines_up_under_the_header() {
        let line = row(&window(5, tally(1000, 620, 600, 741)));
        assert_eq!(line.len(), header().len(), "{line}\n{}", header());
        assert!(line.contains("62.0%") && line.contains("74.1%"), "{line}");
        assert!(line.ends_with("90.0% of 10"), "{line}");
    }

    #[test]
    fn the_summary_compares_the_first_and_last_windows_with_answers() {
        let summary = Summary {
            windows: vec![
                window(5, tally(1000, 900, 900, 500)),
                window(10, tally(1000, 100, 90, 950)),
                window(12, tally(0, 0, 0, 0)),
            ],
            total: tally(2000, 1000, 990, 1450),
            reviews_delivered: 1000,
            reviews_lost: 0,
            over_budget: 0,
            answers: 1000,
            wrong_answers: 50,
            unreadable: 0,
            retraining: 998,
            dead_letters: 0,
            pending: 2,
            joiner_pending: 2,
            learned: 998,
            drained: false,
            pilot: 20,
            before: Evaluation {
                accuracy: 0.5,
                unsure: 1.0,
            },
            after: Evaluation {
                accuracy: 0.97,
                unsure: 0.1,
            },
            audit: Audit {
                agreed: 72,
                compared: 100,
            },
        };
        let text = super::summary(&summary, Duration::from_secs(10));
        assert!(
            text.contains("50.0% → 95.0%  (+45.0 points, first window → last)"),
            "{text}"
        );
        assert!(text.contains("90.0% → 10.0%  (-80.0 points)"), "{text}");
        assert!(text.contains("998 retraining records, 0 dead letters, 2 pending"));
        assert!(text.contains("stopped before every review was resolved"));
        assert!(text.contains("50.0% → 97.0% accurate, unsure of 100.0% → 10.0%"));
        assert!(
            text.contains("72.0% ± 4.5 points from 100 sampled reviews; true: 0.0% on those answers, 72.5% on all"),
            "{text}"
        );
    }
}
