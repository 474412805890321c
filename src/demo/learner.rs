//! The demo model: softmax regression over hashed word unigrams and bigrams, trained online
//! by one stochastic gradient step per labelled example.
//!
//! Small and honest: the model's confidence is its softmax probability, it starts from a few
//! labelled examples only (so it is weak and unsure), and each retraining record moves it a
//! little. Pure: no I/O, no clock.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// 2^14 hashed feature buckets: collisions are rare for the demo's vocabulary.
const FEATURE_BITS: u32 = 14;
const FEATURES: usize = 1 << FEATURE_BITS;
const HASH_SEED: u64 = 0x7265_7669_6577;

/// A text's features: bucket indices (the bias included), each with value 1/sqrt(count) so
/// long and short texts step alike.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    indices: Vec<usize>,
    value: f64,
}

impl Features {
    /// Lower-cased alphanumeric words; every word and every adjacent pair.
    pub fn of(text: &str) -> Features {
        let lower = text.to_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        // Bucket 0 is the bias.
        let mut indices = vec![0];
        for word in &words {
            indices.push(bucket(b"u", word));
        }
        for pair in words.windows(2) {
            indices.push(bucket(pair[0].as_bytes(), pair[1]));
        }
        let value = 1.0 / (indices.len() as f64).sqrt();
        Features { indices, value }
    }
}

fn bucket(prefix: &[u8], word: &str) -> usize {
    let mut key = Vec::with_capacity(prefix.len() + 1 + word.len());
    key.extend_from_slice(prefix);
    key.push(b' ');
    key.extend_from_slice(word.as_bytes());
    // Bucket 0 is kept for the bias.
    1 + (xxh3_64_with_seed(&key, HASH_SEED) % (FEATURES as u64 - 1)) as usize
}

/// Multinomial logistic regression over `classes` labels.
#[derive(Debug, Clone)]
pub struct Learner {
    classes: usize,
    /// Row-major: `weights[feature * classes + class]`.
    weights: Vec<f64>,
    learning_rate: f64,
    updates: u64,
}

impl Learner {
    pub fn new(classes: usize, learning_rate: f64) -> Learner {
        assert!(classes >= 2, "a classifier needs two classes");
        Learner {
            classes,
            weights: vec![0.0; FEATURES * classes],
            learning_rate,
            updates: 0,
        }
    }

    /// Class probabilities for `features` (they sum to 1).
    pub fn predict(&self, features: &Features) -> Vec<f64> {
        let mut logits = vec![0.0; self.classes];
        for &index in &features.indices {
            let row = &self.weights[index * self.classes..(index + 1) * self.classes];
            for (logit, w) in logits.iter_mut().zip(row) {
                *logit += w * features.value;
            }
        }
        softmax(&mut logits);
        logits
    }

    /// One gradient step of the cross-entropy loss towards `label`.
    pub fn learn(&mut self, features: &Features, label: usize) {
        assert!(label < self.classes, "label {label} out of range");
        let mut gradient = self.predict(features);
        gradient[label] -= 1.0;
        let step = self.learning_rate * features.value;
        for &index in &features.indices {
            let row = &mut self.weights[index * self.classes..(index + 1) * self.classes];
            for (w, g) in row.iter_mut().zip(&gradient) {
                *w -= step * g;
            }
        }
        self.updates += 1;
    }

    /// Examples learned so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }
}

/// In place, numerically stable.
fn softmax(logits: &mut [f64]) {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for logit in logits.iter_mut() {
        *logit = (*logit - max).exp();
        sum += *logit;
    }
    for logit in logits.iter_mut() {
        *logit /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::task::{CLASSES, Task, argmax};
    use proptest::prelude::*;

    fn accuracy(learner: &Learner, task: &mut Task, n: usize) -> f64 {
        let correct = (0..n)
            .filter(|_| {
                let ticket = task.ticket();
                argmax(&learner.predict(&Features::of(&ticket.text))) == ticket.label
            })
            .count();
        correct as f64 / n as f64
    }

    #[test]
    fn an_untrained_model_is_uniform_and_unsure() {
        let learner = Learner::new(CLASSES, 0.5);
        let p = learner.predict(&Features::of("my package has not arrived yet"));
        assert!(p.iter().all(|p| (p - 0.25).abs() < 1e-12), "{p:?}");
    }

    #[test]
    fn learning_one_example_raises_its_probability() {
        let mut learner = Learner::new(CLASSES, 0.5);
        let features = Features::of("I forgot my password");
        let before = learner.predict(&features)[3];
        learner.learn(&features, 3);
        let after = learner.predict(&features)[3];
        assert!(after > before, "{before} -> {after}");
        assert_eq!(learner.updates(), 1);
    }

    #[test]
    fn labelled_tickets_teach_the_task() {
        let mut task = Task::new(42);
        let mut learner = Learner::new(CLASSES, 0.5);
        let before = accuracy(&learner, &mut task.clone(), 1000);
        for _ in 0..2000 {
            let ticket = task.ticket();
            learner.learn(&Features::of(&ticket.text), ticket.label);
        }
        let after = accuracy(&learner, &mut task, 1000);
        assert!(before < 0.4, "untrained: {before}");
        assert!(after > 0.9, "after 2000 examples: {after}");
    }

    #[test]
    fn features_ignore_case_and_punctuation() {
        assert_eq!(
            Features::of("I forgot my PASSWORD!"),
            Features::of("i forgot  my password")
        );
        assert_ne!(
            Features::of("my card was declined"),
            Features::of("declined was my card"),
            "bigrams keep some word order"
        );
    }

    proptest! {
        #[test]
        fn probabilities_are_a_distribution(text in ".{0,80}", label in 0usize..CLASSES, steps in 0usize..5) {
            let mut learner = Learner::new(CLASSES, 0.5);
            let features = Features::of(&text);
            for _ in 0..steps {
                learner.learn(&features, label);
            }
            let p = learner.predict(&features);
            prop_assert_eq!(p.len(), CLASSES);
            prop_assert!(p.iter().all(|p| p.is_finite() && *p >= 0.0 && *p <= 1.0));
            prop_assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        }
    }
}
