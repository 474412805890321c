//! The demo's flags, their checks, and the configuration the demo runs the production code
//! with.

use std::net::SocketAddr;
use std::time::Duration;

use super::task::LABELS;
use crate::config::{AuthMode, Config, TemplateKind};
use crate::kafka::EMBEDDED_BROKERS;

/// `review.confidence_below` of the demo (reviewloop's default).
pub(super) const CONFIDENCE_BELOW: f64 = 0.7;

/// What `reviewloop demo` runs: the command's flags, with the same defaults as
/// [`DemoOptions::default`].
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct DemoOptions {
    /// How long the traffic runs (ignored with --serve).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Requests a second sent through the proxy.
    #[arg(long, default_value_t = 200)]
    pub rps: u32,
    /// Seeds the task's hidden rule, the tickets and the reviewers' mistakes.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Keep running (traffic included) until Ctrl-C, for watching the topics and metrics.
    #[arg(long)]
    pub serve: bool,
    /// One table row per this period.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Simulated reviewers; 0 with --serve: people answer in the console.
    #[arg(long, default_value_t = 16)]
    pub reviewers: usize,
    /// Probability that a reviewer gives the true label (0..1).
    #[arg(long, default_value_t = 0.95)]
    pub reviewer_accuracy: f64,
    /// A reviewer's mean time per review.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub review_delay: Duration,
    /// Answers needed per review (join.reviewers_per_item), each from another reviewer.
    #[arg(long, default_value_t = 1)]
    pub answers_per_review: u32,
    /// Reviews a second at most (review.budget_per_second); 0 = unlimited.
    #[arg(long = "budget", default_value_t = 0.0)]
    pub budget_per_second: f64,
    /// Review this share of the answers, the least confident (review.target_rate); 0 = off,
    /// review below confidence 0.7 instead.
    #[arg(long, default_value_t = 0.0)]
    pub target_rate: f64,
    /// The audit sample, in percent of the answers (review.sample_percent).
    #[arg(long = "sample", default_value_t = 1.0)]
    pub sample_percent: f64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            duration: Duration::from_secs(60),
            rps: 200,
            seed: 42,
            serve: false,
            interval: Duration::from_secs(5),
            // 16 reviewers at ~50 ms each answer ~320 reviews a second: they keep up with the
            // first seconds, when nearly every answer is unsure (real reviewers take minutes;
            // the demo runs the loop fast-forward).
            reviewers: 16,
            reviewer_accuracy: 0.95,
            review_delay: Duration::from_millis(50),
            answers_per_review: 1,
            budget_per_second: 0.0,
            target_rate: 0.0,
            sample_percent: 1.0,
        }
    }
}

impl DemoOptions {
    /// Every problem with the options, each naming its flag.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.rps == 0 {
            problems.push("--rps must be at least 1".to_owned());
        }
        if self.duration.is_zero() {
            problems.push("--duration must be more than 0s".to_owned());
        }
        if self.interval.is_zero() {
            problems.push("--interval must be more than 0s".to_owned());
        }
        if self.reviewers == 0 && !self.serve {
            problems
                .push("--reviewers 0 needs --serve: then people answer in the console".to_owned());
        }
        if !(0.0..=1.0).contains(&self.reviewer_accuracy) {
            problems.push(format!(
                "--reviewer-accuracy = {}: must be between 0 and 1",
                self.reviewer_accuracy
            ));
        }
        let simulated = self.reviewers > 0;
        if self.answers_per_review == 0
            || (simulated && self.answers_per_review as usize > self.reviewers)
        {
            problems.push(format!(
                "--answers-per-review = {}: must be between 1 and --reviewers ({})",
                self.answers_per_review, self.reviewers
            ));
        }
        if !(self.budget_per_second >= 0.0 && self.budget_per_second.is_finite()) {
            problems.push(format!(
                "--budget = {}: must be 0 (unlimited) or more",
                self.budget_per_second
            ));
        }
        if !(0.0..1.0).contains(&self.target_rate) {
            problems.push(format!(
                "--target-rate = {}: must be a share in [0, 1), e.g. 0.05",
                self.target_rate
            ));
        }
        if !(0.0..=100.0).contains(&self.sample_percent) {
            problems.push(format!(
                "--sample = {}: must be a percentage between 0 and 100",
                self.sample_percent
            ));
        }
        problems
    }
}

/// Invalid [`DemoOptions`].
#[derive(Debug, thiserror::Error)]
#[error("bad demo options:\n  - {}", .0.join("\n  - "))]
pub struct OptionsError(pub Vec<String>);

/// The configuration the demo runs the production code with.
pub fn demo_config(options: &DemoOptions, model: SocketAddr) -> Config {
    let mut config = Config::default();
    config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.server.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.server.shutdown_grace = Duration::from_secs(5);
    config.upstream.url = format!("http://{model}");
    config.upstream.timeout = Duration::from_secs(10);
    config.kafka.brokers = EMBEDDED_BROKERS.into();
    config.join.reviewers_per_item = options.answers_per_review;
    config.review.budget_per_second = options.budget_per_second;
    config.review.confidence_below = CONFIDENCE_BELOW;
    config.review.sample_percent = options.sample_percent;
    if options.target_rate > 0.0 {
        // No ceiling, and a sketch that follows a model learning within seconds: the demo runs
        // the loop fast-forward (a deployment keeps the 5-minute half-life).
        config.review.target_rate = options.target_rate;
        config.review.confidence_below = 1.0;
        config.review.target_half_life = Duration::from_secs(5);
        config.review.target_warmup = 200;
    }
    // With --serve the console runs too: on loopback, where a name is enough to sign in.
    config.console.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.console.auth = AuthMode::None;
    config.console.template = TemplateKind::Classify;
    config.console.labels = LABELS.iter().map(|label| label.to_string()).collect();
    config.console.instructions = "Which team should handle this support ticket?".into();
    config.console.task_time_limit = Duration::from_secs(300);
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_bad_options_are_all_named() {
        assert!(DemoOptions::default().validate().is_empty());
        let bad = DemoOptions {
            rps: 0,
            reviewers: 2,
            answers_per_review: 3,
            reviewer_accuracy: 1.5,
            budget_per_second: -1.0,
            target_rate: 1.5,
            sample_percent: 101.0,
            ..DemoOptions::default()
        };
        let problems = bad.validate();
        assert_eq!(problems.len(), 6, "{problems:?}");
        for flag in [
            "--rps",
            "--answers-per-review",
            "--reviewer-accuracy",
            "--budget",
            "--target-rate",
            "--sample",
        ] {
            assert!(problems.iter().any(|p| p.contains(flag)), "{flag}");
        }
    }

    #[test]
    fn people_review_only_when_the_demo_keeps_serving() {
        let alone = DemoOptions {
            reviewers: 0,
            ..DemoOptions::default()
        };
        let problems = alone.validate();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("--serve"), "{problems:?}");
        let serving = DemoOptions {
            serve: true,
            answers_per_review: 2,
            ..alone
        };
        assert!(serving.validate().is_empty());
    }

    #[test]
    fn the_flags_default_to_the_defaults() {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            options: DemoOptions,
        }
        let parsed = <Command as clap::Parser>::try_parse_from(["demo"]).unwrap();
        assert_eq!(parsed.options, DemoOptions::default());
        let parsed =
            <Command as clap::Parser>::try_parse_from(["demo", "--duration", "2m", "--serve"])
                .unwrap();
        assert_eq!(parsed.options.duration, Duration::from_secs(120));
        assert!(parsed.options.serve);
    }

    #[test]
    fn the_demo_config_is_valid_and_embedded() {
        let config = demo_config(
            &DemoOptions::default(),
            SocketAddr::from(([127, 0, 0, 1], 1)),
        );
        assert!(config.kafka.is_embedded());
        let checked = config.check().expect("the demo's configuration is valid");
        let config = checked.config;
        assert_eq!(config.upstream.url, "http://127.0.0.1:1");
    }
}
