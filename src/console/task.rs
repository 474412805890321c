//! The task flow: the next item leased to a reviewer, shown by its template; an answer
//! checked, taken by the queue once, published and acknowledged; and what a reviewer is told
//! when it is not.

use std::time::SystemTime;

use bytes::Bytes;
use http::{Response, StatusCode};
use maud::Markup;
use tracing::warn;

use super::metrics::Refused;
use super::pages::{self, Flash, TaskPage, Viewer};
use super::queue::{Leased, Refusal, Stats};
use super::server::{State, html, lock, plain, redirect};
use super::templates::{Form, Task, template};
use crate::record::{Answer, CompletedRecord, ReviewRecord, rfc3339_millis};
use crate::upstream::Body;

/// The task page with the item leased to this reviewer (a new lease if they hold none).
pub(super) fn next_task(
    state: &State,
    viewer: Viewer<'_>,
    route: Option<&str>,
    flash: Option<Flash<'_>>,
) -> Response<Body> {
    let now = SystemTime::now();
    let name = viewer.reviewer.name.clone();
    let (leased, item, stats) = {
        let mut queue = lock(state);
        let leased = queue.lease_next(&name, route, now);
        let item = leased
            .as_ref()
            .and_then(|l| queue.get(&l.id))
            .map(|(bytes, _, arrived)| (bytes.clone(), arrived));
        (leased, item, queue.summary(&name, now))
    };
    match (leased, item) {
        (Some(leased), Some((bytes, arrived))) => render_task(
            state, viewer, &leased, &bytes, arrived, route, flash, None, &stats,
        )
        .map_or_else(unreadable, |page| html(StatusCode::OK, page)),
        _ => html(StatusCode::OK, pages::empty(viewer, &stats, route)),
    }
}

#[allow(clippy::too_many_arguments)]
fn render_task(
    state: &State,
    viewer: Viewer<'_>,
    leased: &Leased,
    bytes: &Bytes,
    arrived: SystemTime,
    route: Option<&str>,
    flash: Option<Flash<'_>>,
    draft: Option<&Form>,
    stats: &Stats,
) -> Option<Markup> {
    // The feed only queues records that parse.
    let record: ReviewRecord = serde_json::from_slice(bytes).ok()?;
    let task = Task::new(&record, state.config.route(&record.route));
    let page = TaskPage {
        viewer,
        task: &task,
        template: template(task.kind()),
        leased,
        arrived,
        now: SystemTime::now(),
        route_filter: route,
        flash,
        draft,
        stats,
    };
    Some(pages::task(page))
}

fn unreadable() -> Response<Body> {
    plain(
        StatusCode::INTERNAL_SERVER_ERROR,
        "this item's review record cannot be shown\n",
    )
}

/// An answer: checked by the template, taken by the queue (once), published, acknowledged.
pub(super) async fn submit(state: &State, viewer: Viewer<'_>, form: &Form) -> Response<Body> {
    let reviewer = viewer.reviewer;
    let Some(id) = form.get("id") else {
        return plain(StatusCode::BAD_REQUEST, "no item id in the form\n");
    };
    let route_filter = form.get("route");
    let now = SystemTime::now();
    let item = lock(state)
        .get(id)
        .map(|(bytes, _, arrived)| (bytes.clone(), arrived));
    let Some((bytes, arrived)) = item else {
        let refusal = lock(state)
            .begin_submit(id, &reviewer.name, now)
            .err()
            .unwrap_or(Refusal::Closed);
        return refused(state, viewer, refusal, route_filter);
    };
    let Ok(record) = serde_json::from_slice::<ReviewRecord>(&bytes) else {
        return unreadable();
    };
    let task = Task::new(&record, state.config.route(&record.route));
    let answer = match template(task.kind()).answer(&task, form) {
        Ok(answer) => answer,
        Err(message) => {
            state.metrics.refused(Refused::InvalidAnswer);
            let flash = Flash::Error(&message);
            return again(
                state,
                viewer,
                id,
                &bytes,
                arrived,
                route_filter,
                flash,
                form,
                StatusCode::UNPROCESSABLE_ENTITY,
            );
        }
    };
    let submission = match lock(state).begin_submit(id, &reviewer.name, now) {
        Ok(submission) => submission,
        Err(refusal) => return refused(state, viewer, refusal, route_filter),
    };
    let spent = submission
        .shown_at
        .and_then(|shown| now.duration_since(shown).ok())
        .map(|d| d.as_secs_f64());
    let completed = CompletedRecord {
        id: id.to_owned(),
        answer: Answer {
            reviewer: reviewer.name.clone(),
            answer,
            submitted_at: Some(rfc3339_millis(now)),
            time_spent_seconds: spent,
        },
    };
    let published = state.publisher.publish(&completed).await;
    lock(state).finish_submit(id, &reviewer.name, published.is_ok(), SystemTime::now());
    match published {
        Ok(()) => {
            state.metrics.answered(&submission.route, spent);
            redirect(&after_action(route_filter, "saved"))
        }
        Err(e) => {
            state.metrics.refused(Refused::KafkaError);
            warn!(%id, error = %e, "answer not acknowledged by the broker");
            let message = format!(
                "Not saved: Kafka did not confirm your answer ({e}). Try again in a moment."
            );
            again(
                state,
                viewer,
                id,
                &bytes,
                arrived,
                route_filter,
                Flash::Error(&message),
                form,
                StatusCode::SERVICE_UNAVAILABLE,
            )
        }
    }
}

/// The task page again, with the reviewer's draft and what went wrong.
#[allow(clippy::too_many_arguments)]
fn again(
    state: &State,
    viewer: Viewer<'_>,
    id: &str,
    bytes: &Bytes,
    arrived: SystemTime,
    route: Option<&str>,
    flash: Flash<'_>,
    draft: &Form,
    status: StatusCode,
) -> Response<Body> {
    let now = SystemTime::now();
    let (leased, stats) = {
        let queue = lock(state);
        let leased = queue.lease(id, &viewer.reviewer.name, now);
        (leased, queue.summary(&viewer.reviewer.name, now))
    };
    // A lease that ran out shows as ending now: the answer may still be taken (see Queue).
    let leased = leased.unwrap_or(Leased {
        id: id.to_owned(),
        shown_at: now,
        expires: now,
    });
    match render_task(
        state,
        viewer,
        &leased,
        bytes,
        arrived,
        route,
        Some(flash),
        Some(draft),
        &stats,
    ) {
        Some(page) => html(status, page),
        None => unreadable(),
    }
}

fn refused(
    state: &State,
    viewer: Viewer<'_>,
    refusal: Refusal,
    route: Option<&str>,
) -> Response<Body> {
    state.metrics.refused(Refused::Queue(refusal));
    let (status, title, text) = match refusal {
        Refusal::Closed => (
            StatusCode::CONFLICT,
            "This item is closed",
            "It already has all the answers it needs (or its review time ran out). Your answer \
             was not sent.",
        ),
        Refusal::AlreadyAnswered => (
            StatusCode::CONFLICT,
            "Already answered",
            "Your answer to this item was saved before; it counts once.",
        ),
        Refusal::InProgress => (
            StatusCode::CONFLICT,
            "Already being saved",
            "Your answer to this item is being saved; it counts once.",
        ),
        Refusal::LeaseLost => (
            StatusCode::CONFLICT,
            "Time ran out",
            "Your time for this item ran out and it went to another reviewer. Your answer was \
             not sent.",
        ),
    };
    let next = pages::task_href(route);
    html(
        status,
        pages::message(Some(viewer), title, text, (&next, "Next item")),
    )
}

/// Where to go after an answer or a skip: the next task, with a note for the page.
pub(super) fn after_action(route: Option<&str>, note: &str) -> String {
    let href = pages::task_href(route);
    let separator = if href.contains('?') { '&' } else { '?' };
    format!("{href}{separator}{note}=1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_an_action_the_route_filter_is_kept() {
        assert_eq!(after_action(None, "saved"), "/task?saved=1");
        assert_eq!(
            after_action(Some("/invocations"), "skipped"),
            "/task?route=%2Finvocations&skipped=1"
        );
    }
}
