//! The console's web server: the routes, an identity and a CSRF check before anything is
//! shown or changed, and security headers (a strict Content-Security-Policy) on every answer.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use maud::Markup;
use tokio::net::TcpListener;
use tracing::info;

use super::auth::{Auth, CSRF_FIELD, NoIdentity, SignInError};
use super::config::{AuthMode, ConsoleConfig};
use super::feed::Shared;
use crate::kafka::AnswerPublisher;
use super::metrics::{ConsoleMetrics, Refused};
use super::pages::{self, Flash, Viewer};
use super::task::{after_action, next_task, submit};
use super::templates::Form;
use crate::proxy::{Connections, ServerConfig, serve_connections};
use crate::record::ReviewRecord;
use crate::upstream::{Body, full_body};

/// Every page's policy: scripts and styles from the console only, nothing inline, no frames;
/// images and audio from the console (its media route) and the configured `media_origins`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; media-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// The pages' policy with the media origins of every route allowed for images and audio.
pub fn content_security_policy(config: &ConsoleConfig) -> HeaderValue {
    let origins: String = config
        .all_media_origins()
        .iter()
        .map(|origin| format!(" {origin}"))
        .collect();
    let policy = CONTENT_SECURITY_POLICY
        .replace("img-src 'self' data:;", &format!("img-src 'self' data:{origins};"))
        .replace("media-src 'self';", &format!("media-src 'self'{origins};"));
    // The config check accepts only origins that are header-safe.
    HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static(CONTENT_SECURITY_POLICY))
}

/// A form (an answer included) is at most this large.
const MAX_FORM_BYTES: usize = 1024 * 1024;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// What every request needs.
pub struct State {
    pub config: ConsoleConfig,
    pub auth: Auth,
    pub shared: Arc<Shared>,
    pub publisher: AnswerPublisher,
    pub metrics: Arc<ConsoleMetrics>,
    /// [`content_security_policy`] of the config.
    pub policy: HeaderValue,
}

/// Serves the console until `shutdown`, then lets open requests finish within `grace`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // The proxy's connection deadlines and cap at their defaults (a page is one small head).
    let connections = Connections::new(&ServerConfig::default(), "console", None);
    info!(address = %listener.local_addr()?, auth = state.auth.mode().as_str(), "console listening");
    let handler = move |request| {
        let state = state.clone();
        async move { handle(&state, request).await }
    };
    serve_connections(listener, &connections, "console", handler, Some(grace), shutdown).await
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let mut response = route(state, &parts, body).await;
    let headers = response.headers_mut();
    // The media route sets its own, stricter policy.
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(state.policy.clone());
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-opener-policy", "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn route(state: &State, parts: &Parts, body: Incoming) -> Response<Body> {
    let path = parts.uri.path();
    // HEAD only where it has no effect: showing a task leases it.
    let head = parts.method == Method::HEAD;
    let get = parts.method == Method::GET;
    let post = parts.method == Method::POST;
    match path {
        "/static/console.css" if get || head => return asset(CSS, "text/css; charset=utf-8"),
        "/static/console.js" if get || head => {
            return asset(JS, "text/javascript; charset=utf-8");
        }
        // For load balancers: ready once the queue is rebuilt (says nothing about the queue).
        "/healthz" if get || head => return plain(StatusCode::OK, "ok\n"),
        "/readyz" if (get || head) && state.shared.is_caught_up() => {
            return plain(StatusCode::OK, "ready\n");
        }
        "/readyz" if get || head => return plain(StatusCode::SERVICE_UNAVAILABLE, "loading\n"),
        _ => {}
    }
    if !get && !post {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET or POST only\n");
    }
    if post && is_cross_site(parts) {
        state.metrics.refused(Refused::CrossSite);
        return plain(StatusCode::FORBIDDEN, "cross-site form posts are refused\n");
    }
    let form = if post {
        match read_form(body).await {
            Ok(form) => Some(form),
            Err(response) => return response,
        }
    } else {
        None
    };
    if path == "/signin" {
        return match form {
            Some(form) => sign_in(state, parts, &form),
            None => sign_in_page(state, parts, None, "", StatusCode::OK),
        };
    }
    let reviewer = match state.auth.identify(&parts.headers) {
        Ok(reviewer) => reviewer,
        Err(NoIdentity::MissingHeader) => {
            state.metrics.refused(Refused::NoIdentity);
            let page = pages::no_identity(state.auth.identity_header());
            return html(StatusCode::UNAUTHORIZED, page);
        }
        Err(NoIdentity::SignInNeeded) if get => return redirect("/signin"),
        Err(NoIdentity::SignInNeeded) => {
            state.metrics.refused(Refused::NoIdentity);
            let page = pages::message(
                None,
                "Signed out",
                "Your session has ended, so this was not saved. Sign in and try again.",
                ("/signin", "Sign in"),
            );
            return html(StatusCode::FORBIDDEN, page);
        }
    };
    let viewer = Viewer {
        reviewer: &reviewer,
        auth: state.auth.mode(),
    };
    if let Some(form) = &form
        && !Auth::csrf_matches(&reviewer.csrf, form.get(CSRF_FIELD))
    {
        state.metrics.refused(Refused::Csrf);
        let page = pages::message(
            Some(viewer),
            "Form refused",
            "This form was not sent from a page of this console (or the page is out of date). \
             Nothing was saved.",
            ("/task", "Reload the task"),
        );
        return html(StatusCode::FORBIDDEN, page);
    }
    if path == "/signout" && post {
        let mut response = redirect("/signin");
        set_cookie(&mut response, &state.auth.sign_out(&parts.headers));
        return response;
    }
    if !state.shared.is_caught_up() {
        let mut response = html(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::loading(state.shared.records_read()),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    let query = Form::parse(parts.uri.query().unwrap_or_default().as_bytes());
    match (path, form) {
        ("/", None) => {
            let now = SystemTime::now();
            let stats = lock(state).stats(&reviewer.name, now);
            html(StatusCode::OK, pages::queue(viewer, &stats, now))
        }
        ("/task", None) => {
            let flash = if query.get("saved").is_some() {
                Some(Flash::Saved)
            } else if query.get("skipped").is_some() {
                Some(Flash::Skipped)
            } else {
                None
            };
            next_task(state, viewer, query.get("route"), flash)
        }
        ("/media", None) => media(state, query.get("id")),
        ("/answer", Some(form)) => submit(state, viewer, &form).await,
        ("/skip", Some(form)) => {
            if let Some(id) = form.get("id") {
                lock(state).skip(id, &reviewer.name);
            }
            redirect(&after_action(form.get("route"), "skipped"))
        }
        _ => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// An open item's image or audio, for the task page (any signed-in reviewer, open items only).
fn media(state: &State, id: Option<&str>) -> Response<Body> {
    let bytes = id.and_then(|id| lock(state).get(id).map(|(bytes, _, _)| bytes.clone()));
    match bytes.and_then(|bytes| serde_json::from_slice::<ReviewRecord>(&bytes).ok()) {
        Some(record) => super::media::response(&record),
        None => plain(StatusCode::NOT_FOUND, "no open item with this id\n"),
    }
}

fn sign_in(state: &State, parts: &Parts, form: &Form) -> Response<Body> {
    if state.auth.mode() == AuthMode::Header {
        return redirect("/");
    }
    let expected = state.auth.sign_in_expected(&parts.headers);
    if !expected.is_some_and(|expected| Auth::csrf_matches(expected, form.get(CSRF_FIELD))) {
        state.metrics.refused(Refused::Csrf);
        let error = "The sign-in form was out of date. Please sign in again.";
        return sign_in_page(state, parts, Some(error), "", StatusCode::FORBIDDEN);
    }
    let name = form.get("name").unwrap_or_default();
    match state
        .auth
        .sign_in(name, form.get("token").unwrap_or_default())
    {
        Ok(cookie) => {
            info!(reviewer = %name.trim(), "reviewer signed in");
            let mut response = redirect("/");
            set_cookie(&mut response, &cookie);
            response
        }
        Err(error) => {
            state.metrics.refused(Refused::SignIn);
            let message = match error {
                SignInError::BadName => "A name is 1 to 128 visible characters, without spaces.",
                SignInError::BadCredentials => "That name and token do not match.",
            };
            sign_in_page(state, parts, Some(message), name, StatusCode::UNAUTHORIZED)
        }
    }
}

fn sign_in_page(
    state: &State,
    parts: &Parts,
    error: Option<&str>,
    name: &str,
    status: StatusCode,
) -> Response<Body> {
    if state.auth.mode() == AuthMode::Header || state.auth.identify(&parts.headers).is_ok() {
        return redirect("/");
    }
    let (token, cookie) = state.auth.sign_in_token();
    let mut response = html(
        status,
        pages::sign_in(state.auth.mode(), &token, error, name),
    );
    set_cookie(&mut response, &cookie);
    response
}

/// A POST another site made the browser send (`Sec-Fetch-Site`, sent by every current
/// browser); same-origin and user-initiated ("none") requests pass. SameSite cookies and the
/// CSRF token stand behind this.
fn is_cross_site(parts: &Parts) -> bool {
    parts
        .headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site != "same-origin" && site != "none")
}

async fn read_form(body: Incoming) -> Result<Form, Response<Body>> {
    match Limited::new(body, MAX_FORM_BYTES).collect().await {
        Ok(collected) => Ok(Form::parse(&collected.to_bytes())),
        Err(_) => Err(plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the form is larger than 1 MiB, or was cut off\n",
        )),
    }
}

pub(super) fn lock(state: &State) -> std::sync::MutexGuard<'_, super::queue::Queue<Bytes>> {
    state.shared.queue.lock().expect("queue lock")
}

pub(super) fn html(status: StatusCode, page: Markup) -> Response<Body> {
    let mut response = Response::new(full_body(page.into_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

pub(super) fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(full_body(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn asset(text: &'static str, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(full_body(text));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// 303: after a POST the browser GETs the next page (a reload never re-submits).
pub(super) fn redirect(location: &str) -> Response<Body> {
    let mut response = Response::new(full_body(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn set_cookie(response: &mut Response<Body>, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cross_site_posts_are_refused() {
        let parts = |site: Option<&str>| {
            let mut request = Request::post("/answer");
            if let Some(site) = site {
                request = request.header("sec-fetch-site", site);
            }
            request.body(()).unwrap().into_parts().0
        };
        assert!(!is_cross_site(&parts(None)));
        assert!(!is_cross_site(&parts(Some("same-origin"))));
        assert!(!is_cross_site(&parts(Some("none"))));
        assert!(is_cross_site(&parts(Some("cross-site"))));
        assert!(is_cross_site(&parts(Some("same-site"))));
    }
}
