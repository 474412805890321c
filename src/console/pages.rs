//! The console's pages, server-rendered with maud (every interpolated string is escaped): the
//! layout, the queue, the task page around its template, sign-in, and the short messages in
//! between. No inline script or style: behaviour is in `/static/console.js`, looks in
//! `/static/console.css`, both served by the console itself.

use std::time::{Duration, SystemTime};

use maud::{DOCTYPE, Markup, html};

use super::auth::{CSRF_FIELD, Reviewer};
use super::config::AuthMode;
use super::queue::{Leased, Stats};
use super::templates::{Form, Task, Template, payload_view};
use crate::record::Reason;

/// What the header shows of who is signed in.
pub struct Viewer<'a> {
    pub reviewer: &'a Reviewer,
    pub auth: AuthMode,
}

/// A line shown above the task.
pub enum Flash<'a> {
    Saved,
    Skipped,
    Error(&'a str),
}

pub struct Page<'a> {
    pub title: &'a str,
    pub viewer: Option<Viewer<'a>>,
    /// Reload the page every so many seconds (waiting pages; no script needed).
    pub refresh: Option<u32>,
    pub class: &'a str,
}

pub fn layout(page: Page<'_>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(seconds) = page.refresh {
                    meta http-equiv="refresh" content=(seconds);
                }
                title { (page.title) " · reviewloop" }
                link rel="icon" href="data:,";
                link rel="stylesheet" href="/static/console.css";
                script src="/static/console.js" defer {}
            }
            body class=(page.class) {
                header.bar {
                    a.brand href="/" { "reviewloop" span { "review" } }
                    @if let Some(viewer) = &page.viewer {
                        nav {
                            a href="/" { "Queue" }
                            a href="/task" { "Review" }
                        }
                        div.who {
                            span.name title="Signed in as" { (viewer.reviewer.name) }
                            @if viewer.auth != AuthMode::Header {
                                form method="post" action="/signout" {
                                    (csrf(viewer.reviewer))
                                    button.link type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn csrf(reviewer: &Reviewer) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(reviewer.csrf); }
}

/// `/task?route=…` for a route filter, URL-encoded.
pub fn task_href(route: Option<&str>) -> String {
    match route {
        Some(route) => format!(
            "/task?route={}",
            form_urlencoded::byte_serialize(route.as_bytes()).collect::<String>()
        ),
        None => "/task".into(),
    }
}

/// The queue page: the numbers, the routes, and the way in.
pub fn queue(viewer: Viewer<'_>, stats: &Stats, now: SystemTime) -> Markup {
    let oldest = stats.oldest.map_or("—".to_owned(), |at| {
        age(now.duration_since(at).unwrap_or_default())
    });
    let body = html! {
        h1 { "Review queue" }
        div.stats {
            div.stat { span.num #open-count { (stats.open) } span.what { "open" } }
            div.stat { span.num #leased-count { (stats.leased) } span.what { "leased" } }
            div.stat { span.num { (oldest) } span.what { "oldest waiting" } }
            div.stat.mine { span.num #mine-today { (stats.mine_today) } span.what { "my answers today" } }
        }
        @let for_me: usize = stats.routes.values().map(|r| r.for_me).sum();
        p.start {
            @if for_me > 0 {
                a.button.primary #start href="/task" { "Start reviewing " kbd { "Enter" } }
                span.muted { (for_me) " item" @if for_me != 1 { "s" } " waiting for you" }
            } @else {
                span.muted { "Nothing waiting for you right now: this page refreshes itself." }
            }
        }
        @if !stats.routes.is_empty() {
            table.routes {
                thead { tr { th { "Route" } th.n { "Open" } th.n { "Leased" } th.n { "For you" } th {} } }
                tbody {
                    @for (route, counts) in &stats.routes {
                        tr {
                            td { code { (route) } }
                            td.n { (counts.open) }
                            td.n { (counts.leased) }
                            td.n { (counts.for_me) }
                            td { @if counts.for_me > 0 { a href=(task_href(Some(route))) { "Review" } } }
                        }
                    }
                }
            }
        }
    };
    layout(
        Page {
            title: "Queue",
            viewer: Some(viewer),
            refresh: Some(15),
            class: "queue-page",
        },
        body,
    )
}

/// Everything the task page shows.
pub struct TaskPage<'a> {
    pub viewer: Viewer<'a>,
    pub task: &'a Task<'a>,
    pub template: &'a dyn Template,
    pub leased: &'a Leased,
    pub arrived: SystemTime,
    pub now: SystemTime,
    pub route_filter: Option<&'a str>,
    pub flash: Option<Flash<'a>>,
    pub draft: Option<&'a Form>,
    pub stats: &'a Stats,
}

pub fn task(page: TaskPage<'_>) -> Markup {
    let record = page.task.record;
    let reviewer = page.viewer.reviewer;
    let waited = age(page.now.duration_since(page.arrived).unwrap_or_default());
    let expires_ms = page
        .leased
        .expires
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let body = html! {
        @match &page.flash {
            Some(Flash::Saved) => p.flash.ok role="status" { "Answer saved. Here is the next item." },
            Some(Flash::Skipped) => p.flash.ok role="status" { "Skipped. Here is another item." },
            Some(Flash::Error(message)) => p.flash.error role="alert" { (message) },
            None => {},
        }
        div.task {
            div.work {
                @if !page.task.route.instructions.trim().is_empty() {
                    section.card.instructions {
                        h2 { "Instructions" }
                        @for paragraph in page.task.route.instructions.split("\n\n") {
                            p { (paragraph.trim()) }
                        }
                    }
                }
                section.card.input {
                    header {
                        h2 { "Input" }
                        span.meta {
                            code { (record.route) } " · waiting " (waited) " · "
                            span.id title="Record id" { (record.id) }
                        }
                    }
                    @if record.truncated {
                        p.flash.warn { "This record was cut to fit Kafka: the bodies below are their beginnings." }
                    }
                    (page.template.input(page.task))
                }
            }
            aside.side {
                section.card.model {
                    h2 { "Model answer" }
                    (page.template.model_answer(page.task))
                    dl.facts {
                        dt { "Confidence" }
                        dd {
                            @match record.confidence {
                                Some(confidence) => {
                                    meter min="0" max="1" low="0.5" high="0.8" optimum="1" value=(confidence) {}
                                    " " span.score { (format!("{confidence:.2}")) }
                                }
                                None => span.muted { "not readable" },
                            }
                        }
                        dt { "Why here" }
                        dd {
                            @for reason in &record.reasons {
                                span class={ "badge " (reason.as_str()) } title=(reason_help(*reason)) { (reason.as_str()) }
                                " "
                            }
                            @for condition in &record.conditions { span.badge.condition { (condition) } " " }
                        }
                        @if let Some(model) = &record.model.target_model { dt { "Model" } dd { code { (model) } } }
                        @if let Some(variant) = &record.model.variant { dt { "Variant" } dd { code { (variant) } } }
                    }
                    details.raw {
                        summary { "Full response (" (record.response.status) ")" }
                        (payload_view(&record.response.payload, "Response"))
                    }
                }
                form.card.answer #answer-form method="post" action="/answer" {
                    (csrf(reviewer))
                    input type="hidden" name="id" value=(page.leased.id);
                    @if let Some(route) = page.route_filter { input type="hidden" name="route" value=(route); }
                    (page.template.controls(page.task, page.draft))
                    div.actions {
                        button.primary #send type="submit" {
                            "Submit" @if let Some(key) = key_for(page.template, "submit") { " " kbd { (key) } }
                        }
                        button.secondary #skip type="submit" form="skip-form" {
                            "Skip" @if let Some(key) = key_for(page.template, "skip") { " " kbd { (key) } }
                        }
                    }
                    p.lease data-expires=(expires_ms) {
                        "Yours until " (clock(page.leased.expires)) " UTC"
                    }
                    ul.keys {
                        @for (key, what) in page.template.keys() { li { kbd { (key) } " " (what) } }
                    }
                }
                form #skip-form method="post" action="/skip" {
                    (csrf(reviewer))
                    input type="hidden" name="id" value=(page.leased.id);
                    @if let Some(route) = page.route_filter { input type="hidden" name="route" value=(route); }
                }
                p.queue-line.muted {
                    (page.stats.open) " open · " (page.stats.leased) " leased · "
                    (page.stats.mine_today) " answered by you today"
                }
            }
        }
    };
    layout(
        Page {
            title: "Review",
            viewer: Some(page.viewer),
            refresh: None,
            class: "task-page",
        },
        body,
    )
}

/// The key a template binds to `action`, for the button's hint.
fn key_for(template: &dyn Template, action: &str) -> Option<&'static str> {
    template
        .keys()
        .iter()
        .find(|(_, what)| *what == action)
        .map(|(key, _)| *key)
}

fn reason_help(reason: Reason) -> &'static str {
    match reason {
        Reason::LowConfidence => "The model's confidence was below the route's threshold",
        Reason::Sampled => "Picked by the audit sample",
        Reason::Forced => "The client asked for a review (x-review: always)",
    }
}

/// Nothing to review: the page reloads itself until something arrives.
pub fn empty(viewer: Viewer<'_>, stats: &Stats, route: Option<&str>) -> Markup {
    let body = html! {
        section.card.message {
            h1 { "Nothing to review right now" }
            p {
                @if stats.open == 0 { "Every item has its answers." }
                @else { (stats.open) " open item" @if stats.open != 1 { "s are" } @else { " is" } " leased to other reviewers or already answered by you." }
            }
            @if let Some(route) = route { p.muted { "Showing route " code { (route) } " only. " a href="/task" { "All routes" } } }
            p.muted { "This page checks again every 10 seconds." }
            p { a.button #next href="/" { "Back to the queue" } }
        }
    };
    layout(
        Page {
            title: "Nothing to review",
            viewer: Some(viewer),
            refresh: Some(10),
            class: "message-page",
        },
        body,
    )
}

/// A short message with a way on (refusals, errors).
pub fn message(viewer: Option<Viewer<'_>>, title: &str, text: &str, next: (&str, &str)) -> Markup {
    let body = html! {
        section.card.message {
            h1 { (title) }
            p { (text) }
            p { a.button.primary #next href=(next.0) { (next.1) } }
        }
    };
    layout(
        Page {
            title,
            viewer,
            refresh: None,
            class: "message-page",
        },
        body,
    )
}

/// While the queue is rebuilt from Kafka.
pub fn loading(records: u64) -> Markup {
    let body = html! {
        section.card.message {
            h1 { "Loading the review queue" }
            p { "Reading the review and completed topics: " (records) " records so far." }
            p.muted { "This page reloads by itself." }
        }
    };
    layout(
        Page {
            title: "Loading",
            viewer: None,
            refresh: Some(1),
            class: "message-page",
        },
        body,
    )
}

/// The sign-in form (`auth = "tokens"`: name and token; `auth = "none"`: a name).
pub fn sign_in(auth: AuthMode, csrf_token: &str, error: Option<&str>, name: &str) -> Markup {
    let body = html! {
        form.card.signin method="post" action="/signin" {
            h1 { "Sign in to review" }
            @if let Some(error) = error { p.flash.error role="alert" { (error) } }
            input type="hidden" name=(CSRF_FIELD) value=(csrf_token);
            label.field {
                span { "Your name" }
                input #name type="text" name="name" value=(name) required autofocus autocomplete="username";
            }
            @if auth == AuthMode::Tokens {
                label.field {
                    span { "Token" }
                    input #token type="password" name="token" required autocomplete="current-password";
                }
            } @else {
                p.muted { "No password here: this console only listens on this machine. Your name is recorded with your answers." }
            }
            button.primary #signin type="submit" { "Sign in" }
        }
    };
    layout(
        Page {
            title: "Sign in",
            viewer: None,
            refresh: None,
            class: "signin-page",
        },
        body,
    )
}

/// `auth = "header"` and the SSO proxy's header is missing.
pub fn no_identity(header: &str) -> Markup {
    let body = html! {
        section.card.message {
            h1 { "Who are you?" }
            p {
                "This console takes reviewers' identity from the " code { (header) }
                " header that the sign-in proxy in front of it sets, and this request had none."
            }
            p { "Open the console through your organisation's sign-in address." }
        }
    };
    layout(
        Page {
            title: "Not signed in",
            viewer: None,
            refresh: None,
            class: "message-page",
        },
        body,
    )
}

/// `3 min`, `2 h 5 min`, `4 d 3 h`.
pub fn age(elapsed: Duration) -> String {
    let seconds = elapsed.as_secs();
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min", seconds / 60),
        3600..86_400 => format!("{} h {} min", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{} d {} h", seconds / 86_400, seconds % 86_400 / 3600),
    }
}

/// `HH:MM:SS` of a time, UTC.
fn clock(at: SystemTime) -> String {
    let text = humantime::format_rfc3339_seconds(at).to_string();
    text.get(11..19).unwrap_or(&text).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_people_say_them() {
        assert_eq!(age(Duration::from_secs(42)), "42 s");
        assert_eq!(age(Duration::from_secs(185)), "3 min");
        assert_eq!(age(Duration::from_secs(7500)), "2 h 5 min");
        assert_eq!(age(Duration::from_secs(3 * 86_400 + 7200)), "3 d 2 h");
        assert_eq!(
            clock(SystemTime::UNIX_EPOCH + Duration::from_secs(3723)),
            "01:02:03"
        );
    }

    #[test]
    fn route_filters_are_url_encoded() {
        assert_eq!(task_href(None), "/task");
        assert_eq!(
            task_href(Some("/v2/models/{model}/infer")),
            "/task?route=%2Fv2%2Fmodels%2F%7Bmodel%7D%2Finfer"
        );
        assert_eq!(task_href(Some("a&b=c")), "/task?route=a%26b%3Dc");
    }

    #[test]
    fn pages_have_no_inline_script_or_style() {
        let html = sign_in(AuthMode::Tokens, "t0k", Some("<b>no</b>"), "\"><script>").into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("<script src=\"/static/console.js\" defer></script>"),
            "{html}"
        );
        assert!(!html.contains("style="), "{html}");
        let handlers = html
            .split(|c: char| c.is_whitespace() || c == '<')
            .filter(|word| word.starts_with("on") && word.contains('='))
            .count();
        assert_eq!(handlers, 0, "no event handler attributes: {html}");
        assert!(html.contains("&lt;b&gt;no&lt;/b&gt;"), "{html}");
    }
}
