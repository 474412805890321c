//! The console's media templates from a reviewer's seat, in headless Chromium over WebDriver
//! (see tests/console_browser.rs): an image with detection boxes drawn where the model found
//! them (checked on the pixels of a screenshot), a Textract form on its page, an audio input
//! that plays, and an SVG "image" whose script never runs.
//!
//! Without chromedriver these tests say so loudly and pass, unless `CI` is set (then they
//! fail). `REVIEWLOOP_SCREENSHOTS=1` saves the pages under `docs/`.

mod console_support;
mod join_support;

use std::io::{Read, Write};
use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use console_support::browser::Browser;
use console_support::*;
use reviewloop::config::Config;
use reviewloop::console::TemplateKind;
use reviewloop::record::ReviewRecord;
use serde_json::{Value, json};

/// The colour the console draws a detection's box in (console.css).
const BOX_COLOUR: [u8; 3] = [0xff, 0x00, 0xc8];
/// The test image's colour.
const IMAGE_COLOUR: [u8; 3] = [200, 220, 240];

/// A review record of an image, a document or a sound, the model 55 % sure.
fn item(id: &str, content_type: &str, request: &[u8], response: &Value) -> ReviewRecord {
    record(
        id,
        (content_type, request),
        response.to_string().as_bytes(),
        0.55,
    )
}

fn with_template(config: &mut Config, template: TemplateKind, instructions: &str) {
    add_route(config, "/invocations", instructions).template = Some(template);
}

/// The single completed record the console published.
fn completed_answer(config: &Config) -> Value {
    completed(config, 1).remove(0)
}

// --- Images: a PNG encoder for test pictures, a decoder for screenshots. -------------------

/// An RGB PNG of `width`×`height` painted by `paint(x, y)`.
fn png(width: u32, height: u32, paint: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(((width * 3 + 1) * height) as usize);
    for y in 0..height {
        raw.push(0); // filter: none
        for x in 0..width {
            raw.extend(paint(x, y));
        }
    }
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    zlib.write_all(&raw).unwrap();
    let mut ihdr = Vec::new();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB, no interlace
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [
        (b"IHDR", ihdr),
        (b"IDAT", zlib.finish().unwrap()),
        (b"IEND", Vec::new()),
    ] {
        out.extend((data.len() as u32).to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(&data);
        out.extend(kind);
        out.extend(&data);
        out.extend(crc.finalize().to_be_bytes());
    }
    out
}

/// A decoded 8-bit RGB or RGBA PNG (what Chromium's screenshots are).
struct Picture {
    width: usize,
    channels: usize,
    pixels: Vec<u8>,
}

impl Picture {
    fn decode(png: &[u8]) -> Picture {
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let (mut at, mut idat) = (8, Vec::new());
        let (mut width, mut height, mut channels) = (0, 0, 0);
        while at + 8 <= png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            let kind = &png[at + 4..at + 8];
            let data = &png[at + 8..at + 8 + len];
            match kind {
                b"IHDR" => {
                    width = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
                    height = u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize;
                    assert_eq!(data[8], 8, "8-bit");
                    assert_eq!(data[12], 0, "not interlaced");
                    channels = match data[9] {
                        2 => 3,
                        6 => 4,
                        other => panic!("colour type {other}"),
                    };
                }
                b"IDAT" => idat.extend_from_slice(data),
                _ => {}
            }
            at += 12 + len;
        }
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&idat[..])
            .read_to_end(&mut raw)
            .unwrap();
        let stride = width * channels;
        let mut pixels = vec![0u8; stride * height];
        for y in 0..height {
            let filter = raw[y * (stride + 1)];
            let line = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
            for i in 0..stride {
                let left = if i >= channels {
                    pixels[y * stride + i - channels]
                } else {
                    0
                };
                let up = if y > 0 {
                    pixels[(y - 1) * stride + i]
                } else {
                    0
                };
                let up_left = if y > 0 && i >= channels {
                    pixels[(y - 1) * stride + i - channels]
                } else {
                    0
                };
                let predicted = match filter {
                    0 => 0,
                    1 => left,
                    2 => up,
                    3 => ((u16::from(left) + u16::from(up)) / 2) as u8,
                    4 => {
                        let p = i16::from(left) + i16::from(up) - i16::from(up_left);
                        let (pa, pb, pc) = (
                            (p - i16::from(left)).abs(),
                            (p - i16::from(up)).abs(),
                            (p - i16::from(up_left)).abs(),
                        );
                        if pa <= pb && pa <= pc {
                            left
                        } else if pb <= pc {
                            up
                        } else {
                            up_left
                        }
                    }
                    other => panic!("filter {other}"),
                };
                pixels[y * stride + i] = line[i].wrapping_add(predicted);
            }
        }
        Picture {
            width,
            channels,
            pixels,
        }
    }

    fn rgb(&self, x: usize, y: usize) -> [u8; 3] {
        let at = (y * self.width + x) * self.channels;
        [self.pixels[at], self.pixels[at + 1], self.pixels[at + 2]]
    }

    /// Whether a pixel within `radius` of (x, y) has `colour` (±12 per channel).
    fn has_near(&self, x: f64, y: f64, radius: i64, colour: [u8; 3]) -> bool {
        let (x, y) = (x.round() as i64, y.round() as i64);
        (-radius..=radius).any(|dy| {
            (-radius..=radius).any(|dx| {
                let (px, py) = ((x + dx) as usize, (y + dy) as usize);
                let found = self.rgb(px, py);
                found
                    .iter()
                    .zip(colour)
                    .all(|(a, b)| (i16::from(*a) - i16::from(b)).abs() <= 12)
            })
        })
    }
}

/// The page rectangle of `css` in screenshot pixels (the device scale factor is 1).
async fn rect(browser: &Browser, css: &str) -> (f64, f64, f64, f64) {
    let r = browser
        .execute(&format!(
            "const r = document.querySelector('{css}').getBoundingClientRect(); \
             return [r.left, r.top, r.width, r.height]"
        ))
        .await;
    let n = |i: usize| r[i].as_f64().unwrap();
    (n(0), n(1), n(2), n(3))
}

fn rekognition_labels() -> Value {
    json!({"Labels": [
        {"Name": "Dog", "Confidence": 91.2, "Instances": [
            {"BoundingBox": {"Left": 0.1, "Top": 0.2, "Width": 0.3, "Height": 0.4}, "Confidence": 91.2}]},
        {"Name": "Cat", "Confidence": 48.7, "Instances": [
            {"BoundingBox": {"Left": 0.55, "Top": 0.1, "Width": 0.35, "Height": 0.5}, "Confidence": 48.7}]},
        {"Name": "Grass", "Confidence": 77.0, "Instances": []}
    ]})
}

#[tokio::test]
async fn two_detection_boxes_are_drawn_in_place_and_a_rejected_one_is_in_the_answer() {
    let Some((browser, cluster, mut config)) = browser_on_mock().await else {
        return;
    };
    with_template(
        &mut config,
        TemplateKind::Boxes,
        "Is each box around the animal it names? Mark a wrong box Wrong.",
    );
    let image = png(400, 300, |_, _| IMAGE_COLOUR);
    let photo = item("photo-1", "image/png", &image, &rekognition_labels());
    produce(&cluster, &config, &[photo]);
    let console = review_as(&config, &browser, "alice").await;
    browser.find("#input-image").await;
    browser
        .wait_until("document.querySelector('#input-image').naturalWidth === 400")
        .await;
    assert_eq!(
        browser
            .execute("return document.querySelectorAll('svg.overlay rect').length")
            .await,
        2
    );
    assert!(
        browser.text(".detections").await.contains("Grass"),
        "a label without a box is listed"
    );

    let (left, top, width, height) = rect(&browser, "#input-image").await;
    assert_eq!((width, height), (400.0, 300.0), "shown at its size");
    let shot = Picture::decode(&browser.client.screenshot().await.unwrap());
    let boxes = [(0.1, 0.2, 0.3, 0.4), (0.55, 0.1, 0.35, 0.5)];
    for (n, (bl, bt, bw, bh)) in boxes.into_iter().enumerate() {
        let (x0, y0) = (left + bl * width, top + bt * height);
        let (x1, y1) = (x0 + bw * width, y0 + bh * height);
        let (mid_x, mid_y) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
        for (what, x, y) in [
            ("left", x0, mid_y),
            ("right", x1, mid_y),
            ("bottom", mid_x, y1),
        ] {
            assert!(
                shot.has_near(x, y, 2, BOX_COLOUR),
                "box {} has no {what} edge at ({x}, {y}): {:?}",
                n + 1,
                shot.rgb(x as usize, y as usize)
            );
        }
        assert!(
            shot.has_near(mid_x, mid_y, 0, IMAGE_COLOUR),
            "box {} is not filled",
            n + 1
        );
        // Just outside each side: the image, not a box.
        assert!(
            !shot.has_near(x0 - 8.0, mid_y, 2, BOX_COLOUR),
            "box {} too wide",
            n + 1
        );
        assert!(
            !shot.has_near(mid_x, y1 + 8.0, 2, BOX_COLOUR),
            "box {} too tall",
            n + 1
        );
    }
    assert!(
        !shot.has_near(left + 20.0, top + 280.0, 5, BOX_COLOUR),
        "no box in a free corner"
    );

    // The reviewer says the cat is wrong, with its number key.
    tokio::time::sleep(Duration::from_millis(300)).await;
    browser.press('2').await;
    assert_eq!(
        browser
            .execute("return document.querySelector(\"input[name='verdict.1']:checked\").value")
            .await,
        "rejected"
    );
    assert_eq!(
        browser
            .execute("return document.getElementById('area-2').classList.contains('rejected')")
            .await,
        true,
        "the rejected box is drawn struck out"
    );
    browser.screenshot("console-boxes.png").await;
    browser.send().await;

    let completed = completed_answer(&config);
    assert_eq!(completed["id"], "photo-1");
    assert_eq!(completed["reviewer"], "alice");
    let answer = &completed["answer"];
    assert_eq!(answer["rejected"], 1);
    let verdicts: Vec<(&str, &str)> = answer["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["label"].as_str().unwrap(), d["verdict"].as_str().unwrap()))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("Dog", "confirmed"),
            ("Cat", "rejected"),
            ("Grass", "confirmed")
        ]
    );
    assert_eq!(answer["detections"][1]["box"]["left"], 0.55);

    browser.quit().await;
    console.stop().await.unwrap();
}

/// A scanned form: white paper with dark bars where the words are.
fn form_page(ink: &[(f64, f64, f64, f64)]) -> Vec<u8> {
    let (w, h) = (600u32, 400u32);
    png(w, h, |x, y| {
        let (fx, fy) = (f64::from(x) / f64::from(w), f64::from(y) / f64::from(h));
        let inked = ink.iter().any(|(l, t, bw, bh)| {
            fx >= *l && fx <= l + bw * 0.8 && fy >= t + bh * 0.25 && fy <= t + bh * 0.75
        });
        if inked { [70, 70, 80] } else { [252, 252, 248] }
    })
}

fn textract(fields: &[(&str, &str, f64, (f64, f64))]) -> Value {
    let mut blocks = vec![json!({"Id": "page", "BlockType": "PAGE", "Confidence": 99.9})];
    for (i, (key, value, confidence, (left, top))) in fields.iter().enumerate() {
        let geometry =
            |l: f64| json!({"BoundingBox": {"Left": l, "Top": top, "Width": 0.3, "Height": 0.08}});
        blocks.push(json!({"Id": format!("k{i}"), "BlockType": "KEY_VALUE_SET", "EntityTypes": ["KEY"],
            "Confidence": 99.0, "Geometry": geometry(*left),
            "Relationships": [{"Type": "VALUE", "Ids": [format!("v{i}")]}, {"Type": "CHILD", "Ids": [format!("kw{i}")]}]}));
        blocks.push(
            json!({"Id": format!("v{i}"), "BlockType": "KEY_VALUE_SET", "EntityTypes": ["VALUE"],
            "Confidence": confidence, "Geometry": geometry(left + 0.35),
            "Relationships": [{"Type": "CHILD", "Ids": [format!("vw{i}")]}]}),
        );
        blocks.push(
            json!({"Id": format!("kw{i}"), "BlockType": "WORD", "Text": key, "Confidence": 99.0}),
        );
        blocks.push(json!({"Id": format!("vw{i}"), "BlockType": "WORD", "Text": value, "Confidence": confidence}));
    }
    json!({"DocumentMetadata": {"Pages": 1}, "Blocks": blocks})
}

#[tokio::test]
async fn a_textract_page_lists_its_pairs_with_the_low_confidence_one_highlighted() {
    let Some((browser, cluster, mut config)) = browser_on_mock().await else {
        return;
    };
    with_template(
        &mut config,
        TemplateKind::Document,
        "Check each value against the scanned form; fix the ones the model misread.",
    );
    let fields = [
        ("Name:", "Dana Smith", 98.5, (0.08, 0.15)),
        ("Policy no.:", "PX-1O42", 62.0, (0.08, 0.35)),
        ("Date:", "2026-03-14", 96.0, (0.08, 0.55)),
    ];
    let ink: Vec<_> = fields
        .iter()
        .flat_map(|(_, _, _, (l, t))| [(*l, *t, 0.3, 0.08), (l + 0.35, *t, 0.3, 0.08)])
        .collect();
    let page = base64::engine::general_purpose::STANDARD.encode(form_page(&ink));
    let request = json!({"Document": {"Bytes": page}, "FeatureTypes": ["FORMS"]});
    let scan = item(
        "claim-77",
        "application/x-amz-json-1.1",
        request.to_string().as_bytes(),
        &textract(&fields),
    );
    // Textract's content type is JSON by another name: the record carries it as text, which
    // the console reads as JSON all the same.
    produce(&cluster, &config, &[scan]);
    let console = review_as(&config, &browser, "alice").await;
    browser.find("#input-image").await;
    browser
        .wait_until("document.querySelector('#input-image').naturalWidth === 600")
        .await;
    let keys: Vec<String> = serde_json::from_value(
        browser
            .execute("return [...document.querySelectorAll('.pair .key')].map(k => k.textContent)")
            .await,
    )
    .unwrap();
    assert_eq!(keys, ["Name:", "Policy no.:", "Date:"]);
    let low: Vec<String> = serde_json::from_value(
        browser
            .execute(
                "return [...document.querySelectorAll('.pair.low .key')].map(k => k.textContent)",
            )
            .await,
    )
    .unwrap();
    assert_eq!(
        low,
        ["Policy no.:"],
        "only the pair under 90 % is highlighted"
    );
    assert_eq!(
        browser
            .execute(
                "const [a, b] = [...document.querySelectorAll('.pair')].slice(0, 2); \
                 return getComputedStyle(a).backgroundColor !== getComputedStyle(b).backgroundColor"
            )
            .await,
        true,
        "the highlight is visible"
    );
    assert_eq!(
        browser
            .execute("return document.getElementById('area-2').classList.contains('low')")
            .await,
        true,
        "its box on the page is marked too"
    );
    assert_eq!(
        browser
            .execute("return document.querySelectorAll('svg.overlay rect').length")
            .await,
        6
    );
    let value = browser.find("input[name='value.1']").await;
    assert_eq!(
        value.prop("value").await.unwrap().as_deref(),
        Some("PX-1O42")
    );
    value.clear().await.unwrap();
    value.send_keys("PX-1042").await.unwrap();
    browser.screenshot("console-document.png").await;
    browser.send().await;

    let answer = &completed_answer(&config)["answer"];
    assert_eq!(answer["corrected"], 1);
    assert_eq!(answer["pairs"][1]["key"], "Policy no.:");
    assert_eq!(answer["pairs"][1]["value"], "PX-1042");
    assert_eq!(answer["pairs"][1]["model_value"], "PX-1O42");
    assert_eq!(answer["pairs"][0]["value"], "Dana Smith");

    browser.quit().await;
    console.stop().await.unwrap();
}

/// One second of a 440 Hz tone, 8 kHz 16-bit mono WAV.
fn wav() -> Vec<u8> {
    let rate = 8000u32;
    let samples: Vec<i16> = (0..rate)
        .map(|i| {
            ((i as f64 * 440.0 * std::f64::consts::TAU / f64::from(rate)).sin() * 8000.0) as i16
        })
        .collect();
    let data_len = samples.len() as u32 * 2;
    let mut out = b"RIFF".to_vec();
    out.extend((36 + data_len).to_le_bytes());
    out.extend(b"WAVEfmt ");
    out.extend(16u32.to_le_bytes());
    out.extend(1u16.to_le_bytes()); // PCM
    out.extend(1u16.to_le_bytes()); // mono
    out.extend(rate.to_le_bytes());
    out.extend((rate * 2).to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(16u16.to_le_bytes());
    out.extend(b"data");
    out.extend(data_len.to_le_bytes());
    for sample in samples {
        out.extend(sample.to_le_bytes());
    }
    out
}

#[tokio::test]
async fn an_audio_input_plays_in_the_page_and_its_transcript_is_editable() {
    let Some((browser, cluster, mut config)) = browser_on_mock().await else {
        return;
    };
    add_route(
        &mut config,
        "/invocations",
        "Listen, then correct the transcript word for word.",
    );
    let transcribe = json!({"jobName": "call-7", "results": {
        "transcripts": [{"transcript": "Hello, I'd like to change my delivery address."}],
        "items": []}});
    let call = item("call-7", "audio/wav", &wav(), &transcribe);
    produce(&cluster, &config, &[call]);
    let console = review_as(&config, &browser, "alice").await;
    browser.find("audio#input-audio[controls]").await;
    browser
        .wait_until("document.querySelector('#input-audio').readyState >= 1")
        .await;
    let duration = browser
        .execute("return document.querySelector('#input-audio').duration")
        .await
        .as_f64()
        .unwrap();
    assert!(
        (duration - 1.0).abs() < 0.05,
        "the audio is the one-second WAV: {duration}"
    );
    // A click on the player is the reviewer's gesture that lets it play.
    browser.find("#input-audio").await.click().await.unwrap();
    let played = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1]; \
             const a = document.querySelector('#input-audio'); a.muted = true; \
             a.play().then(() => setTimeout(() => done(a.currentTime), 300), e => done(String(e)))",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        played.as_f64().is_some_and(|t| t > 0.0),
        "it plays: {played}"
    );
    let text = browser.find("textarea[name=text]").await;
    assert_eq!(
        text.prop("value").await.unwrap().as_deref(),
        Some("Hello, I'd like to change my delivery address."),
        "the text template starts from Transcribe's transcript"
    );
    text.clear().await.unwrap();
    text.send_keys("Hello, I'd like to change my billing address.")
        .await
        .unwrap();
    browser.screenshot("console-audio.png").await;
    browser.send().await;
    assert_eq!(
        completed_answer(&config)["answer"],
        json!({"text": "Hello, I'd like to change my billing address."})
    );

    browser.quit().await;
    console.stop().await.unwrap();
}

/// A listener that counts the connections made to it (a script phoning home).
fn phone_home() -> (u16, Arc<AtomicUsize>) {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (port, calls)
}

#[tokio::test]
async fn an_svg_with_a_script_is_never_shown_and_media_is_served_inert() {
    let Some((browser, cluster, mut config)) = browser_on_mock().await else {
        return;
    };
    with_template(&mut config, TemplateKind::Boxes, "");
    let (port, calls) = phone_home();
    let script = format!(
        "window.pwned = 1; document.title = 'pwned'; document.cookie = 'pwned=1'; \
         fetch('http://127.0.0.1:{port}/svg-ran'); new Image().src = 'http://127.0.0.1:{port}/img'"
    );
    let svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"100\" height=\"100\" \
         onload=\"{script}\"><script>{script}</script><rect width=\"100\" height=\"100\"/></svg>"
    );
    let labels = rekognition_labels();
    let mut records = vec![item("svg-body", "image/svg+xml", svg.as_bytes(), &labels)];
    // The same SVG declared a PNG, and in a JSON field as a data URI.
    records.push(item("svg-as-png", "image/png", svg.as_bytes(), &labels));
    let data_uri = format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&svg)
    );
    let json_body = json!({"Image": {"Bytes": data_uri}});
    records.push(item(
        "svg-in-json",
        "application/json",
        json_body.to_string().as_bytes(),
        &labels,
    ));
    records.push(item(
        "png",
        "image/png",
        &png(40, 30, |_, _| IMAGE_COLOUR),
        &labels,
    ));
    produce(&cluster, &config, &records);
    let console = TestConsole::start(&config).await;
    browser.sign_in(&console.url, "alice", None).await;

    for id in ["svg-body", "svg-as-png", "svg-in-json"] {
        browser.goto(&format!("{}/task", console.url)).await;
        assert_eq!(browser.shown_id().await, id);
        let note = browser.text(".media-note").await;
        assert!(
            note.contains("is SVG, which can carry script: it is not shown"),
            "{note}"
        );
        assert_eq!(
            browser
                .execute("return document.querySelectorAll('img, object, embed, iframe').length")
                .await,
            0
        );
        // Opened directly, the media route refuses it.
        browser
            .goto(&format!("{}/media?id={id}", console.url))
            .await;
        assert!(browser.text("body").await.contains("can carry script"));
        assert_eq!(
            browser.execute("return typeof window.pwned").await,
            "undefined"
        );
        assert_eq!(browser.execute("return document.cookie").await, "");
        browser.goto(&format!("{}/task", console.url)).await;
        browser.find("#skip").await.click().await.unwrap();
        browser.wait_path("/task?skipped=1").await;
    }
    assert_eq!(
        browser.execute("return document.title").await,
        "Review · reviewloop"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 0, "no script ever ran");

    // A real image: served with its own type and a policy under which it can do nothing
    // (asked outside the browser: the pages' policy lets no script fetch).
    let mut http = Http::new(&console.url);
    http.sign_in("bob", "").await;
    let (status, headers, _) = http.get("/media?id=png").await;
    assert_eq!(status, 200);
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header("content-type").as_deref(), Some("image/png"));
    assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"));
    assert_eq!(
        header("content-security-policy").as_deref(),
        Some("default-src 'none'; sandbox")
    );
    assert_eq!(
        header("content-disposition").as_deref(),
        Some("attachment; filename=\"input.png\"")
    );
    let (status, headers, _) = http.get("/media?id=svg-as-png").await;
    assert_eq!(status, 415, "the SVG declared a PNG is refused");
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(http.get("/media?id=nonexistent").await.0, 404);
    assert_eq!(
        Http::new(&console.url).get("/media?id=png").await.0,
        303,
        "signed out: sign in first"
    );
    // Shown on the task page all the same (the attachment disposition only stops navigation).
    browser.goto(&format!("{}/task", console.url)).await;
    browser
        .wait_until("document.querySelector('#input-image')?.naturalWidth === 40")
        .await;

    browser.quit().await;
    console.stop().await.unwrap();
}

/// An image server that answers every request with `image` and counts them.
fn image_server(image: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counted.fetch_add(1, Ordering::SeqCst);
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n",
                image.len()
            );
            let _ = stream.write_all(&image);
        }
    });
    (origin, calls)
}

#[tokio::test]
async fn an_image_url_is_loaded_only_from_an_allowed_origin() {
    let Some((browser, cluster, mut config)) = browser_on_mock().await else {
        return;
    };
    with_template(&mut config, TemplateKind::Boxes, "");
    let image = png(40, 30, |_, _| IMAGE_COLOUR);
    let (allowed, allowed_calls) = image_server(image.clone());
    let (elsewhere, elsewhere_calls) = image_server(image);
    config.console.media_origins = vec![allowed.clone()];
    let labels = rekognition_labels();
    let by_url = |id: &str, origin: &str| {
        let body = json!({"url": format!("{origin}/photos/cat.png"), "threshold": 0.5});
        item(id, "application/json", body.to_string().as_bytes(), &labels)
    };
    produce(
        &cluster,
        &config,
        &[by_url("allowed", &allowed), by_url("elsewhere", &elsewhere)],
    );
    let console = review_as(&config, &browser, "alice").await;
    browser
        .wait_until("document.querySelector('#input-image')?.naturalWidth === 40")
        .await;
    assert!(allowed_calls.load(Ordering::SeqCst) >= 1);
    browser.find("#skip").await.click().await.unwrap();
    browser.wait_path("/task?skipped=1").await;
    assert_eq!(browser.shown_id().await, "elsewhere");
    let note = browser.text(".media-note").await;
    assert!(
        note.contains(&format!("{elsewhere}/photos/cat.png")) && note.contains("does not load it"),
        "{note}"
    );
    assert_eq!(
        browser
            .execute("return document.querySelectorAll('#input-image').length")
            .await,
        0
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        elsewhere_calls.load(Ordering::SeqCst),
        0,
        "the browser never fetched it"
    );

    browser.quit().await;
    console.stop().await.unwrap();
}
