//! The reviewer console over HTTP, on librdkafka's mock cluster: who may review, CSRF, what an
//! answer publishes (once), several instances, and the joiner closing the loop. The browser
//! suite (`console_browser.rs`) shows the same from a reviewer's seat.

mod console_support;
mod join_support;

use std::time::Duration;

use console_support::*;
use http::StatusCode;
use join_support::kafka_support;
use join_support::{Cluster, Joiner, Reader, Schema};
use rdkafka::message::Message;
use reviewloop::config::Config;
use reviewloop::console::{AuthMode, CONTENT_SECURITY_POLICY, RouteSettings, TemplateKind};
use serde_json::{Value, json};

fn console_config(cluster: &Cluster, auth: AuthMode) -> Config {
    let mut config = cluster.config();
    config.console.auth = auth;
    config
}

/// Every answer on the completed topic, read for `quiet` after the last one.
fn completed(config: &Config, quiet: Duration) -> Vec<rdkafka::message::OwnedMessage> {
    kafka_support::consume_until(
        &config.kafka.brokers,
        &config.kafka.completed_topic,
        quiet,
        |_| false,
    )
}

#[tokio::test]
async fn header_auth_needs_the_header_and_every_post_its_csrf_token() {
    let cluster = Cluster::mock();
    let config = console_config(&cluster, AuthMode::Header);
    let producer = cluster.producer();
    producer.review(&config, &ticket("t-1", "my parcel never came", &TEAMS));
    producer.flush();
    let console = TestConsole::start(&config).await;

    let mut anonymous = Http::new(&console.url);
    for path in ["/", "/task"] {
        let (status, headers, body) = anonymous.get(path).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(body.contains("x-forwarded-user"), "{body}");
        assert_eq!(headers["content-security-policy"], CONTENT_SECURITY_POLICY);
    }
    let page = anonymous
        .post("/answer", &[("id", "t-1"), ("label", "billing")])
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);

    let mut alice = Http::new(&console.url).with_header("x-forwarded-user", "alice");
    let task = alice.page("/task").await;
    assert_eq!(task.status, StatusCode::OK);
    assert!(task.body.contains("my parcel never came"), "{}", task.body);
    assert_eq!(
        task.headers["content-security-policy"],
        CONTENT_SECURITY_POLICY
    );
    assert_eq!(task.headers["x-frame-options"], "DENY");
    let csrf = task.field("csrf").unwrap();
    assert_eq!(task.field("id").as_deref(), Some("t-1"));
    // The gauge follows within its refresh (250 ms): the one item is leased, none waits.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while console.metric("reviewloop_console_items{state=\"leased\"}") != 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            console.metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        console.metric("reviewloop_console_items{state=\"open\"}"),
        0.0
    );

    let refused = [
        // No token.
        alice
            .post("/answer", &[("id", "t-1"), ("label", "billing")])
            .await,
        // Alice's token under another identity.
        Http::new(&console.url)
            .with_header("x-forwarded-user", "bob")
            .post(
                "/answer",
                &[("csrf", &csrf), ("id", "t-1"), ("label", "billing")],
            )
            .await,
        // The right token, from another site.
        alice
            .clone()
            .with_header("sec-fetch-site", "cross-site")
            .post(
                "/answer",
                &[("csrf", &csrf), ("id", "t-1"), ("label", "billing")],
            )
            .await,
    ];
    for page in &refused {
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    }
    assert!(
        completed(&config, Duration::from_secs(2)).is_empty(),
        "nothing published"
    );
    assert_eq!(
        console.metric("reviewloop_console_refusals_total{reason=\"csrf\"}"),
        2.0
    );
    assert_eq!(
        console.metric("reviewloop_console_refusals_total{reason=\"cross_site\"}"),
        1.0
    );
    assert_eq!(
        console.metric("reviewloop_console_refusals_total{reason=\"no_identity\"}"),
        3.0
    );

    let saved = alice
        .post(
            "/answer",
            &[("csrf", &csrf), ("id", "t-1"), ("label", "billing")],
        )
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    assert_eq!(saved.location(), Some("/task?saved=1"));
    let answers = completed(&config, Duration::from_secs(2));
    assert_eq!(answers.len(), 1);
    console.stop().await.unwrap();
}

#[tokio::test]
async fn an_answer_is_the_documented_record_published_once_even_when_sent_twice() {
    let cluster = Cluster::mock();
    let dir = tempfile::tempdir().unwrap();
    let mut config = console_config(&cluster, AuthMode::Tokens);
    config.console.tokens_file = Some(tokens_file(dir.path(), &[("alice", "alice-token-1")]));
    // Two answers needed: room for a second answer, so only the double-submit guard stops
    // alice's second one.
    config.join.reviewers_per_item = 2;
    let producer = cluster.producer();
    producer.review(&config, &ticket("t-1", "charged twice", &TEAMS));
    producer.flush();
    let console = TestConsole::start(&config).await;

    let mut alice = Http::new(&console.url);
    let signed_in = alice.sign_in("alice", "alice-token-1").await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER);
    let set_cookie = signed_in.headers["set-cookie"].to_str().unwrap();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    let task = alice.page("/task").await;
    let csrf = task.field("csrf").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // time spent on the item

    // A double click, several times over: submissions at the same moment (on connections
    // opened beforehand), then the browser's back button and again.
    let form = [("csrf", csrf.as_str()), ("id", "t-1"), ("label", "billing")];
    let clicks: Vec<Http> = (0..6).map(|_| alice.clone()).collect();
    futures_util::future::join_all(
        clicks
            .iter()
            .cloned()
            .map(|mut c| async move { c.page("/readyz").await }),
    )
    .await;
    let pages = futures_util::future::join_all(
        clicks
            .into_iter()
            .map(|mut c| async move { c.post("/answer", &form).await }),
    )
    .await;
    let mut statuses: Vec<StatusCode> = pages.iter().map(|p| p.status).collect();
    statuses.sort();
    assert_eq!(statuses[0], StatusCode::SEE_OTHER);
    assert!(
        statuses[1..].iter().all(|s| *s == StatusCode::CONFLICT),
        "{statuses:?}"
    );
    let again = alice.post("/answer", &form).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(again.body.contains("Already answered"), "{}", again.body);

    let answers = completed(&config, Duration::from_secs(3));
    assert_eq!(answers.len(), 1, "one answer on the completed topic");
    let message = &answers[0];
    assert_eq!(kafka_support::key(message), "t-1");
    assert_eq!(
        kafka_support::header(message, "ce_type"),
        Some("reviewloop.review.completed")
    );
    assert_eq!(kafka_support::header(message, "ce_subject"), Some("t-1"));
    let record: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
    Schema::load("completed.schema.json").assert_valid(&record);
    assert_eq!(record["reviewer"], "alice");
    assert_eq!(record["answer"], json!({"label": "billing"}));
    let spent = record["time_spent_seconds"].as_f64().unwrap();
    assert!((1.0..30.0).contains(&spent), "time spent {spent}");
    // Keyed by id with the review topic's partitioner: the joiner finds it on the same
    // partition as the review record.
    let reviews = kafka_support::consume(
        &config.kafka.brokers,
        &config.kafka.review_topic,
        1,
        Duration::from_secs(10),
    );
    assert_eq!(message.partition(), reviews[0].partition());

    assert_eq!(
        console.metric("reviewloop_console_answers_total{route=\"/invocations\"}"),
        1.0
    );
    assert_eq!(
        console.metric("reviewloop_console_answer_seconds_count"),
        1.0
    );
    let double = console.metric("reviewloop_console_refusals_total{reason=\"in_progress\"}")
        + console.metric("reviewloop_console_refusals_total{reason=\"already_answered\"}");
    assert_eq!(double, 6.0);
    console.stop().await.unwrap();
}

#[tokio::test]
async fn tokens_sign_reviewers_in_and_out() {
    let cluster = Cluster::mock();
    let dir = tempfile::tempdir().unwrap();
    let mut config = console_config(&cluster, AuthMode::Tokens);
    config.console.tokens_file = Some(tokens_file(dir.path(), &[("alice", "right")]));
    let console = TestConsole::start(&config).await;

    let mut visitor = Http::new(&console.url);
    let page = visitor.page("/task").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), Some("/signin"));
    let wrong = visitor.sign_in("alice", "wrong").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("do not match"), "{}", wrong.body);
    assert_eq!(visitor.page("/").await.status, StatusCode::SEE_OTHER);
    // A sign-in form posted without its CSRF cookie (from another page) is refused.
    let forged = Http::new(&console.url)
        .post(
            "/signin",
            &[("csrf", "00"), ("name", "alice"), ("token", "right")],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);

    let mut alice = Http::new(&console.url);
    assert_eq!(
        alice.sign_in("alice", "right").await.status,
        StatusCode::SEE_OTHER
    );
    let queue = alice.page("/").await;
    assert_eq!(queue.status, StatusCode::OK);
    assert!(queue.body.contains("Review queue") && queue.body.contains("alice"));
    let csrf = queue.field("csrf").unwrap();
    let stale = alice.clone();
    let out = alice.post("/signout", &[("csrf", &csrf)]).await;
    assert_eq!(out.location(), Some("/signin"));
    // The old session cookie no longer works, for pages or for posts.
    let mut stale = stale;
    assert_eq!(stale.page("/").await.status, StatusCode::SEE_OTHER);
    let post = stale.post("/skip", &[("csrf", &csrf), ("id", "x")]).await;
    assert_eq!(post.status, StatusCode::FORBIDDEN);
    console.stop().await.unwrap();
}

#[tokio::test]
async fn a_json_answer_is_checked_before_it_is_published_and_text_answers_are_text() {
    let cluster = Cluster::mock();
    let mut config = console_config(&cluster, AuthMode::None);
    config.console.routes.insert(
        "boxes".into(),
        RouteSettings {
            template: Some(TemplateKind::Json),
            ..RouteSettings::default()
        },
    );
    let mut boxes = ticket("b-1", "a photo", &TEAMS);
    boxes.route = "boxes".into();
    boxes.response.payload.body = json!({"boxes": [[1, 2, 3, 4]]});
    let mut chat = ticket("c-1", "write a haiku", &[]);
    chat.response.payload.body = json!({"choices": [{"message": {"content": "old pond"}}]});
    let producer = cluster.producer();
    producer.review(&config, &boxes);
    producer.review(&config, &chat);
    producer.flush();
    let console = TestConsole::start(&config).await;
    let mut you = Http::new(&console.url);
    you.sign_in("you", "").await;

    let task = you.page("/task?route=boxes").await;
    assert!(task.body.contains("&quot;boxes&quot;"), "{}", task.body);
    let csrf = task.field("csrf").unwrap();
    let bad = you
        .post(
            "/answer",
            &[("csrf", &csrf), ("id", "b-1"), ("json", "{\"boxes\": [")],
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.body.contains("not valid JSON"), "{}", bad.body);
    assert!(
        bad.body.contains("{&quot;boxes&quot;: ["),
        "the draft is kept: {}",
        bad.body
    );
    assert!(completed(&config, Duration::from_secs(1)).is_empty());
    let good = you
        .post(
            "/answer",
            &[("csrf", &csrf), ("id", "b-1"), ("json", "{\"boxes\": []}")],
        )
        .await;
    assert_eq!(good.status, StatusCode::SEE_OTHER, "{}", good.body);

    let task = you.page("/task").await;
    assert!(task.body.contains("old pond"), "{}", task.body);
    assert!(
        task.body.contains("name=\"text\""),
        "the text template: {}",
        task.body
    );
    let saved = you
        .post(
            "/answer",
            &[
                ("csrf", &csrf),
                ("id", "c-1"),
                ("text", "an old silent pond\r\n"),
            ],
        )
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER);

    let answers: Vec<Value> = completed(&config, Duration::from_secs(2))
        .iter()
        .map(|m| serde_json::from_slice(m.payload().unwrap()).unwrap())
        .collect();
    let answer_of = |id: &str| answers.iter().find(|a| a["id"] == id).unwrap()["answer"].clone();
    assert_eq!(answer_of("b-1"), json!({"boxes": []}));
    assert_eq!(answer_of("c-1"), json!({"text": "an old silent pond\n"}));
    console.stop().await.unwrap();
}

/// Two instances each read everything; leases are their own. Both may show an item at once
/// (documented), an answer given on one closes the item on the other within a fetch, and the
/// joiner writes one retraining record.
#[tokio::test]
async fn several_instances_share_answers_and_retraining_stays_exact() {
    several_instances(Cluster::mock()).await;
}

#[tokio::test]
#[ignore = "needs a real broker"]
async fn several_instances_share_answers_and_retraining_stays_exact_on_a_real_broker() {
    several_instances(Cluster::real().await).await;
}

async fn several_instances(cluster: Cluster) {
    let config = console_config(&cluster, AuthMode::Header);
    let producer = cluster.producer();
    producer.review(&config, &ticket("t-1", "my parcel never came", &TEAMS));
    producer.review(&config, &ticket("t-2", "the app crashes", &TEAMS));
    producer.flush();
    let joiner = Joiner::start(&config);
    let a = TestConsole::start(&config).await;
    let b = TestConsole::start(&config).await;
    let on = |console: &TestConsole, who: &str| {
        Http::new(&console.url).with_header("x-forwarded-user", who)
    };
    let (mut alice, mut bob) = (on(&a, "alice"), on(&b, "bob"));

    let alice_task = alice.page("/task").await;
    let bob_task = bob.page("/task").await;
    assert_eq!(alice_task.field("id").as_deref(), Some("t-1"));
    assert_eq!(
        bob_task.field("id").as_deref(),
        Some("t-1"),
        "leases are per instance"
    );

    let csrf = alice_task.field("csrf").unwrap();
    let saved = alice
        .post(
            "/answer",
            &[("csrf", &csrf), ("id", "t-1"), ("label", "shipping")],
        )
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER);
    // Instance b learns of the answer from the completed topic: the item bob holds there
    // closes, he is given t-2, and his late answer to t-1 is refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let task = bob.page("/task").await;
        if task.field("id").as_deref() == Some("t-2") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "b still offers t-1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let csrf = bob_task.field("csrf").unwrap();
    let late = bob
        .post(
            "/answer",
            &[("csrf", &csrf), ("id", "t-1"), ("label", "billing")],
        )
        .await;
    assert_eq!(late.status, StatusCode::CONFLICT, "{}", late.body);
    assert!(late.body.contains("closed"), "{}", late.body);

    let mut retraining = Reader::new(&config.kafka.brokers, &config.kafka.retraining_topic);
    assert!(retraining.read_until(Duration::from_secs(20), |r| !r.is_empty()));
    retraining.drain(Duration::from_secs(1));
    assert_eq!(retraining.counts_by_id().get("t-1"), Some(&1));
    let record = &retraining.records[0];
    assert_eq!(record["label"], json!({"label": "shipping"}));
    assert_eq!(record["answers"][0]["reviewer"], "alice");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    joiner.stop().await.unwrap();
}
