//! Review decisions through the running proxy: what a client and a Kafka consumer see.

mod common;
mod kafka_support;

use common::*;
use http::Request;
use kafka_support::{consume, schema, schema_errors};
use rdkafka::Message;

fn ask(app: &TestApp, score: f64, force: Option<&str>) -> Request<reviewloop::upstream::Body> {
    let mut request =
        Request::post(app.url("/invocations")).header("content-type", "application/json");
    if let Some(force) = force {
        request = request.header("x-review", force);
    }
    request
        .body(full_body(format!("{{\"score\":{score}}}")))
        .unwrap()
}

async fn review_header(app: &TestApp, score: f64, force: Option<&str>) -> (String, Option<String>) {
    let (parts, _) = send(ask(app, score, force)).await;
    assert_eq!(parts.status, 200);
    let id = parts.headers["x-reviewloop-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let review = parts
        .headers
        .get("x-reviewloop-review")
        .map(|v| v.to_str().unwrap().to_owned());
    (id, review)
}

fn diverted(app: &TestApp, reason: &str) -> u64 {
    app.metrics
        .reviews_diverted_total
        .with_label_values(&["/invocations", reason])
        .get()
}

#[tokio::test]
async fn low_confidence_is_diverted_confident_is_not_and_the_override_wins() {
    let mut config = config_for(scoring_upstream().await);
    config.review.sample_percent = 0.0;
    let app = spawn_app(config).await;

    let (low_id, review) = review_header(&app, 0.42, None).await;
    assert_eq!(review.as_deref(), Some("low_confidence"));
    let (_, review) = review_header(&app, 0.97, None).await;
    assert_eq!(review, None, "a confident answer is not reviewed");
    let (forced_id, review) = review_header(&app, 0.97, Some("always")).await;
    assert_eq!(review.as_deref(), Some("forced"));
    let (_, review) = review_header(&app, 0.10, Some("never")).await;
    assert_eq!(review, None, "x-review: never suppresses");

    assert_eq!(diverted(&app, "low_confidence"), 1);
    assert_eq!(diverted(&app, "forced"), 1);
    let text = app.metrics.render();
    assert!(
        text.contains("reviewloop_confidence_count{route=\"/invocations\"} 4"),
        "{text}"
    );

    let messages = consume(
        &app.bootstrap,
        &app.config.kafka.review_topic,
        2,
        std::time::Duration::from_secs(30),
    );
    assert_eq!(messages.len(), 2);
    let validator = schema("review");
    let mut seen = Vec::new();
    for message in &messages {
        let value: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        assert!(schema_errors(&validator, &value).is_empty(), "{value}");
        let key = std::str::from_utf8(message.key().unwrap()).unwrap();
        assert_eq!(value["id"], key);
        seen.push((key.to_owned(), value));
    }
    seen.sort_by_key(|(_, v)| v["confidence"].as_f64().unwrap().to_bits());
    let (id, low) = &seen[0];
    assert_eq!(id, &low_id);
    assert_eq!(low["confidence"], 0.42);
    assert_eq!(low["reasons"], serde_json::json!(["low_confidence"]));
    assert_eq!(low["request"]["body"]["score"], 0.42);
    assert_eq!(low["response"]["body"][0]["label"], "cat");
    assert_eq!(low["route"], "/invocations");
    let (id, forced) = &seen[1];
    assert_eq!(id, &forced_id);
    assert_eq!(forced["reasons"], serde_json::json!(["forced"]));
}

#[tokio::test]
async fn the_budget_caps_a_burst_and_counts_the_rest() {
    let mut config = config_for(scoring_upstream().await);
    config.review.sample_percent = 0.0;
    // 0.1 per second: a burst of 10 × rate = 1 review, then one every 10 s.
    config.review.budget_per_second = 0.1;
    let app = spawn_app(config).await;
    let mut marked = 0;
    for _ in 0..20 {
        if review_header(&app, 0.2, None).await.1.is_some() {
            marked += 1;
        }
    }
    assert_eq!(marked, 1);
    assert_eq!(diverted(&app, "low_confidence"), 1);
    let over = app
        .metrics
        .reviews_skipped_total
        .with_label_values(&["over_budget"])
        .get();
    assert_eq!(over, 19);
    // A forced review is not limited by the budget.
    let (_, review) = review_header(&app, 0.2, Some("always")).await;
    assert_eq!(review.as_deref(), Some("low_confidence,forced"));
}

#[tokio::test]
async fn an_unreadable_response_has_no_confidence_but_can_still_be_sampled() {
    let upstream = spawn_upstream(|_| async { json_response(r#"{"weird":"shape"}"#) }).await;
    let mut config = config_for(upstream);
    config.review.sample_percent = 100.0;
    let app = spawn_app(config).await;
    let (_, review) = review_header(&app, 0.1, None).await;
    assert_eq!(review.as_deref(), Some("sampled"));
    let no_confidence = app
        .metrics
        .reviews_skipped_total
        .with_label_values(&["no_confidence"])
        .get();
    assert_eq!(no_confidence, 1);
}

#[tokio::test]
async fn a_route_overrides_with_its_own_header_and_the_proxy_removes_only_that_one() {
    // The upstream answers confidently and says which override headers reached it.
    let upstream = spawn_upstream(|request: http::Request<hyper::body::Incoming>| async move {
        let seen: Vec<&str> = ["x-review", "x-special"]
            .into_iter()
            .filter(|h| request.headers().contains_key(*h))
            .collect();
        http::Response::builder()
            .header("content-type", "application/json")
            .header("x-upstream-saw", seen.join(","))
            .body(full_body(r#"[{"label":"cat","score":0.97}]"#))
            .unwrap()
    })
    .await;
    let mut config = config_for(upstream);
    config.review.sample_percent = 0.0;
    config.routes.push(reviewloop::config::RouteConfig {
        name: "special".into(),
        path: "/special".into(),
        review: reviewloop::config::ReviewConfig {
            force_header: "x-special".into(),
            sample_percent: 0.0,
            ..Default::default()
        },
        ..Default::default()
    });
    let app = spawn_app(config).await;
    let call = |path: &str, header: &str| {
        Request::post(app.url(path))
            .header("content-type", "application/json")
            .header(header, "always")
            .body(full_body("{}"))
            .unwrap()
    };
    let review = |parts: &http::response::Parts| {
        parts
            .headers
            .get("x-reviewloop-review")
            .map(|v| v.to_str().unwrap().to_owned())
    };

    let (parts, _) = send(call("/special/v1", "x-special")).await;
    assert_eq!(review(&parts).as_deref(), Some("forced"));
    assert_eq!(
        parts.headers["x-upstream-saw"], "",
        "the route's header is removed"
    );

    let (parts, _) = send(call("/special/v1", "x-review")).await;
    assert_eq!(
        review(&parts),
        None,
        "the top-level header means nothing here"
    );
    assert_eq!(
        parts.headers["x-upstream-saw"], "x-review",
        "and is forwarded"
    );

    let (parts, _) = send(call("/invocations", "x-review")).await;
    assert_eq!(review(&parts).as_deref(), Some("forced"));
    assert_eq!(parts.headers["x-upstream-saw"], "");

    let forced = |route: &str| {
        app.metrics
            .reviews_diverted_total
            .with_label_values(&[route, "forced"])
            .get()
    };
    assert_eq!((forced("special"), forced("/invocations")), (1, 1));
}
