//! The console's text and table templates from a reviewer's seat (headless Chromium over
//! WebDriver, the console in this process on librdkafka's mock cluster): entity spans
//! relabelled and removed, a translation corrected beside its source, tabular inputs as
//! feature/value tables, hostile text shown as text.
//!
//! Without chromedriver these tests say so loudly and pass, unless `CI` is set (then they
//! fail). `REVIEWLOOP_SCREENSHOTS=1` saves each template's page under `docs/`.

mod console_support;
mod join_support;

use console_support::browser::{Browser, ENTER};
use console_support::*;
use reviewloop::config::Config;
use reviewloop::console::{RouteSettings, TemplateKind};
use reviewloop::record::ReviewRecord;
use serde_json::{Value, json};

/// A review record of `route` with these bodies (a low-confidence item like the proxy writes).
fn item(id: &str, route: &str, request: (&str, &str), response: &str) -> ReviewRecord {
    let mut record = record(
        id,
        (request.0, request.1.as_bytes()),
        response.as_bytes(),
        0.41,
    );
    record.route = route.into();
    record
}

/// A console with `auth = "none"` (loopback), signed in as `reviewer`, on the task page.
async fn review(config: &Config, browser: &Browser) -> TestConsole {
    let console = review_as(config, browser, "reviewer").await;
    browser.find("#answer-form").await;
    console
}

/// Submits the answer form with the keyboard (Enter, away from any field).
async fn submit(browser: &Browser) {
    browser.execute("document.activeElement.blur()").await;
    browser.press_and_expect_saved(ENTER).await;
}

/// The answers published on the completed topic.
fn answers(config: &Config, count: usize) -> Vec<Value> {
    completed(config, count)
        .into_iter()
        .map(|record| record["answer"].clone())
        .collect()
}

async fn nothing_ran(browser: &Browser) {
    browser.assert_no_script_ran().await;
    assert_eq!(
        browser
            .execute("return document.querySelectorAll('img, b, i').length")
            .await,
        0,
        "markup in the record is text, not elements"
    );
}

#[tokio::test]
async fn entity_spans_are_relabelled_and_removed_and_the_answer_carries_them() {
    let Some((browser, cluster, mut config)) = browser_on_mock().await else {
        return;
    };
    add_route(
        &mut config,
        "entities",
        "Check each name the model found: fix its type or remove it.",
    )
    .labels = Some(vec![
        "PERSON".into(),
        "ORGANIZATION".into(),
        "LOCATION".into(),
    ]);
    let text = "Dr. Zoë Adeyemi of Northwind Traders flew from Lagos to Zürich on Monday \
                <img src=x onerror=\"window.pwned=1\"> to meet <b>Acme</b> 😀 people.";
    let chars = |needle: &str| {
        let byte = text.find(needle).unwrap();
        let start = text[..byte].chars().count();
        (start, start + needle.chars().count())
    };
    let entity = |needle: &str, kind: &str, score: f64| {
        let (start, end) = chars(needle);
        json!({"BeginOffset": start, "EndOffset": end, "Type": kind, "Score": score, "Text": needle})
    };
    let response = json!({"Entities": [
        entity("Zoë Adeyemi", "PERSON", 0.98),
        entity("Northwind Traders", "LOCATION", 0.41),
        entity("Lagos", "LOCATION", 0.97),
        entity("Zürich", "LOCATION", 0.95),
        entity("Monday", "DATE", 0.88),
        entity("<b>Acme</b>", "<img src=x onerror=window.pwned=2>", 0.52),
    ]});
    let request = json!({"Text": text, "LanguageCode": "en"}).to_string();
    produce(
        &cluster,
        &config,
        &[item(
            "ner-1",
            "entities",
            ("application/json", &request),
            &response.to_string(),
        )],
    );
    let console = review(&config, &browser).await;

    // The spans are marked in the text, hostile text and labels shown as text.
    let marks: Vec<String> = serde_json::from_value(
        browser
            .execute(
                "return [...document.querySelectorAll('mark.entity')]\
                 .map(m => m.firstChild.textContent + '|' + m.querySelector('.tag').textContent)",
            )
            .await,
    )
    .unwrap();
    assert_eq!(
        marks,
        [
            "Zoë Adeyemi|PERSON",
            "Northwind Traders|LOCATION",
            "Lagos|LOCATION",
            "Zürich|LOCATION",
            "Monday|DATE",
            "<b>Acme</b>|<img src=x onerror=window.pwned=2>",
        ]
    );
    assert!(
        browser
            .text(".input .entities")
            .await
            .contains("<img src=x onerror=")
    );
    nothing_ran(&browser).await;
    browser.execute("window.scrollTo(0, 0)").await;
    browser.screenshot("console-entities.png").await;

    // Northwind Traders is an organization; Monday is not wanted.
    browser
        .find("select[name='label.1']")
        .await
        .select_by_value("ORGANIZATION")
        .await
        .unwrap();
    assert_eq!(
        browser.text("#span-1 .tag").await,
        "ORGANIZATION",
        "the text follows"
    );
    browser
        .find("input[name='remove.4']")
        .await
        .click()
        .await
        .unwrap();
    assert_eq!(
        browser
            .execute("return document.getElementById('span-4').classList.contains('removed')")
            .await,
        true
    );
    submit(&browser).await;

    let answer = &answers(&config, 1)[0];
    let expected: Vec<Value> = [
        ("Zoë Adeyemi", "PERSON"),
        ("Northwind Traders", "ORGANIZATION"),
        ("Lagos", "LOCATION"),
        ("Zürich", "LOCATION"),
        ("<b>Acme</b>", "<img src=x onerror=window.pwned=2>"),
    ]
    .iter()
    .map(|(needle, label)| {
        let (start, end) = chars(needle);
        json!({"start": start, "end": end, "text": needle, "label": label})
    })
    .collect();
    assert_eq!(answer, &json!({ "entities": expected }));
    nothing_ran(&browser).await;

    browser.quit().await;
    console.stop().await.unwrap();
}

#[tokio::test]
async fn a_translation_is_corrected_beside_its_source() {
    let Some((browser, cluster, mut config)) = browser_on_mock().await else {
        return;
    };
    add_route(
        &mut config,
        "translate",
        "Correct the translation; keep the register of the source.",
    );
    let request = json!({
        "Text": "Your parcel will arrive on Tuesday. If nobody is home, the courier leaves it \
                 with a neighbour. <script>window.pwned = 1</script>",
        "SourceLanguageCode": "en",
        "TargetLanguageCode": "de",
    });
    let response = json!({
        "TranslatedText": "Ihr Paket kommt am Dienstag an. Wenn niemand zu Hause ist, lässt der \
                           Kurier es bei einem Nachbarn. <script>window.pwned = 1</script>",
        "SourceLanguageCode": "en",
        "TargetLanguageCode": "de",
    });
    produce(
        &cluster,
        &config,
        &[item(
            "tr-1",
            "translate",
            ("application/json", &request.to_string()),
            &response.to_string(),
        )],
    );
    let console = review(&config, &browser).await;

    let source = browser.find(".side-by-side .source .text").await;
    let output = browser.find(".side-by-side textarea#output").await;
    assert!(
        source
            .text()
            .await
            .unwrap()
            .starts_with("Your parcel will arrive")
    );
    assert_eq!(
        output.prop("value").await.unwrap().as_deref(),
        response["TranslatedText"].as_str()
    );
    let (sx, sy, sw, _) = source.rectangle().await.unwrap();
    let (ox, oy, _, _) = output.rectangle().await.unwrap();
    assert!(
        ox >= sx + sw && (oy - sy).abs() < 40.0,
        "side by side: {sx},{sy} {ox},{oy}"
    );
    assert!(
        browser
            .text(".side-by-side .source figcaption")
            .await
            .contains("en")
    );
    assert!(
        browser
            .text(".side-by-side .output figcaption")
            .await
            .contains("de")
    );
    nothing_ran(&browser).await;
    browser.screenshot("console-translation.png").await;

    output.clear().await.unwrap();
    output
        .send_keys("Ihr Paket kommt am Dienstag. Ist niemand zu Hause, gibt der Kurier es beim Nachbarn ab.")
        .await
        .unwrap();
    // Ctrl+Enter in the output (outside the answer form's element, part of it) submits.
    browser.ctrl_press_and_wait(ENTER).await;
    assert_eq!(browser.path().await, "/task?saved=1");
    assert_eq!(
        answers(&config, 1)[0],
        json!({
            "text": "Ihr Paket kommt am Dienstag. Ist niemand zu Hause, gibt der Kurier es beim Nachbarn ab.",
            "source_language": "en",
            "target_language": "de",
        })
    );

    browser.quit().await;
    console.stop().await.unwrap();
}

/// The feature/value table of the input card: (feature, value) rows.
async fn table(browser: &Browser) -> Vec<(String, String)> {
    let rows: Vec<Vec<String>> = serde_json::from_value(
        browser
            .execute(
                "return [...document.querySelectorAll('.input table.features tbody tr')]\
                 .map(r => [r.cells[0].textContent, r.cells[1].textContent])",
            )
            .await,
    )
    .unwrap();
    rows.into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect()
}

fn pairs(rows: &[(&str, &str)]) -> Vec<(String, String)> {
    rows.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn a_csv_row_and_a_json_object_show_as_feature_value_tables() {
    let Some((browser, cluster, mut config)) = browser_on_mock().await else {
        return;
    };
    let mut churn = RouteSettings {
        instructions: Some("Will this customer leave within 90 days?".into()),
        labels: Some(vec!["stays".into(), "leaves".into()]),
        features: Some(vec![
            "tenure_months".into(),
            "monthly_charges".into(),
            "contract".into(),
            "support_calls".into(),
            "<b>plan</b>".into(),
        ]),
        ..RouteSettings::default()
    };
    churn.template = Some(TemplateKind::Classify);
    config.console.routes.insert("churn".into(), churn);
    produce(
        &cluster,
        &config,
        &[
            item(
                "csv-1",
                "churn",
                (
                    "text/csv",
                    "14,89.5,\"month-to-month, paper\",6,<script>window.pwned=1</script>\n",
                ),
                r#"{"predictions":[[0.42,0.58]]}"#,
            ),
            item(
                "json-1",
                "/invocations",
                (
                    "application/json",
                    r#"{"age":42,"income":55000,"city":"Oslo","owner":true,"segment":"<i>gold</i>"}"#,
                ),
                r#"[{"label":"approve","score":0.55},{"label":"refer","score":0.45}]"#,
            ),
        ],
    );
    let console = review(&config, &browser).await;

    assert_eq!(
        table(&browser).await,
        pairs(&[
            ("tenure_months", "14"),
            ("monthly_charges", "89.5"),
            ("contract", "month-to-month, paper"),
            ("support_calls", "6"),
            ("<b>plan</b>", "<script>window.pwned=1</script>"),
        ])
    );
    nothing_ran(&browser).await;
    browser.screenshot("console-tabular.png").await;

    browser.press_and_wait('s').await;
    assert_eq!(browser.shown_id().await, "json-1");
    assert_eq!(
        table(&browser).await,
        pairs(&[
            ("age", "42"),
            ("city", "Oslo"),
            ("income", "55000"),
            ("owner", "true"),
            ("segment", "<i>gold</i>"),
        ])
    );
    nothing_ran(&browser).await;

    browser.quit().await;
    console.stop().await.unwrap();
}

#[tokio::test]
async fn the_text_and_json_templates_pages() {
    let Some((browser, cluster, mut config)) = browser_on_mock().await else {
        return;
    };
    add_route(
        &mut config,
        "chat",
        "Correct the assistant's answer; keep it short and friendly.",
    );
    add_route(
        &mut config,
        "invoices",
        "Check the fields read from the invoice against its text.",
    );
    let chat_request = json!({"model": "support-bot", "messages": [
        {"role": "system", "content": "You answer customers of a parcel service."},
        {"role": "user", "content": "My parcel says 'delivered' but it isn't here. What now?"}
    ]});
    let chat_response = json!({"choices": [{"message": {"role": "assistant", "content":
        "Sorry about that! Check with your neighbours and around your door first. If it still \
         hasn't turned up after 24 hours, reply here and we'll open a trace with the courier."}}]});
    produce(
        &cluster,
        &config,
        &[
            item(
                "chat-1",
                "chat",
                ("application/json", &chat_request.to_string()),
                &chat_response.to_string(),
            ),
            item(
                "invoice-1",
                "invoices",
                (
                    "application/json",
                    r#"{"document":"Invoice INV-2291 from Northwind Traders, 14 Nov 2026. Total due: 1,234.50 EUR by 31 Jan 2027."}"#,
                ),
                r#"{"invoice_number":"INV-2291","supplier":"Northwind Traders","total":1234.5,"currency":"EUR","due_date":"2026-01-31"}"#,
            ),
        ],
    );
    let console = review(&config, &browser).await;

    // auto: a chat answer is corrected as text, pre-filled.
    let text = browser.find("textarea[name=text]").await;
    assert!(
        text.prop("value")
            .await
            .unwrap()
            .unwrap()
            .starts_with("Sorry about that!")
    );
    browser.execute("window.scrollTo(0, 0)").await;
    browser.screenshot("console-text.png").await;
    browser.execute("document.activeElement.blur()").await;
    browser.press_and_wait('s').await;

    // auto: anything else is edited as JSON.
    let json = browser.find("textarea[name=json]").await;
    let value: Value = serde_json::from_str(&json.prop("value").await.unwrap().unwrap()).unwrap();
    assert_eq!(value["due_date"], "2026-01-31");
    browser.execute("window.scrollTo(0, 0)").await;
    browser.screenshot("console-json.png").await;

    browser.quit().await;
    console.stop().await.unwrap();
}
