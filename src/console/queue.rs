//! The work queue (pure): which review items are open, who holds a lease on which, who
//! answered what. No I/O and no clock: every operation is told the time.
//!
//! An item is open until `reviewers_per_item` distinct reviewers answered it or
//! `review_timeout` passed since its review record. Showing an item to a reviewer leases it to
//! them for `task_time_limit`; an item has at most as many live leases as it still needs
//! answers, a reviewer holds one lease at a time and is never offered an item they answered.
//! Expired leases simply stop counting. Answers can arrive before their review record (the
//! topics are read independently): they wait until it comes, and the item opens already
//! answered — or never opens.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The rules of the queue, from `[join]` and `[console]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    pub reviewers_per_item: usize,
    pub task_time_limit: Duration,
    pub review_timeout: Duration,
}

#[derive(Debug, Clone)]
struct Lease {
    reviewer: String,
    shown_at: SystemTime,
    expires: SystemTime,
}

/// Where an item is in the queue: its review record's time, then arrival order.
type Key = (SystemTime, u64);

#[derive(Debug)]
struct Item<T> {
    id: String,
    route: Arc<str>,
    arrived: SystemTime,
    payload: T,
    answered: BTreeSet<String>,
    leases: Vec<Lease>,
    /// Reviewers whose answer is being published, with when they were shown the item.
    submitting: BTreeMap<String, Option<SystemTime>>,
    /// Reviewers who skipped it: offered to them again only when nothing else is left.
    skipped_by: BTreeSet<String>,
}

impl<T> Item<T> {
    fn live_leases(&self, now: SystemTime) -> impl Iterator<Item = &Lease> {
        self.leases.iter().filter(move |l| l.expires > now)
    }

    fn lease_of(&self, reviewer: &str, now: SystemTime) -> Option<&Lease> {
        self.live_leases(now).find(|l| l.reviewer == reviewer)
    }

    /// Answers given, being given, or reserved by a live lease (other than `except`'s).
    fn committed(&self, except: &str, now: SystemTime) -> usize {
        self.answered.len()
            + self.submitting.len()
            + self
                .live_leases(now)
                .filter(|l| l.reviewer != except)
                .count()
    }

    /// Whether `reviewer` may be given a new lease on it.
    fn available_to(&self, reviewer: &str, needed: usize, now: SystemTime) -> bool {
        !self.answered.contains(reviewer)
            && !self.submitting.contains_key(reviewer)
            && self.lease_of(reviewer, now).is_none()
            && self.committed(reviewer, now) < needed
    }
}

/// An id the queue no longer serves (answered or expired), kept until a late duplicate of its
/// review record could no longer open it.
#[derive(Debug)]
struct Closed {
    forget_at: SystemTime,
    answered: BTreeSet<String>,
}

/// Answers whose review record has not been read (yet).
#[derive(Debug)]
struct Early {
    forget_at: SystemTime,
    answered: BTreeSet<String>,
}

/// An item leased to a reviewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    pub id: String,
    pub shown_at: SystemTime,
    pub expires: SystemTime,
}

/// What became of a review record offered to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    Open,
    /// Already open or already closed.
    Duplicate,
    /// Older than `review_timeout`.
    Expired,
    /// Its answers arrived first.
    Answered,
}

/// Why a submission is not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The item has its answers or expired.
    Closed,
    /// This reviewer answered it already (a double submit).
    AlreadyAnswered,
    /// The same reviewer's answer is being published right now (a double click).
    InProgress,
    /// The lease ran out and the item went to other reviewers.
    LeaseLost,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Closed => "closed",
            Refusal::AlreadyAnswered => "already_answered",
            Refusal::InProgress => "in_progress",
            Refusal::LeaseLost => "lease_lost",
        }
    }
}

/// A submission the queue accepted: publish it, then call [`Queue::finish_submit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub route: Arc<str>,
    /// When the item was shown to the reviewer, if it still was leased to them.
    pub shown_at: Option<SystemTime>,
}

/// One route's share of the queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteStats {
    pub open: usize,
    pub leased: usize,
    /// Items this reviewer could be given now.
    pub for_me: usize,
}

/// The queue page's numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub open: usize,
    /// Open items with at least one live lease.
    pub leased: usize,
    /// When the oldest open item's review record was written.
    pub oldest: Option<SystemTime>,
    /// This reviewer's answers since midnight UTC.
    pub mine_today: u64,
    pub routes: BTreeMap<String, RouteStats>,
}

#[derive(Debug)]
pub struct Queue<T> {
    rules: Rules,
    /// Open items, oldest review first: a reviewer's next item is a walk from the front.
    items: BTreeMap<Key, Item<T>>,
    ids: HashMap<String, Key>,
    sequence: u64,
    /// Each reviewer's current lease.
    held: HashMap<String, String>,
    closed: HashMap<String, Closed>,
    early: HashMap<String, Early>,
    /// When closed and early entries can go, soonest first (entries may be stale).
    forget: BTreeMap<(SystemTime, u64), String>,
    /// Per reviewer: the UTC day and their answers that day.
    today: HashMap<String, (u64, u64)>,
}

impl<T> Queue<T> {
    pub fn new(rules: Rules) -> Queue<T> {
        Queue {
            rules,
            items: BTreeMap::new(),
            ids: HashMap::new(),
            sequence: 0,
            held: HashMap::new(),
            closed: HashMap::new(),
            early: HashMap::new(),
            forget: BTreeMap::new(),
            today: HashMap::new(),
        }
    }

    fn needed(&self) -> usize {
        self.rules.reviewers_per_item.max(1)
    }

    fn next_sequence(&mut self) -> u64 {
        self.sequence += 1;
        self.sequence
    }

    /// A review record: the item opens unless it is a duplicate, too old, or already answered.
    pub fn offer(
        &mut self,
        id: &str,
        route: &str,
        arrived: SystemTime,
        payload: T,
        now: SystemTime,
    ) -> Offered {
        if self.ids.contains_key(id) || self.closed.contains_key(id) {
            return Offered::Duplicate;
        }
        let answered = self
            .early
            .remove(id)
            .map(|e| e.answered)
            .unwrap_or_default();
        let deadline = after(arrived, self.rules.review_timeout);
        if deadline <= now {
            self.remember_closed(id, deadline, answered);
            return Offered::Expired;
        }
        if answered.len() >= self.needed() {
            self.remember_closed(id, deadline, answered);
            return Offered::Answered;
        }
        let key = (arrived, self.next_sequence());
        self.ids.insert(id.to_owned(), key);
        self.items.insert(
            key,
            Item {
                id: id.to_owned(),
                route: Arc::from(route),
                arrived,
                payload,
                answered,
                leases: Vec::new(),
                submitting: BTreeMap::new(),
                skipped_by: BTreeSet::new(),
            },
        );
        Offered::Open
    }

    /// An answer read from the completed topic (or just published): the reviewer is done with
    /// the item, which closes with its last needed answer. Returns whether it was new.
    pub fn record_answer(&mut self, id: &str, reviewer: &str, at: SystemTime) -> bool {
        let needed = self.needed();
        let key = self.ids.get(id).copied();
        let new = if let Some(item) = key.and_then(|key| self.items.get_mut(&key)) {
            let new = item.answered.insert(reviewer.to_owned());
            item.leases.retain(|l| l.reviewer != reviewer);
            if self.held.get(reviewer).is_some_and(|held| held == id) {
                self.held.remove(reviewer);
            }
            if item.answered.len() >= needed {
                self.close(id);
            }
            new
        } else if let Some(closed) = self.closed.get_mut(id) {
            closed.answered.insert(reviewer.to_owned())
        } else {
            let forget_at = after(at, self.rules.review_timeout);
            let created = !self.early.contains_key(id);
            let sequence = self.next_sequence();
            let early = self.early.entry(id.to_owned()).or_insert(Early {
                forget_at,
                answered: BTreeSet::new(),
            });
            let new = early.answered.insert(reviewer.to_owned());
            if created || forget_at > early.forget_at {
                early.forget_at = forget_at;
                self.forget.insert((forget_at, sequence), id.to_owned());
            }
            new
        };
        if new {
            self.count_answer(reviewer, at);
        }
        new
    }

    /// The item `reviewer` should work on now (limited to `route` when given): the one they
    /// hold, else a new lease on the oldest item they may take, preferring ones they did not
    /// skip. `None` when there is nothing for them.
    pub fn lease_next(
        &mut self,
        reviewer: &str,
        route: Option<&str>,
        now: SystemTime,
    ) -> Option<Leased> {
        self.expire(now);
        if let Some(id) = self.held.remove(reviewer)
            && let Some(&key) = self.ids.get(&id)
            && let Some(item) = self.items.get_mut(&key)
        {
            let wanted = route.is_none_or(|r| *r == *item.route);
            if let Some(lease) = item.lease_of(reviewer, now).filter(|_| wanted) {
                let leased = Leased {
                    id: id.clone(),
                    shown_at: lease.shown_at,
                    expires: lease.expires,
                };
                self.held.insert(reviewer.to_owned(), id);
                return Some(leased);
            }
            item.leases.retain(|l| l.reviewer != reviewer);
        }
        let needed = self.needed();
        let mut skipped = None;
        let mut chosen = None;
        for (key, item) in &self.items {
            if route.is_some_and(|r| r != &*item.route) || !item.available_to(reviewer, needed, now)
            {
                continue;
            }
            if item.skipped_by.contains(reviewer) {
                skipped = skipped.or(Some(*key));
            } else {
                chosen = Some(*key);
                break;
            }
        }
        let key = chosen.or(skipped)?;
        let item = self.items.get_mut(&key).expect("a key just found");
        let id = item.id.clone();
        let expires = after(now, self.rules.task_time_limit);
        item.leases.retain(|l| l.expires > now);
        item.leases.push(Lease {
            reviewer: reviewer.to_owned(),
            shown_at: now,
            expires,
        });
        self.held.insert(reviewer.to_owned(), id.clone());
        Some(Leased {
            id,
            shown_at: now,
            expires,
        })
    }

    /// `reviewer` passes on `id`: their lease ends and the item goes back to the others.
    pub fn skip(&mut self, id: &str, reviewer: &str) {
        let key = self.ids.get(id).copied();
        if let Some(item) = key.and_then(|key| self.items.get_mut(&key)) {
            item.leases.retain(|l| l.reviewer != reviewer);
            item.skipped_by.insert(reviewer.to_owned());
        }
        if self.held.get(reviewer).is_some_and(|held| held == id) {
            self.held.remove(reviewer);
        }
    }

    /// Starts `reviewer`'s answer to `id`: taken when they hold the lease, or when the lease
    /// ran out but nobody else took their place. A second call before
    /// [`finish_submit`](Self::finish_submit) is refused, so a double submit publishes once.
    pub fn begin_submit(
        &mut self,
        id: &str,
        reviewer: &str,
        now: SystemTime,
    ) -> Result<Submission, Refusal> {
        let needed = self.needed();
        let key = self.ids.get(id).copied();
        let Some(item) = key.and_then(|key| self.items.get_mut(&key)) else {
            let answered = self
                .closed
                .get(id)
                .is_some_and(|c| c.answered.contains(reviewer));
            return Err(if answered {
                Refusal::AlreadyAnswered
            } else {
                Refusal::Closed
            });
        };
        if item.answered.contains(reviewer) {
            return Err(Refusal::AlreadyAnswered);
        }
        if item.submitting.contains_key(reviewer) {
            return Err(Refusal::InProgress);
        }
        let lease = item.leases.iter().find(|l| l.reviewer == reviewer);
        let live = lease.is_some_and(|l| l.expires > now);
        if !live && item.committed(reviewer, now) >= needed {
            return Err(Refusal::LeaseLost);
        }
        let shown_at = lease.map(|l| l.shown_at);
        item.leases.retain(|l| l.reviewer != reviewer);
        item.submitting.insert(reviewer.to_owned(), shown_at);
        if self.held.get(reviewer).is_some_and(|held| held == id) {
            self.held.remove(reviewer);
        }
        Ok(Submission {
            route: item.route.clone(),
            shown_at,
        })
    }

    /// Ends a submission: a published answer counts; an unpublished one gives the reviewer
    /// their lease back (with a fresh time limit) to try again.
    pub fn finish_submit(&mut self, id: &str, reviewer: &str, published: bool, now: SystemTime) {
        let key = self.ids.get(id).copied();
        let Some(item) = key.and_then(|key| self.items.get_mut(&key)) else {
            if published {
                self.record_answer(id, reviewer, now);
            }
            return;
        };
        let Some(shown_at) = item.submitting.remove(reviewer) else {
            return;
        };
        if published {
            self.record_answer(id, reviewer, now);
        } else if !item.answered.contains(reviewer) {
            item.leases.push(Lease {
                reviewer: reviewer.to_owned(),
                shown_at: shown_at.unwrap_or(now),
                expires: after(now, self.rules.task_time_limit),
            });
            self.held.insert(reviewer.to_owned(), id.to_owned());
        }
    }

    /// `reviewer`'s live lease on `id`.
    pub fn lease(&self, id: &str, reviewer: &str, now: SystemTime) -> Option<Leased> {
        let lease = self.item(id)?.lease_of(reviewer, now)?;
        Some(Leased {
            id: id.to_owned(),
            shown_at: lease.shown_at,
            expires: lease.expires,
        })
    }

    /// The payload of an open item, with its route and when its review record was written.
    pub fn get(&self, id: &str) -> Option<(&T, &str, SystemTime)> {
        self.item(id)
            .map(|item| (&item.payload, &*item.route, item.arrived))
    }

    #[cfg(test)]
    pub fn is_open(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    fn item(&self, id: &str) -> Option<&Item<T>> {
        self.items.get(self.ids.get(id)?)
    }

    /// Closes items past `review_timeout` and forgets what no late record can need any more.
    /// Returns how many items expired.
    pub fn expire(&mut self, now: SystemTime) -> usize {
        let mut expired = 0;
        while let Some((&(arrived, _), item)) = self.items.first_key_value() {
            if after(arrived, self.rules.review_timeout) > now {
                break;
            }
            let id = item.id.clone();
            self.close(&id);
            expired += 1;
        }
        while let Some(entry) = self.forget.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (at, id) = (entry.key().0, entry.remove());
            if self.closed.get(&id).is_some_and(|c| c.forget_at == at) {
                self.closed.remove(&id);
            }
            if self.early.get(&id).is_some_and(|e| e.forget_at == at) {
                self.early.remove(&id);
            }
        }
        expired
    }

    /// Open items, and how many of them are leased: the `reviewloop_console_items` gauge.
    /// Costs a look at each reviewer's lease, not a pass over the queue.
    pub fn counts(&self, now: SystemTime) -> (usize, usize) {
        let leased: HashSet<Key> = self
            .held
            .iter()
            .filter_map(|(reviewer, id)| {
                let key = *self.ids.get(id)?;
                self.items[&key].lease_of(reviewer, now).map(|_| key)
            })
            .collect();
        (self.items.len(), leased.len())
    }

    /// The task page's numbers: [`stats`](Self::stats) without the per-route breakdown, so
    /// without a pass over the queue.
    pub fn summary(&self, reviewer: &str, now: SystemTime) -> Stats {
        let (open, leased) = self.counts(now);
        Stats {
            open,
            leased,
            oldest: self.items.keys().next().map(|(arrived, _)| *arrived),
            mine_today: match self.today.get(reviewer) {
                Some(&(day, count)) if day == day_of(now) => count,
                _ => 0,
            },
            routes: BTreeMap::new(),
        }
    }

    /// The numbers of the queue page, as `reviewer` sees them (a pass over the queue).
    pub fn stats(&self, reviewer: &str, now: SystemTime) -> Stats {
        let needed = self.needed();
        let mut stats = self.summary(reviewer, now);
        for item in self.items.values() {
            let route = stats.routes.entry(item.route.to_string()).or_default();
            route.open += 1;
            if item.live_leases(now).next().is_some() {
                route.leased += 1;
            }
            if item.available_to(reviewer, needed, now) {
                route.for_me += 1;
            }
        }
        stats
    }

    fn close(&mut self, id: &str) {
        let Some(item) = self.ids.remove(id).and_then(|key| self.items.remove(&key)) else {
            return;
        };
        for lease in &item.leases {
            if self
                .held
                .get(&lease.reviewer)
                .is_some_and(|held| held == id)
            {
                self.held.remove(&lease.reviewer);
            }
        }
        let deadline = after(item.arrived, self.rules.review_timeout);
        self.remember_closed(id, deadline, item.answered);
    }

    fn remember_closed(&mut self, id: &str, forget_at: SystemTime, answered: BTreeSet<String>) {
        let sequence = self.next_sequence();
        self.forget.insert((forget_at, sequence), id.to_owned());
        self.closed.insert(
            id.to_owned(),
            Closed {
                forget_at,
                answered,
            },
        );
    }

    fn count_answer(&mut self, reviewer: &str, at: SystemTime) {
        let day = day_of(at);
        let entry = self.today.entry(reviewer.to_owned()).or_insert((day, 0));
        if day > entry.0 {
            *entry = (day, 0);
        }
        if day == entry.0 {
            entry.1 += 1;
        }
    }
}

/// `at + duration`, or the far future when that overflows.
fn after(at: SystemTime, duration: Duration) -> SystemTime {
    at.checked_add(duration)
        .unwrap_or(SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 40))
}

/// The UTC day number of `at`.
fn day_of(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}

#[cfg(test)]
mod tests;
