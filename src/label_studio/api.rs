//! Label Studio's REST API, the calls the bridge makes: who the token belongs to, the project
//! (found or created), importing tasks, finding a task by reviewloop's id, reading tasks
//! changed since a time with their annotations, the task ledger, users' emails, and the
//! project's webhook. Every call carries `Authorization: Token …`; the token is in no log
//! line and no error.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::config::Secret;
use super::task::ID_KEY;

/// Answers larger than this are refused (a page of 100 tasks with their annotations is far
/// smaller).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Tasks per page when reading changed tasks.
pub const PAGE_SIZE: usize = 100;

/// Why a call failed; [`ApiError::kind`] is its metric label.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Label Studio is unreachable: {0}")]
    Unreachable(String),
    #[error("Label Studio did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Label Studio refused the token (HTTP {0})")]
    Unauthorized(u16),
    #[error("Label Studio answered HTTP {status} to {what}: {body}")]
    Status {
        status: u16,
        what: String,
        body: String,
    },
    #[error("Label Studio's answer to {what} cannot be read: {detail}")]
    Decode { what: String, detail: String },
}

impl ApiError {
    /// Whether trying again may help: Label Studio unreachable, slow, or failing on its side
    /// (not a refused token or a request it rejects).
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Unreachable(_) | ApiError::Timeout(_) => true,
            ApiError::Status { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            ApiError::Unauthorized(_) | ApiError::Decode { .. } => false,
        }
    }

    pub fn kind(&self) -> ApiErrorKind {
        match self {
            ApiError::Unreachable(_) => ApiErrorKind::Unreachable,
            ApiError::Timeout(_) => ApiErrorKind::Timeout,
            ApiError::Unauthorized(_) => ApiErrorKind::Unauthorized,
            ApiError::Status { .. } => ApiErrorKind::Status,
            ApiError::Decode { .. } => ApiErrorKind::Decode,
        }
    }
}

/// The bounded `kind` label of `reviewloop_label_studio_api_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiErrorKind {
    Unreachable,
    Timeout,
    Unauthorized,
    Status,
    Decode,
}

impl ApiErrorKind {
    pub const ALL: [ApiErrorKind; 5] = [
        ApiErrorKind::Unreachable,
        ApiErrorKind::Timeout,
        ApiErrorKind::Unauthorized,
        ApiErrorKind::Status,
        ApiErrorKind::Decode,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApiErrorKind::Unreachable => "unreachable",
            ApiErrorKind::Timeout => "timeout",
            ApiErrorKind::Unauthorized => "unauthorized",
            ApiErrorKind::Status => "status",
            ApiErrorKind::Decode => "decode",
        }
    }
}

/// A project as the bridge uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    pub id: u64,
    pub title: String,
    pub label_config: String,
}

impl Project {
    fn from_json(value: &Value, what: &str) -> Result<Project, ApiError> {
        let id = value.get("id").and_then(Value::as_u64).ok_or_else(|| ApiError::Decode {
            what: what.into(),
            detail: "no project id".into(),
        })?;
        let text = |key: &str| value.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
        Ok(Project {
            id,
            title: text("title"),
            label_config: text("label_config"),
        })
    }
}

/// A client of one Label Studio.
pub struct Api {
    client: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    authorization: HeaderValue,
    timeout: Duration,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("base", &self.base).finish_non_exhaustive()
    }
}

impl Api {
    pub fn new(url: &str, token: &Secret, timeout: Duration) -> Result<Api, String> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(|e| format!("cannot load the system's TLS roots: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = HyperClient::builder(TokioExecutor::new()).build(connector);
        let mut authorization = HeaderValue::from_str(&format!("Token {}", token.expose()))
            .map_err(|_| "the API token is not a valid header value".to_owned())?;
        authorization.set_sensitive(true);
        Ok(Api {
            client,
            base: url.trim().trim_end_matches('/').to_owned(),
            authorization,
            timeout,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// One call: `path` (with its query) under the base URL, a JSON body or none.
    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, ApiError> {
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let uri: Uri = format!("{}{path}", self.base).parse().map_err(|e| ApiError::Decode {
            what: what.clone(),
            detail: format!("bad URL: {e}"),
        })?;
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::ACCEPT, "application/json")
            .header(header::AUTHORIZATION, self.authorization.clone());
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(bytes)).map_err(|e| ApiError::Decode {
            what: what.clone(),
            detail: e.to_string(),
        })?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| ApiError::Unreachable(error_chain(&e)))?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| ApiError::Unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, ApiError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ApiError::Timeout(self.timeout))??;
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(ApiError::Unauthorized(status.as_u16()));
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            return Err(ApiError::Status {
                status: status.as_u16(),
                what,
                body: text.chars().take(300).collect(),
            });
        }
        if body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
            what,
            detail: e.to_string(),
        })
    }

    /// The id of the token's user (checks the URL and the token).
    pub async fn whoami(&self) -> Result<u64, ApiError> {
        let me = self.call(Method::GET, "/api/current-user/whoami", None).await?;
        me.get("id").and_then(Value::as_u64).ok_or_else(|| ApiError::Decode {
            what: "GET /api/current-user/whoami".into(),
            detail: "no user id".into(),
        })
    }

    pub async fn project(&self, id: u64) -> Result<Project, ApiError> {
        let path = format!("/api/projects/{id}/");
        let value = self.call(Method::GET, &path, None).await?;
        Project::from_json(&value, &path)
    }

    /// The project titled exactly `title`, if any (the list filter matches substrings).
    pub async fn find_project(&self, title: &str) -> Result<Option<Project>, ApiError> {
        let mut page = 1;
        loop {
            let path = format!(
                "/api/projects/?title={}&page_size=100&page={page}",
                encode(title)
            );
            let value = self.call(Method::GET, &path, None).await?;
            let results = value
                .get("results")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for project in &results {
                if project.get("title").and_then(Value::as_str) == Some(title) {
                    return Project::from_json(project, "GET /api/projects/").map(Some);
                }
            }
            if value.get("next").is_none_or(Value::is_null) || results.is_empty() {
                return Ok(None);
            }
            page += 1;
        }
    }

    /// Creates a project whose tasks go to `annotators` annotators each (the overlap).
    pub async fn create_project(
        &self,
        title: &str,
        label_config: &str,
        annotators: u32,
    ) -> Result<Project, ApiError> {
        let body = json!({
            "title": title,
            "label_config": label_config,
            "maximum_annotations": annotators.max(1),
        });
        let value = self.call(Method::POST, "/api/projects/", Some(&body)).await?;
        Project::from_json(&value, "POST /api/projects/")
    }

    /// Imports `tasks` (data, meta, predictions) into `project`; the number created.
    pub async fn import(&self, project: u64, tasks: &[Value]) -> Result<u64, ApiError> {
        let path = format!("/api/projects/{project}/import");
        let value = self.call(Method::POST, &path, Some(&Value::from(tasks.to_vec()))).await?;
        Ok(value.get("task_count").and_then(Value::as_u64).unwrap_or(0))
    }

    /// The task of `project` whose data holds reviewloop's id `id`, if one was imported.
    pub async fn find_task(&self, project: u64, id: &str) -> Result<Option<u64>, ApiError> {
        let query = json!({"filters": {"conjunction": "and", "items": [{
            "filter": format!("filter:tasks:data.{ID_KEY}"),
            "operator": "equal", "type": "String", "value": id,
        }]}});
        let path = format!(
            "/api/tasks/?project={project}&page_size=1&query={}",
            encode(&query.to_string())
        );
        let value = self.call(Method::GET, &path, None).await?;
        Ok(value
            .get("tasks")
            .and_then(Value::as_array)
            .and_then(|tasks| tasks.first())
            .and_then(|task| task.get("id"))
            .and_then(Value::as_u64))
    }

    /// One page (from 1) of the tasks of `project` updated after `since` (Label Studio's
    /// time), oldest change first, with their annotations; and whether more pages follow.
    pub async fn tasks_updated_since(
        &self,
        project: u64,
        since: &str,
        page: usize,
    ) -> Result<(Vec<Value>, bool), ApiError> {
        let query = json!({
            "filters": {"conjunction": "and", "items": [{
                "filter": "filter:tasks:updated_at", "operator": "greater",
                "type": "Datetime", "value": since,
            }]},
            "ordering": ["tasks:updated_at"],
        });
        let path = format!(
            "/api/tasks/?project={project}&fields=all&page_size={PAGE_SIZE}&page={page}&query={}",
            encode(&query.to_string())
        );
        let value = match self.call(Method::GET, &path, None).await {
            // Label Studio answers 404 for a page past the end.
            Err(ApiError::Status { status: 404, .. }) if page > 1 => return Ok((Vec::new(), false)),
            other => other?,
        };
        let tasks = value
            .get("tasks")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let total = value.get("total").and_then(Value::as_u64).unwrap_or(0) as usize;
        let more = page * PAGE_SIZE < total && !tasks.is_empty();
        Ok((tasks, more))
    }

    /// A task with its data and meta.
    pub async fn task(&self, id: u64) -> Result<Value, ApiError> {
        self.call(Method::GET, &format!("/api/tasks/{id}/"), None).await
    }

    /// Replaces a task's meta.
    pub async fn set_task_meta(&self, id: u64, meta: &Value) -> Result<(), ApiError> {
        let body = json!({ "meta": meta });
        self.call(Method::PATCH, &format!("/api/tasks/{id}/"), Some(&body))
            .await
            .map(drop)
    }

    /// A user's email (their username when they have none).
    pub async fn user_email(&self, id: u64) -> Result<String, ApiError> {
        let path = format!("/api/users/{id}/");
        let user = self.call(Method::GET, &path, None).await?;
        ["email", "username"]
            .iter()
            .filter_map(|key| user.get(*key).and_then(Value::as_str))
            .find(|s| !s.trim().is_empty())
            .map(str::to_owned)
            .ok_or_else(|| ApiError::Decode {
                what: format!("GET {path}"),
                detail: "the user has no email or username".into(),
            })
    }

    /// Creates or updates `project`'s webhook to `url`: annotation created and updated, with
    /// the task in the payload and `header: secret` on every call. Returns its id.
    pub async fn ensure_webhook(
        &self,
        project: u64,
        url: &str,
        header: &str,
        secret: &Secret,
    ) -> Result<u64, ApiError> {
        let body = json!({
            "project": project,
            "url": url,
            "send_payload": true,
            "send_for_all_actions": false,
            "actions": ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"],
            "headers": { header: secret.expose() },
            "is_active": true,
        });
        let hooks = self
            .call(Method::GET, &format!("/api/webhooks/?project={project}"), None)
            .await?;
        // The bridge's own webhook: the one sending its secret header (its URL changes
        // when the bridge moves), else one calling its URL.
        let hooks = hooks.as_array().cloned().unwrap_or_default();
        let of_project: Vec<&Value> = hooks
            .iter()
            .filter(|h| h.get("project").and_then(Value::as_u64) == Some(project))
            .collect();
        let existing = of_project
            .iter()
            .find(|h| {
                h.get("headers")
                    .and_then(Value::as_object)
                    .is_some_and(|headers| headers.keys().any(|k| k.eq_ignore_ascii_case(header)))
            })
            .or_else(|| {
                of_project
                    .iter()
                    .find(|h| h.get("url").and_then(Value::as_str) == Some(url))
            });
        let value = match existing.and_then(|h| h.get("id")).and_then(Value::as_u64) {
            Some(id) => {
                self.call(Method::PATCH, &format!("/api/webhooks/{id}/"), Some(&body))
                    .await?
            }
            None => self.call(Method::POST, "/api/webhooks/", Some(&body)).await?,
        };
        value.get("id").and_then(Value::as_u64).ok_or_else(|| ApiError::Decode {
            what: "the webhook".into(),
            detail: "no webhook id".into(),
        })
    }
}

/// A query-string value, percent-encoded.
fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// An error with its causes ("connection refused"), which hyper's top level hides.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
