//! The demo's synthetic task: routing customer-support tickets to one of four teams.
//!
//! A ticket is one to three phrases (plus a neutral greeting and sign-off). Each phrase has a
//! hidden weight per team; a ticket's true team is the one with the largest summed weight.
//! Most phrases belong clearly to one team, some to two ("I was charged for an order that
//! never arrived"), and the weights are jittered by the seed, so a ticket mixing teams has a
//! true answer that only labelled examples reveal. The truth is a function of the text alone:
//! a simulated reviewer can label any ticket, including one a user types in by hand.
//!
//! Everything here is pure and deterministic given the seed.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// The teams, in the order the weights use. Also the model's labels.
pub const LABELS: [&str; 4] = ["billing", "shipping", "technical", "account"];

/// Number of classes.
pub const CLASSES: usize = LABELS.len();

/// A phrase with its base weights (before the seed's jitter): billing, shipping, technical,
/// account.
struct Phrase {
    text: &'static str,
    weights: [f64; CLASSES],
}

const fn phrase(text: &'static str, weights: [f64; CLASSES]) -> Phrase {
    Phrase { text, weights }
}

const B: [f64; CLASSES] = [1.0, 0.0, 0.0, 0.0];
const S: [f64; CLASSES] = [0.0, 1.0, 0.0, 0.0];
const T: [f64; CLASSES] = [0.0, 0.0, 1.0, 0.0];
const A: [f64; CLASSES] = [0.0, 0.0, 0.0, 1.0];

/// Phrases of one team first (by team), then the ones that belong to two.
const PHRASES: &[Phrase] = &[
    phrase("I was charged twice for the same order", B),
    phrase("the invoice shows the wrong amount", B),
    phrase("I want a refund for my last payment", B),
    phrase("my card was declined at checkout", B),
    phrase("why did my subscription price go up", B),
    phrase("please remove the extra charge on my statement", B),
    phrase("the discount code was not applied to my bill", B),
    phrase("I need a copy of my receipt", B),
    phrase("I was billed after I cancelled", B),
    phrase("my package has not arrived yet", S),
    phrase("the tracking number does not work", S),
    phrase("the delivery is three days late", S),
    phrase("the box arrived damaged", S),
    phrase("I received the wrong item", S),
    phrase("can you change my delivery address", S),
    phrase("the courier left the parcel at the wrong door", S),
    phrase("my order is stuck in customs", S),
    phrase("only half of my order was delivered", S),
    phrase("the app crashes when I open it", T),
    phrase("the page shows error 500", T),
    phrase("I cannot upload my photos", T),
    phrase("the website is very slow today", T),
    phrase("notifications stopped working after the update", T),
    phrase("the sync between my devices is broken", T),
    phrase("the export button does nothing", T),
    phrase("the app freezes on the loading screen", T),
    phrase("search returns no results", T),
    phrase("I forgot my password", A),
    phrase("I cannot log in to my account", A),
    phrase("please delete my account", A),
    phrase("how do I change my email address", A),
    phrase("my account was locked", A),
    phrase("I did not get the verification code", A),
    phrase("someone else logged into my account", A),
    phrase("I want to merge my two accounts", A),
    phrase("please update the name on my profile", A),
    phrase("the app charged me twice", [0.7, 0.0, 0.5, 0.0]),
    phrase(
        "I cannot pay because the checkout page is broken",
        [0.6, 0.0, 0.65, 0.0],
    ),
    phrase(
        "I was charged for an order that never arrived",
        [0.6, 0.7, 0.0, 0.0],
    ),
    phrase("the login page keeps crashing", [0.0, 0.0, 0.7, 0.5]),
    phrase("my refund has not arrived", [0.7, 0.35, 0.0, 0.0]),
    phrase(
        "I cannot see my orders since I changed my email",
        [0.0, 0.3, 0.3, 0.6],
    ),
    phrase("the card on my account was removed", [0.5, 0.0, 0.0, 0.6]),
    phrase("the delivery app will not load", [0.0, 0.5, 0.6, 0.0]),
];

/// Phrases that belong to more than one team start here in [`PHRASES`].
const MIXED_START: usize = 36;

const OPENERS: &[&str] = &["", "", "Hi, ", "Hello, ", "Urgent: ", "Good morning, "];
const JOINERS: &[&str] = &[" and ", ". Also ", ", ", " but "];
const CLOSERS: &[&str] = &["", "", ". Thanks", ". Please help", "!", ". Regards"];

/// Base weights scaled by a seeded factor in `[1 - JITTER, 1 + JITTER]`: each seed is a
/// slightly different routing policy, so nothing about it can be hard-coded.
const JITTER: f64 = 0.3;

/// One generated ticket and its true team.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticket {
    pub text: String,
    /// Index into [`LABELS`].
    pub label: usize,
}

/// The task for one seed: the hidden weights, and a generator of tickets.
#[derive(Debug, Clone)]
pub struct Task {
    /// Per phrase of [`PHRASES`], its jittered weights.
    weights: Vec<[f64; CLASSES]>,
    rng: Xoshiro256PlusPlus,
}

impl Task {
    pub fn new(seed: u64) -> Task {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let weights = PHRASES
            .iter()
            .map(|p| {
                p.weights
                    .map(|w| w * (1.0 + rng.random_range(-JITTER..=JITTER)))
            })
            .collect();
        Task {
            weights,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5eed_7a5c),
        }
    }

    /// The same hidden rule with another stream of tickets (the pilot set, the traffic).
    pub fn fork(&self, stream: u64) -> Task {
        Task {
            weights: self.weights.clone(),
            rng: Xoshiro256PlusPlus::seed_from_u64(
                self.rng.clone().random::<u64>() ^ stream.rotate_left(32),
            ),
        }
    }

    /// The next ticket: a main team's phrase, maybe followed by phrases of any team.
    pub fn ticket(&mut self) -> Ticket {
        let rng = &mut self.rng;
        let team = rng.random_range(0..CLASSES);
        let count = match rng.random_range(0..10) {
            0..4 => 1,
            4..8 => 2,
            _ => 3,
        };
        let mut chosen = vec![team_phrase(rng, team)];
        while chosen.len() < count {
            let next = match rng.random_range(0..20) {
                0..8 => team_phrase(rng, team),
                8..15 => {
                    let other = rng.random_range(0..CLASSES);
                    team_phrase(rng, other)
                }
                _ => rng.random_range(MIXED_START..PHRASES.len()),
            };
            if !chosen.contains(&next) {
                chosen.push(next);
            }
        }
        let mut text = String::from(OPENERS[rng.random_range(0..OPENERS.len())]);
        for (i, &index) in chosen.iter().enumerate() {
            if i > 0 {
                text.push_str(JOINERS[rng.random_range(0..JOINERS.len())]);
            }
            text.push_str(PHRASES[index].text);
        }
        text.push_str(CLOSERS[rng.random_range(0..CLOSERS.len())]);
        let label = argmax(&self.score(&chosen));
        Ticket { text, label }
    }

    /// The true team of any text: the phrases it contains, weighed. `None` when it contains
    /// none of them (a reviewer cannot tell).
    pub fn truth(&self, text: &str) -> Option<usize> {
        let lower = text.to_lowercase();
        let found: Vec<usize> = PHRASES
            .iter()
            .enumerate()
            .filter(|(_, p)| lower.contains(&p.text.to_lowercase()))
            .map(|(i, _)| i)
            .collect();
        if found.is_empty() {
            return None;
        }
        Some(argmax(&self.score(&found)))
    }

    fn score(&self, phrases: &[usize]) -> [f64; CLASSES] {
        let mut total = [0.0; CLASSES];
        for &i in phrases {
            for (t, w) in total.iter_mut().zip(self.weights[i]) {
                *t += w;
            }
        }
        total
    }
}

/// A random phrase belonging to `team` alone.
fn team_phrase(rng: &mut Xoshiro256PlusPlus, team: usize) -> usize {
    let own: Vec<usize> = (0..MIXED_START)
        .filter(|&i| PHRASES[i].weights[team] > 0.0)
        .collect();
    own[rng.random_range(0..own.len())]
}

/// Index of the largest value (the first on a tie).
pub fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_phrase_table_is_consistent() {
        for (i, p) in PHRASES.iter().enumerate() {
            let teams = p.weights.iter().filter(|w| **w > 0.0).count();
            assert_eq!(teams == 1, i < MIXED_START, "{}", p.text);
        }
        for team in 0..CLASSES {
            assert!((0..MIXED_START).any(|i| PHRASES[i].weights[team] > 0.0));
        }
    }

    #[test]
    fn a_seed_gives_the_same_tickets_and_another_seed_others() {
        let tickets = |seed| {
            let mut task = Task::new(seed);
            (0..50).map(|_| task.ticket()).collect::<Vec<_>>()
        };
        assert_eq!(tickets(7), tickets(7));
        assert_ne!(tickets(7), tickets(8));
    }

    #[test]
    fn a_fork_has_the_same_rule_and_other_tickets() {
        let task = Task::new(7);
        let mut fork = task.fork(1);
        let mut other = task.fork(2);
        let a: Vec<Ticket> = (0..50).map(|_| fork.ticket()).collect();
        let b: Vec<Ticket> = (0..50).map(|_| other.ticket()).collect();
        assert_ne!(a, b);
        for ticket in a.iter().chain(&b) {
            assert_eq!(task.truth(&ticket.text), Some(ticket.label));
        }
        assert_eq!(task.fork(1).ticket(), a[0]);
    }

    #[test]
    fn no_phrase_hides_inside_another() {
        // The truth is read back by finding phrases in the text: one inside another (or
        // spanning a joiner) would be counted twice.
        for (i, a) in PHRASES.iter().enumerate() {
            for (j, b) in PHRASES.iter().enumerate() {
                if i != j {
                    assert!(!a.text.contains(b.text), "{} / {}", a.text, b.text);
                }
            }
        }
    }

    #[test]
    fn teams_are_balanced_and_tickets_are_not_all_one_team_deep() {
        let mut task = Task::new(42);
        let mut counts = [0usize; CLASSES];
        let mut mixed = 0;
        for _ in 0..4000 {
            let ticket = task.ticket();
            counts[ticket.label] += 1;
            if ticket.text.contains(" and ")
                || ticket.text.contains(". Also ")
                || ticket.text.contains(", ")
                || ticket.text.contains(" but ")
            {
                mixed += 1;
            }
        }
        for count in counts {
            assert!((700..1300).contains(&count), "{counts:?}");
        }
        assert!(mixed > 1500, "{mixed} of 4000 tickets have several phrases");
    }

    #[test]
    fn a_mixed_ticket_can_belong_to_another_team_than_its_first_phrase() {
        // The hard cases the model must learn from reviews: the first phrase alone would
        // route elsewhere.
        let mut task = Task::new(42);
        let surprising = (0..4000)
            .map(|_| task.ticket())
            .filter(|t| {
                let first = PHRASES
                    .iter()
                    .position(|p| t.text.contains(p.text))
                    .expect("a known phrase");
                first < MIXED_START && PHRASES[first].weights[t.label] == 0.0
            })
            .count();
        assert!(surprising > 200, "{surprising}");
    }

    #[test]
    fn text_without_a_known_phrase_has_no_truth() {
        let task = Task::new(1);
        assert_eq!(task.truth("what is the weather like"), None);
        assert_eq!(task.truth("I FORGOT MY PASSWORD!"), Some(3));
    }

    proptest! {
        #[test]
        fn the_truth_of_a_ticket_is_read_back_from_its_text(seed in any::<u64>(), n in 0usize..20) {
            let mut task = Task::new(seed);
            for _ in 0..n {
                task.ticket();
            }
            let ticket = task.ticket();
            prop_assert_eq!(task.truth(&ticket.text), Some(ticket.label));
        }
    }
}
