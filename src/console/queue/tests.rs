use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;

use super::*;

const MINUTE: Duration = Duration::from_secs(60);

fn t(seconds: u64) -> SystemTime {
    // A fixed day, so "today" is stable: 2026-01-01T00:00:00Z.
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600 + seconds)
}

fn queue(reviewers_per_item: usize) -> Queue<()> {
    Queue::new(Rules {
        reviewers_per_item,
        task_time_limit: 5 * MINUTE,
        review_timeout: 60 * MINUTE,
    })
}

fn lease(q: &mut Queue<()>, reviewer: &str, now: SystemTime) -> Option<String> {
    q.lease_next(reviewer, None, now).map(|l| l.id)
}

fn submit(q: &mut Queue<()>, id: &str, reviewer: &str, now: SystemTime) -> Result<(), Refusal> {
    q.begin_submit(id, reviewer, now)?;
    q.finish_submit(id, reviewer, true, now);
    Ok(())
}

#[test]
fn oldest_item_first_and_a_reload_shows_the_same_item() {
    let mut q = queue(1);
    q.offer("new", "r", t(20), (), t(30));
    q.offer("old", "r", t(10), (), t(30));
    assert_eq!(lease(&mut q, "alice", t(30)).as_deref(), Some("old"));
    assert_eq!(lease(&mut q, "alice", t(40)).as_deref(), Some("old"));
    assert_eq!(lease(&mut q, "bob", t(40)).as_deref(), Some("new"));
    assert_eq!(lease(&mut q, "carol", t(40)), None, "every item is leased");
}

#[test]
fn a_leased_item_returns_to_the_queue_when_the_lease_expires() {
    let mut q = queue(1);
    q.offer("a", "r", t(0), (), t(0));
    assert_eq!(lease(&mut q, "alice", t(0)).as_deref(), Some("a"));
    assert_eq!(lease(&mut q, "bob", t(299)), None);
    assert_eq!(lease(&mut q, "bob", t(300)).as_deref(), Some("a"));
    // Alice's late answer is refused: the item is bob's now.
    assert_eq!(
        q.begin_submit("a", "alice", t(301)),
        Err(Refusal::LeaseLost)
    );
    assert_eq!(submit(&mut q, "a", "bob", t(302)), Ok(()));
    assert!(!q.is_open("a"));
}

#[test]
fn a_late_answer_is_taken_when_nobody_took_the_item_over() {
    let mut q = queue(1);
    q.offer("a", "r", t(0), (), t(0));
    lease(&mut q, "alice", t(0));
    let submission = q.begin_submit("a", "alice", t(900)).unwrap();
    assert_eq!(
        submission.shown_at,
        Some(t(0)),
        "time spent counts from when it was shown"
    );
}

#[test]
fn two_reviewers_per_item_never_the_same_reviewer_twice() {
    let mut q = queue(2);
    q.offer("a", "r", t(0), (), t(0));
    q.offer("b", "r", t(1), (), t(1));
    assert_eq!(lease(&mut q, "alice", t(2)).as_deref(), Some("a"));
    assert_eq!(lease(&mut q, "bob", t(2)).as_deref(), Some("a"));
    assert_eq!(lease(&mut q, "carol", t(2)).as_deref(), Some("b"));
    submit(&mut q, "a", "alice", t(3)).unwrap();
    assert!(q.is_open("a"), "one answer of two");
    assert_eq!(lease(&mut q, "alice", t(4)).as_deref(), Some("b"));
    submit(&mut q, "b", "alice", t(5)).unwrap();
    assert_eq!(
        lease(&mut q, "alice", t(6)),
        None,
        "alice answered everything open"
    );
    submit(&mut q, "a", "bob", t(7)).unwrap();
    assert!(!q.is_open("a"));
}

#[test]
fn a_double_submit_publishes_once() {
    let mut q = queue(1);
    q.offer("a", "r", t(0), (), t(0));
    lease(&mut q, "alice", t(0));
    q.begin_submit("a", "alice", t(1)).unwrap();
    assert_eq!(q.begin_submit("a", "alice", t(1)), Err(Refusal::InProgress));
    q.finish_submit("a", "alice", true, t(2));
    assert_eq!(
        q.begin_submit("a", "alice", t(3)),
        Err(Refusal::AlreadyAnswered)
    );
    assert_eq!(q.begin_submit("a", "bob", t(3)), Err(Refusal::Closed));
    assert_eq!(q.stats("alice", t(3)).mine_today, 1);
}

#[test]
fn a_failed_publish_gives_the_lease_back() {
    let mut q = queue(1);
    q.offer("a", "r", t(0), (), t(0));
    lease(&mut q, "alice", t(0));
    q.begin_submit("a", "alice", t(10)).unwrap();
    assert_eq!(lease(&mut q, "bob", t(11)), None, "held while publishing");
    q.finish_submit("a", "alice", false, t(12));
    assert_eq!(lease(&mut q, "bob", t(13)), None);
    assert_eq!(lease(&mut q, "alice", t(13)).as_deref(), Some("a"));
    let retry = q.begin_submit("a", "alice", t(14)).unwrap();
    assert_eq!(retry.shown_at, Some(t(0)));
}

#[test]
fn skipped_items_come_back_only_when_nothing_else_is_left() {
    let mut q = queue(1);
    q.offer("a", "r", t(0), (), t(0));
    q.offer("b", "r", t(1), (), t(1));
    assert_eq!(lease(&mut q, "alice", t(2)).as_deref(), Some("a"));
    q.skip("a", "alice");
    assert_eq!(
        lease(&mut q, "bob", t(3)).as_deref(),
        Some("a"),
        "back for others"
    );
    assert_eq!(lease(&mut q, "alice", t(3)).as_deref(), Some("b"));
    q.skip("b", "alice");
    q.skip("a", "bob");
    assert_eq!(lease(&mut q, "alice", t(4)).as_deref(), Some("a"));
}

#[test]
fn a_route_filter_limits_what_is_offered() {
    let mut q = queue(1);
    q.offer("a", "chat", t(0), (), t(0));
    q.offer("b", "sentiment", t(1), (), t(1));
    let got = q.lease_next("alice", Some("sentiment"), t(2)).unwrap();
    assert_eq!(got.id, "b");
    // Asking for another route gives up the lease held on this one.
    assert_eq!(q.lease_next("alice", Some("chat"), t(3)).unwrap().id, "a");
    assert_eq!(lease(&mut q, "bob", t(3)).as_deref(), Some("b"));
}

#[test]
fn answers_before_their_review_record_close_it_on_arrival() {
    let mut q = queue(2);
    assert!(q.record_answer("a", "alice", t(5)));
    assert!(
        !q.record_answer("a", "alice", t(6)),
        "the same reviewer counts once"
    );
    assert_eq!(q.offer("a", "r", t(0), (), t(10)), Offered::Open);
    assert_eq!(lease(&mut q, "alice", t(11)), None);
    q.record_answer("a", "bob", t(12));
    assert!(!q.is_open("a"));
    assert_eq!(q.offer("a", "r", t(0), (), t(13)), Offered::Duplicate);
    q.record_answer("b", "alice", t(14));
    q.record_answer("b", "bob", t(14));
    assert_eq!(q.offer("b", "r", t(1), (), t(15)), Offered::Answered);
}

#[test]
fn items_expire_after_the_review_timeout() {
    let mut q = queue(1);
    assert_eq!(q.offer("old", "r", t(0), (), t(3600)), Offered::Expired);
    assert_eq!(q.offer("a", "r", t(100), (), t(200)), Offered::Open);
    assert_eq!(q.stats("x", t(200)).oldest, Some(t(100)));
    assert_eq!(lease(&mut q, "alice", t(3699)).as_deref(), Some("a"));
    assert_eq!(q.expire(t(3700)), 1);
    assert_eq!(lease(&mut q, "bob", t(3700)), None);
    assert_eq!(q.begin_submit("a", "alice", t(3701)), Err(Refusal::Closed));
    // Closed ids are forgotten once a late copy of their record would be expired anyway.
    assert_eq!(q.offer("a", "r", t(100), (), t(3800)), Offered::Expired);
    assert!(q.closed.len() <= 2 && q.early.is_empty());
}

#[test]
fn stats_count_open_leased_and_my_answers_today() {
    let mut q = queue(1);
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        q.offer(
            id,
            if i == 2 { "chat" } else { "sentiment" },
            t(i as u64),
            (),
            t(3),
        );
    }
    lease(&mut q, "alice", t(10));
    let stats = q.stats("bob", t(10));
    assert_eq!((stats.open, stats.leased), (3, 1));
    assert_eq!(q.counts(t(10)), (3, 1));
    assert_eq!(stats.oldest, Some(t(0)));
    assert_eq!(
        stats.routes["sentiment"],
        RouteStats {
            open: 2,
            leased: 1,
            for_me: 1
        }
    );
    submit(&mut q, "a", "alice", t(20)).unwrap();
    // Yesterday's answer does not count today.
    q.record_answer("c", "alice", t(0) - Duration::from_secs(10));
    assert_eq!(q.stats("alice", t(30)).mine_today, 1);
    assert_eq!(q.stats("alice", t(86_400)).mine_today, 0, "a new day");
}

/// What reviewers did, as a model: the answers each id has had.
#[derive(Debug, Clone)]
enum Op {
    Lease(usize),
    Submit(usize, bool),
    Skip(usize),
    Answer(usize, usize),
    Review(usize),
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize).prop_map(Op::Lease),
        3 => (0..4usize, any::<bool>()).prop_map(|(r, ok)| Op::Submit(r, ok)),
        1 => (0..4usize).prop_map(Op::Skip),
        2 => (0..6usize, 0..5usize).prop_map(|(id, r)| Op::Answer(id, r)),
        2 => (0..6usize).prop_map(Op::Review),
        1 => (1..25u64).prop_map(Op::Wait),
    ]
}

proptest! {
    /// Whatever reviewers do, a lease never goes to a reviewer who answered the item, an item
    /// never has more reviewers working on it than it needs, a reviewer holds one item at a
    /// time, and the open items are exactly those with too few answers.
    #[test]
    fn leases_respect_answers_and_capacity(
        needed in 1..4usize,
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let reviewers = ["alice", "bob", "carol", "dave", "erin"];
        let mut q = queue(needed);
        let mut now = t(0);
        let mut answers: HashMap<String, BTreeSet<&str>> = HashMap::new();
        let mut reviewed = BTreeSet::new();
        let mut holding: HashMap<&str, String> = HashMap::new();
        for op in ops {
            match op {
                Op::Review(i) => {
                    let id = format!("i{i}");
                    q.offer(&id, "r", now, (), now);
                    reviewed.insert(id);
                }
                Op::Answer(i, r) => {
                    let id = format!("i{i}");
                    q.record_answer(&id, reviewers[r], now);
                    answers.entry(id).or_default().insert(reviewers[r]);
                }
                Op::Lease(r) => {
                    let reviewer = reviewers[r];
                    let before = q.held.get(reviewer).and_then(|id| q.lease(id, reviewer, now));
                    if let Some(leased) = q.lease_next(reviewer, None, now) {
                        let done = answers.get(&leased.id).is_some_and(|a| a.contains(reviewer));
                        prop_assert!(!done, "{reviewer} got {} again", leased.id);
                        // A new lease fits in what the item still needs (answers from other
                        // instances can overfill it later; they do not revoke leases).
                        if before.as_ref() != Some(&leased) {
                            let item = q.item(&leased.id).unwrap();
                            prop_assert!(item.committed("", now) <= needed);
                        }
                        holding.insert(reviewer, leased.id);
                    }
                }
                Op::Submit(r, published) => {
                    let reviewer = reviewers[r];
                    if let Some(id) = holding.get(reviewer).cloned()
                        && q.begin_submit(&id, reviewer, now).is_ok()
                    {
                        prop_assert_eq!(
                            q.begin_submit(&id, reviewer, now),
                            Err(Refusal::InProgress)
                        );
                        q.finish_submit(&id, reviewer, published, now);
                        if published {
                            answers.entry(id).or_default().insert(reviewer);
                        }
                    }
                }
                Op::Skip(r) => {
                    if let Some(id) = holding.remove(reviewers[r]) {
                        q.skip(&id, reviewers[r]);
                    }
                }
                Op::Wait(seconds) => now += Duration::from_secs(seconds),
            }
            // One live lease per reviewer, and the gauge's count of leased items (from each
            // reviewer's lease) is the queue's.
            for reviewer in reviewers {
                let held = q.items.values().filter(|i| i.lease_of(reviewer, now).is_some()).count();
                prop_assert!(held <= 1, "{reviewer} holds {held} items");
            }
            let leased = q.items.values().filter(|i| i.live_leases(now).next().is_some()).count();
            prop_assert_eq!(q.counts(now), (q.items.len(), leased));
            // Open ⇔ reviewed and too few answers (120 waits of < 25 s never reach the
            // hour after which items expire).
            for id in &reviewed {
                let count = answers.get(id).map_or(0, BTreeSet::len);
                prop_assert_eq!(q.is_open(id), count < needed, "{} with {} answers", id, count);
            }
        }
    }

    /// A console rebuilt from the two topics, read in any interleaving, serves the same open
    /// items and never offers an answered one.
    #[test]
    fn rebuilding_in_any_order_gives_the_same_queue(
        needed in 1..3usize,
        reviews in proptest::collection::btree_set(0..30usize, 1..20),
        answers in proptest::collection::vec((0..40usize, 0..3usize), 0..60),
        interleaving in proptest::collection::vec(any::<bool>(), 0..100),
    ) {
        let reviewers = ["alice", "bob", "carol"];
        let now = t(1000);
        let mut model: HashMap<usize, BTreeSet<usize>> = HashMap::new();
        for &(id, r) in &answers {
            model.entry(id).or_default().insert(r);
        }
        let mut q = queue(needed);
        let (mut rs, mut as_) = (reviews.iter().peekable(), answers.iter().peekable());
        let mut choices = interleaving.into_iter();
        loop {
            let take_review = match (rs.peek(), as_.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                _ => choices.next().unwrap_or(true),
            };
            if take_review {
                let id = rs.next().unwrap();
                q.offer(&format!("i{id}"), "r", t(*id as u64), (), now);
            } else {
                let &(id, r) = as_.next().unwrap();
                q.record_answer(&format!("i{id}"), reviewers[r], t(500));
            }
        }
        for id in &reviews {
            let count = model.get(id).map_or(0, BTreeSet::len);
            prop_assert_eq!(q.is_open(&format!("i{id}")), count < needed);
        }
        for (r, reviewer) in reviewers.iter().enumerate() {
            while let Some(leased) = q.lease_next(reviewer, None, now) {
                let id: usize = leased.id[1..].parse().unwrap();
                prop_assert!(!model.get(&id).is_some_and(|a| a.contains(&r)));
                q.skip(&leased.id, reviewer);
                q.record_answer(&leased.id, reviewer, now);
            }
        }
    }
}
