//! The reviewer console from a reviewer's seat: headless Chromium driven over WebDriver
//! (chromedriver), the console and the joiner in this process on librdkafka's mock cluster.
//!
//! Without chromedriver these tests say so loudly and pass, unless `CI` is set (then they
//! fail). `REVIEWLOOP_SCREENSHOTS=1` saves the task and queue pages under `docs/`.

mod console_support;
mod join_support;

use std::time::{Duration, Instant};

use console_support::browser::{self, Browser, ENTER};
use console_support::*;
use join_support::kafka_support;
use join_support::{Cluster, Joiner, Reader};
use reviewloop::console::{AuthMode, RouteSettings};
use serde_json::{Value, json};

async fn checked_label(browser: &Browser) -> Value {
    browser
        .execute("return document.querySelector('input[name=label]:checked')?.value ?? null")
        .await
}

#[tokio::test]
async fn a_reviewer_signs_in_answers_with_the_keyboard_and_the_joiner_writes_the_label() {
    let Some(browser) = browser::launch().await else {
        return;
    };
    let cluster = Cluster::mock();
    let dir = tempfile::tempdir().unwrap();
    let mut config = cluster.config();
    config.console.auth = AuthMode::Tokens;
    config.console.tokens_file = Some(tokens_file(dir.path(), &[("alice", "s3cret-token")]));
    config.console.routes.insert(
        "/invocations".into(),
        RouteSettings {
            instructions: Some(
                "Which team should handle this ticket? Read the whole message: a ticket about \
                 a charge for an order that never arrived belongs to shipping."
                    .into(),
            ),
            ..RouteSettings::default()
        },
    );
    produce(
        &cluster,
        &config,
        &[
            ticket(
                "ticket-4411",
                "Hi, I was charged twice for order #4411 and the parcel still hasn't arrived. \
                 Can someone look into it?\n\nThanks, Dana",
                &TEAMS,
            ),
            ticket(
                "ticket-4412",
                "The app logs me out every five minutes.",
                &TEAMS,
            ),
            ticket("ticket-4413", "Please close my account.", &TEAMS),
        ],
    );
    let joiner = Joiner::start(&config);
    let console = TestConsole::start(&config).await;

    // Not signed in: the console sends the browser to the sign-in form.
    browser.goto(&format!("{}/task", console.url)).await;
    browser.wait_path("/signin").await;
    browser
        .sign_in(&console.url, "alice", Some("s3cret-token"))
        .await;
    assert_eq!(browser.text("#open-count").await, "3");
    assert_eq!(browser.text("#mine-today").await, "0");
    browser.screenshot("console-queue.png").await;

    browser.press_and_wait(ENTER).await; // "Start reviewing"
    assert_eq!(browser.path().await, "/task");
    assert_eq!(
        browser.shown_id().await,
        "ticket-4411",
        "the oldest item first"
    );
    let input = browser.text(".input .text").await;
    assert!(input.contains("charged twice for order #4411"), "{input}");
    assert!(browser.text(".instructions").await.contains("Which team"));
    assert_eq!(browser.text(".model-label .label").await, "shipping");
    assert!(browser.text("dl.facts").await.contains("0.42"));
    assert_eq!(
        browser.text(".badge.low_confidence").await,
        "low_confidence"
    );
    assert_eq!(
        checked_label(&browser).await,
        "shipping",
        "the model's label pre-selected"
    );
    assert!(browser.text("ul.keys").await.contains("choose"));
    browser.screenshot("console-task.png").await;

    tokio::time::sleep(Duration::from_millis(600)).await; // reading takes a moment
    browser.press('2').await;
    assert_eq!(checked_label(&browser).await, "billing");
    browser.press_and_expect_saved(ENTER).await;
    assert!(browser.text(".flash.ok").await.contains("Answer saved"));
    assert_eq!(browser.shown_id().await, "ticket-4412");

    let mut retraining = Reader::new(&config.kafka.brokers, &config.kafka.retraining_topic);
    assert!(
        retraining.read_until(Duration::from_secs(20), |r| !r.is_empty()),
        "the joiner writes the retraining record"
    );
    let record = &retraining.records[0];
    assert_eq!(record["id"], "ticket-4411");
    assert_eq!(record["label"], json!({"label": "billing"}));
    assert_eq!(record["answers"][0]["reviewer"], "alice");
    assert!(record["answers"][0]["time_spent_seconds"].as_f64().unwrap() > 0.5);
    browser.goto(&format!("{}/", console.url)).await;
    assert_eq!(browser.text("#mine-today").await, "1");

    browser.quit().await;
    console.stop().await.unwrap();
    joiner.stop().await.unwrap();
}

#[tokio::test]
async fn two_reviewers_per_item_expired_leases_and_a_restarted_console() {
    let Some((browser, cluster, mut config)) = browser_on_mock().await else {
        return;
    };
    let limit = Duration::from_secs(8);
    config.console.task_time_limit = limit;
    config.join.reviewers_per_item = 2;
    produce(
        &cluster,
        &config,
        &[
            ticket("x", "where is my parcel", &TEAMS),
            ticket("y", "refund please", &TEAMS),
            ticket("z", "password reset fails", &TEAMS),
        ],
    );
    let joiner = Joiner::start(&config);
    let console = TestConsole::start(&config).await;
    let task = format!("{}/task", console.url);

    browser.sign_in(&console.url, "alice", None).await;
    browser.goto(&task).await;
    assert_eq!(browser.shown_id().await, "x");
    browser.press('1').await;
    browser.press_and_wait(ENTER).await;
    assert_eq!(browser.shown_id().await, "y", "alice never gets x again");
    browser.sign_out().await;

    // x needs a second reviewer: bob gets it.
    browser.sign_in(&console.url, "bob", None).await;
    browser.goto(&task).await;
    assert_eq!(browser.shown_id().await, "x");
    browser.press('1').await;
    browser.press_and_wait(ENTER).await;
    assert_eq!(browser.shown_id().await, "y");
    let bob_leased_y = Instant::now();
    browser.sign_out().await;

    // y is leased to alice and bob (two answers needed): carol only gets z, even after
    // skipping it, until their leases run out; then y is hers.
    browser.sign_in(&console.url, "carol", None).await;
    browser.goto(&task).await;
    assert_eq!(browser.shown_id().await, "z");
    browser.press_and_wait('s').await;
    assert_eq!(browser.path().await, "/task?skipped=1");
    assert_eq!(browser.shown_id().await, "z", "nothing else is free yet");
    let expiry = limit + Duration::from_millis(300);
    tokio::time::sleep(expiry.saturating_sub(bob_leased_y.elapsed())).await;
    browser.press_and_wait('s').await;
    assert_eq!(
        browser.shown_id().await,
        "y",
        "expired leases hand y to carol"
    );

    // The joiner wrote x's retraining record, with both answers.
    let mut retraining = Reader::new(&config.kafka.brokers, &config.kafka.retraining_topic);
    assert!(retraining.read_until(Duration::from_secs(20), |r| !r.is_empty()));
    let answers = &retraining.records[0]["answers"];
    assert_eq!(retraining.records[0]["id"], "x");
    assert_eq!(answers.as_array().unwrap().len(), 2);

    // A restarted console rebuilds its queue from Kafka: y and z open, x answered.
    console.stop().await.unwrap();
    let console = TestConsole::start(&config).await;
    browser.goto(&format!("{}/", console.url)).await;
    browser.wait_path("/signin").await; // sessions live in the process
    browser.sign_in(&console.url, "alice", None).await;
    assert_eq!(browser.text("#open-count").await, "2");
    let mut seen = Vec::new();
    browser.goto(&format!("{}/task", console.url)).await;
    while browser.has("#answer-form").await {
        let id = browser.shown_id().await;
        if seen.contains(&id) {
            break;
        }
        seen.push(id);
        browser.press_and_wait('s').await;
    }
    assert_eq!(
        seen,
        ["y", "z"],
        "alice is offered the open items she has not answered"
    );

    browser.quit().await;
    console.stop().await.unwrap();
    joiner.stop().await.unwrap();
}

#[tokio::test]
async fn a_script_in_the_input_or_the_models_answer_renders_as_text_and_runs_nothing() {
    let Some((browser, cluster, config)) = browser_on_mock().await else {
        return;
    };
    let attack = "<script>window.pwned = 1; document.title = 'pwned'</script>\
                  <img src=x onerror=\"window.pwned = 2\"> \
                  <a href=\"javascript:window.pwned = 3\">click me</a>";
    let evil_label = "<img src=x onerror=window.pwned=4>";
    let mut record = ticket(
        "evil",
        attack,
        &[(evil_label, 0.6), ("javascript:window.pwned=5", 0.4)],
    );
    record.model.target_model = Some("\"><script>window.pwned = 6</script>".into());
    record.conditions = vec!["</dd><script>window.pwned = 7</script>".into()];
    produce(&cluster, &config, &[record]);
    let console = review_as(&config, &browser, "reviewer").await;
    browser.find("#answer-form").await;

    browser.assert_no_script_ran().await;
    assert_eq!(
        browser.execute("return document.title").await,
        "Review · reviewloop"
    );
    assert_eq!(
        browser
            .execute("return document.querySelectorAll('img, a[href^=\"javascript\"]').length")
            .await,
        0
    );
    assert!(
        browser.client.get_alert_text().await.is_err(),
        "no dialog opened"
    );
    // The payloads are there, as text.
    assert!(
        browser
            .text(".input .text")
            .await
            .contains("<script>window.pwned = 1;")
    );
    assert!(browser.text("fieldset.choices").await.contains(evil_label));
    assert!(
        browser
            .text("dl.facts")
            .await
            .contains("<script>window.pwned = 6</script>")
    );
    // The Content-Security-Policy is in force: even a script element added to the page does
    // not run (only the console's own file may).
    let inline = browser
        .execute(
            "const s = document.createElement('script'); s.textContent = 'window.inlineRan = 1'; \
             document.body.appendChild(s); return typeof window.inlineRan",
        )
        .await;
    assert_eq!(inline, "undefined");

    // The reviewer picks the odd label; it is published exactly as the model wrote it.
    browser.press('1').await;
    browser.press_and_expect_saved(ENTER).await;
    assert_eq!(
        completed(&config, 1)[0]["answer"],
        json!({"label": evil_label})
    );
    assert_eq!(
        browser.execute("return typeof window.pwned").await,
        "undefined"
    );

    browser.quit().await;
    console.stop().await.unwrap();
}

#[tokio::test]
async fn no_page_or_post_works_without_an_identity_or_without_the_csrf_token() {
    let Some(browser) = browser::launch().await else {
        return;
    };
    let cluster = Cluster::mock();
    produce(
        &cluster,
        &cluster.config(),
        &[ticket("t-1", "hello", &TEAMS)],
    );

    // Behind an SSO proxy that did not set the header: nothing is shown.
    let mut header = cluster.config();
    header.console.auth = AuthMode::Header;
    let sso = TestConsole::start(&header).await;
    for path in ["/", "/task"] {
        browser.goto(&format!("{}{path}", sso.url)).await;
        browser.wait_text("Who are you?").await;
        assert!(!browser.has("#answer-form").await);
    }
    sso.stop().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut tokens = cluster.config();
    tokens.console.auth = AuthMode::Tokens;
    tokens.console.tokens_file = Some(tokens_file(dir.path(), &[("alice", "t0ken")]));
    let console = TestConsole::start(&tokens).await;
    for path in ["/", "/task"] {
        browser.goto(&format!("{}{path}", console.url)).await;
        browser.wait_path("/signin").await;
    }
    browser.sign_in(&console.url, "alice", Some("t0ken")).await;
    browser.goto(&format!("{}/task", console.url)).await;
    browser.find("#answer-form").await;
    // The form posted without its CSRF token (as a forged form would be) is refused.
    browser
        .execute(
            "const form = document.getElementById('answer-form'); \
             form.querySelector('input[name=csrf]').remove(); form.submit();",
        )
        .await;
    browser.wait_text("Form refused").await;
    assert!(
        kafka_support::consume_until(
            &tokens.kafka.brokers,
            &tokens.kafka.completed_topic,
            Duration::from_secs(2),
            |_| false
        )
        .is_empty(),
        "nothing was published"
    );
    assert_eq!(
        console.metric("reviewloop_console_refusals_total{reason=\"csrf\"}"),
        1.0
    );

    browser.quit().await;
    console.stop().await.unwrap();
}
