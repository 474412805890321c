//! The picture or the sound an item is about: found in the review record's request (a whole
//! body that is an image or audio, a base64 string or data URI in a JSON field, a URL), and
//! served to the task page by the console itself from the record (`/media?id=…`).
//!
//! Only raster images (PNG, JPEG, GIF, WebP) and audio (WAV, MP3, Ogg, FLAC, MP4 audio)
//! recognised by their magic bytes are served, with the type the bytes show — never the type
//! the client declared. SVG and HTML can carry script, so they are never shown as an image:
//! the page says what the input is and the media route refuses it. The bytes are served with
//! `nosniff`, `Content-Security-Policy: default-src 'none'; sandbox` and
//! `Content-Disposition: attachment`, so even a browser opening the media URL itself runs
//! nothing. A URL is shown as text unless its origin is in the route's `media_origins`; then
//! the browser fetches it (the page's policy allows those origins for images and audio).

use base64::Engine;
use http::{HeaderValue, Response, StatusCode, header};
use maud::{Markup, html};
use serde_json::Value;

use super::config::TemplateKind;
use super::templates::{Task, payload_view, request_view};
use crate::prediction;
use crate::record::{Encoding, Payload, ReviewRecord};
use crate::upstream::{Body, full_body};

/// The media route's policy: the bytes are a document of their own that may do nothing.
pub const MEDIA_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; sandbox";

/// A base64 string shorter than this is not taken for an image or a sound.
const MIN_BASE64_CHARS: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Image,
    Audio,
}

/// Media the console serves: bytes of a type it recognised.
#[derive(Debug, Clone, PartialEq)]
pub struct Media {
    pub kind: Kind,
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
    /// Where in the request: `""` for the whole body, else the JSON path.
    pub path: String,
}

/// What a request holds to look at or listen to.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Media(Media),
    /// Markup that could run script (SVG, HTML): never shown.
    Refused { path: String, what: &'static str },
    /// A link to media elsewhere, shown as text unless its origin is allowed.
    Url { path: String, url: String, kind: Kind },
}

/// The type of `bytes` by their first bytes, among those the console serves.
pub fn sniff(bytes: &[u8]) -> Option<(Kind, &'static str)> {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    let riff = |form: &[u8]| starts(b"RIFF") && bytes.get(8..12) == Some(form);
    Some(match () {
        () if starts(b"\x89PNG\r\n\x1a\n") => (Kind::Image, "image/png"),
        () if starts(&[0xff, 0xd8, 0xff]) => (Kind::Image, "image/jpeg"),
        () if starts(b"GIF87a") || starts(b"GIF89a") => (Kind::Image, "image/gif"),
        () if riff(b"WEBP") => (Kind::Image, "image/webp"),
        () if riff(b"WAVE") => (Kind::Audio, "audio/wav"),
        () if starts(b"OggS") => (Kind::Audio, "audio/ogg"),
        () if starts(b"fLaC") => (Kind::Audio, "audio/flac"),
        () if starts(b"ID3") => (Kind::Audio, "audio/mpeg"),
        // An MPEG audio frame: 11 sync bits, then a layer that is not "reserved".
        () if bytes.len() > 2 && bytes[0] == 0xff && bytes[1] & 0xe0 == 0xe0 && bytes[1] & 0x06 != 0 => {
            (Kind::Audio, "audio/mpeg")
        }
        () if bytes.get(4..11) == Some(b"ftypM4A") => (Kind::Audio, "audio/mp4"),
        () => return None,
    })
}

/// "SVG" or "HTML" when bytes offered as an image or sound are markup a browser would run
/// script in (an SVG "image", an HTML page declared `image/png`).
fn active_markup(declared: Option<&str>, bytes: &[u8]) -> Option<&'static str> {
    let declared = declared.unwrap_or_default().to_ascii_lowercase();
    if declared.contains("svg") {
        return Some("SVG");
    }
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(1024)]).to_ascii_lowercase();
    let head = head.trim_start_matches('\u{feff}').trim_start();
    if !head.starts_with('<') {
        return None;
    }
    if head.contains("<svg") {
        return Some("SVG");
    }
    // Other markup counts only when it claims to be an image or a sound: an HTML page sent
    // as text to a model is an input like any text, shown (escaped) as text.
    let claims_media = declared.starts_with("image/") || declared.starts_with("audio/");
    (claims_media && (head.contains("<html") || head.starts_with("<!doctype") || head.contains("<script")
        || head.starts_with("<?xml")))
    .then_some("HTML")
}

/// The first image or sound of a request body: the whole body, or the first JSON string that
/// is one (depth first).
pub fn find(payload: &Payload) -> Option<Source> {
    match payload.encoding {
        Encoding::Json => find_in_json(&payload.body, String::new()),
        Encoding::Base64 | Encoding::Utf8 => {
            let bytes = payload.to_bytes()?;
            // JSON under another content type (Textract's `application/x-amz-json-1.1`).
            if payload.encoding == Encoding::Utf8
                && let Ok(value) = serde_json::from_slice::<Value>(&bytes)
                && value.is_object()
            {
                return find_in_json(&value, String::new());
            }
            classify(payload.content_type.as_deref(), bytes, String::new())
        }
    }
}

fn classify(declared: Option<&str>, bytes: Vec<u8>, path: String) -> Option<Source> {
    if let Some((kind, content_type)) = sniff(&bytes) {
        return Some(Source::Media(Media {
            kind,
            content_type,
            bytes,
            path,
        }));
    }
    active_markup(declared, &bytes).map(|what| Source::Refused { path, what })
}

fn find_in_json(value: &Value, path: String) -> Option<Source> {
    match value {
        Value::String(text) => from_string(text, path),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| find_in_json(item, format!("{path}[{i}]"))),
        Value::Object(object) => object.iter().find_map(|(key, item)| {
            let inner = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            find_in_json(item, inner)
        }),
        _ => None,
    }
}

fn from_string(text: &str, path: String) -> Option<Source> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix("data:") {
        let (head, data) = rest.split_once(',')?;
        let declared = head.split(';').next().unwrap_or_default();
        let bytes = if head.ends_with(";base64") {
            decode_base64(data)?
        } else {
            percent_decode(data)
        };
        return classify(Some(declared), bytes, path);
    }
    if text.starts_with("https://") || text.starts_with("http://") {
        let kind = kind_by_extension(text)?;
        return Some(Source::Url {
            path,
            url: text.to_owned(),
            kind,
        });
    }
    // Base64 is ASCII (which also makes the slice below fall on a character boundary).
    if text.len() < MIN_BASE64_CHARS || !text.is_ascii() {
        return None;
    }
    // Look at the first bytes before decoding all of a long string.
    let head = decode_base64(&text[..text.len().min(64) / 4 * 4])?;
    sniff(&head)?;
    classify(None, decode_base64(text)?, path)
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE,
    ];
    engines.iter().find_map(|engine| engine.decode(&compact).ok())
}

fn percent_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

fn kind_by_extension(url: &str) -> Option<Kind> {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let extension = path.rsplit_once('.')?.1.to_ascii_lowercase();
    match extension.as_str() {
        "png" | "jpg" | "jpeg" | "gif" | "webp" => Some(Kind::Image),
        "wav" | "mp3" | "ogg" | "oga" | "flac" | "m4a" => Some(Kind::Audio),
        _ => None,
    }
}

/// `auto` for media tasks: `document` for a Textract answer with form fields, `boxes` for
/// Rekognition detections (labels with boxes, moderation or custom labels) of an image input;
/// `None` leaves the choice to the other templates.
pub fn auto_kind(record: &ReviewRecord) -> Option<TemplateKind> {
    let response = prediction::json_of(&record.response.payload)?;
    let has = |key: &str| response.get(key).and_then(Value::as_array).is_some_and(|a| !a.is_empty());
    let key_values = response
        .get("Blocks")
        .and_then(Value::as_array)
        .is_some_and(|blocks| blocks.iter().any(|b| b["BlockType"] == "KEY_VALUE_SET"));
    if key_values {
        return Some(TemplateKind::Document);
    }
    let boxed_labels = response
        .get("Labels")
        .and_then(Value::as_array)
        .is_some_and(|labels| labels.iter().any(|l| l.get("Instances").is_some()));
    let image = matches!(
        find(&record.request),
        Some(Source::Media(Media { kind: Kind::Image, .. }) | Source::Url { kind: Kind::Image, .. })
    );
    (image && (boxed_labels || has("ModerationLabels") || has("CustomLabels")))
        .then_some(TemplateKind::Boxes)
}

/// `scheme://host[:port]` of an absolute URL, lower-cased.
pub fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    // A host name or address and a port: nothing that could end a CSP source list.
    let host_chars = |c: char| c.is_ascii_alphanumeric() || "-.:[]".contains(c);
    if authority.is_empty() || !authority.chars().all(host_chars) {
        return None;
    }
    Some(format!("{}://{}", scheme.to_ascii_lowercase(), authority.to_ascii_lowercase()))
}

/// Width and height of a PNG, GIF or JPEG image, from its header.
pub fn image_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let be16 = |at: usize| Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?) as u32);
    if bytes.starts_with(b"\x89PNG") {
        let be32 = |at: usize| Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
        return Some((be32(16)?, be32(20)?)).filter(|&(w, h)| w > 0 && h > 0);
    }
    if bytes.starts_with(b"GIF8") {
        let le16 = |at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?) as u32);
        return Some((le16(6)?, le16(8)?)).filter(|&(w, h)| w > 0 && h > 0);
    }
    if bytes.starts_with(&[0xff, 0xd8]) {
        // Walk the segments to a start-of-frame (SOF0–SOF15 but DHT, JPG and DAC).
        let mut at = 2;
        while at + 9 < bytes.len() {
            if bytes[at] != 0xff {
                return None;
            }
            let marker = bytes[at + 1];
            if (0xc0..=0xcf).contains(&marker) && ![0xc4, 0xc8, 0xcc].contains(&marker) {
                return Some((be16(at + 7)?, be16(at + 5)?)).filter(|&(w, h)| w > 0 && h > 0);
            }
            at += 2 + be16(at + 2)? as usize;
        }
    }
    None
}

/// The problems of one route's (or the defaults') media settings, each named by its key.
pub fn check(
    prefix: &str,
    origins: Option<&[String]>,
    detections: Option<&str>,
    highlight_below: Option<f64>,
    bad: &mut impl FnMut(String, String, String),
) {
    for value in origins.unwrap_or_default() {
        let well_formed = (value.starts_with("https://") || value.starts_with("http://"))
            && origin(value).is_some_and(|o| o.eq_ignore_ascii_case(value));
        if !well_formed {
            bad(
                format!("{prefix}media_origins"),
                format!("{value:?}"),
                "an origin is `https://host` or `https://host:port`, without a path".into(),
            );
        }
    }
    if let Some(expression) = detections
        && let Err(e) = jmespath::compile(expression)
    {
        bad(
            format!("{prefix}detections"),
            format!("{expression:?}"),
            format!("not a JMESPath expression: {e}"),
        );
    }
    if let Some(value) = highlight_below
        && !(0.0..=1.0).contains(&value)
    {
        bad(
            format!("{prefix}highlight_below"),
            value.to_string(),
            "a confidence between 0 and 1".into(),
        );
    }
}

/// The address the task page loads an item's media from.
pub fn href(id: &str) -> String {
    format!(
        "/media?id={}",
        form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
    )
}

/// Is `url`'s origin one of `allowed`?
pub fn allowed(url: &str, allowed: &[String]) -> bool {
    origin(url).is_some_and(|origin| allowed.iter().any(|a| a.eq_ignore_ascii_case(&origin)))
}

/// The picture or player of a request, with `overlay` drawn over a picture (boxes); `None`
/// when the request holds neither.
pub fn view(record: &ReviewRecord, origins: &[String], overlay: Option<Markup>) -> Option<Markup> {
    let source = find(&record.request)?;
    let cut = record.truncated;
    Some(match source {
        Source::Media(media) if cut => html! {
            p.media-note.flash.warn {
                "The " (kind_name(media.kind)) " was cut to fit Kafka and cannot be shown: raise \
                 the Kafka message size (message.max.bytes) to review inputs this large."
            }
        },
        Source::Media(media) => element(media.kind, &href(&record.id), media_size(&media), overlay),
        Source::Url { url, kind, .. } if allowed(&url, origins) => element(kind, &url, None, overlay),
        Source::Url { url, kind, path } => html! {
            p.media-note {
                "The " (kind_name(kind)) " is at " code.url { (url) }
                " (field " code { (path) } "). Its address is not among this route's "
                code { "media_origins" } ", so the console does not load it."
            }
        },
        Source::Refused { what, path } => html! {
            p.media-note.flash.warn {
                "The input" @if !path.is_empty() { " (field " code { (path) } ")" } " is "
                (what) ", which can carry script: it is not shown."
            }
        },
    })
}

/// The request as the reviewer sees it: its picture or player (with `overlay` over a
/// picture) above the rest of the body, long strings (the media's base64) shortened; a request
/// without media as [`request_view`] shows it.
pub fn input_view(task: &Task<'_>, overlay: Option<Markup>) -> Markup {
    let record = task.record;
    let Some(shown) = view(record, task.route.media.origins, overlay) else {
        return request_view(task);
    };
    let json = prediction::json_of(&record.request).map(|body| Payload {
        content_type: None,
        encoding: Encoding::Json,
        body,
    });
    let served = matches!(find(&record.request), Some(Source::Media(_)));
    html! {
        (shown)
        // An SVG or a URL not loaded: its text, escaped, is all the reviewer can see of it.
        @if json.is_none() && !served { (payload_view(&record.request, "Request")) }
        @if let Some(request) = &json {
            @for (path, text) in request.text_fields(MAX_TEXT_FIELDS) {
                @if text.len() <= MAX_SHOWN_CHARS || text.contains(' ') {
                    figure.text-field {
                        @if !path.is_empty() { figcaption { (path) } }
                        div.text { (text) }
                    }
                }
            }
            details.raw {
                summary { "Request JSON" }
                pre.json { code { (serde_json::to_string_pretty(&shortened(&request.body)).unwrap_or_default()) } }
            }
        }
    }
}

/// At most this many text fields of a request are shown beside its media.
const MAX_TEXT_FIELDS: usize = 12;
/// Longer strings without a space (base64) are shortened in the request shown.
const MAX_SHOWN_CHARS: usize = 200;

fn shortened(value: &Value) -> Value {
    match value {
        Value::String(text) if text.len() > MAX_SHOWN_CHARS && !text.contains(' ') => {
            let head: String = text.chars().take(40).collect();
            Value::String(format!("{head}… ({} characters)", text.len()))
        }
        Value::Array(items) => Value::Array(items.iter().map(shortened).collect()),
        Value::Object(object) => Value::Object(
            object
                .iter()
                .map(|(k, v)| (k.clone(), shortened(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn media_size(media: &Media) -> Option<(u32, u32)> {
    (media.kind == Kind::Image).then(|| image_size(&media.bytes)).flatten()
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Image => "image",
        Kind::Audio => "audio",
    }
}

fn element(kind: Kind, src: &str, size: Option<(u32, u32)>, overlay: Option<Markup>) -> Markup {
    match kind {
        Kind::Audio => html! {
            figure.media.audio { audio #input-audio controls preload="auto" src=(src) {} }
        },
        Kind::Image => html! {
            figure.media.image {
                div.media-frame {
                    img #input-image src=(src) alt="The input image"
                        width=[size.map(|s| s.0)] height=[size.map(|s| s.1)];
                    @if let Some(overlay) = overlay { (overlay) }
                }
            }
        },
    }
}

/// The media route's answer: the item's media with its real type, or why not.
pub fn response(record: &ReviewRecord) -> Response<Body> {
    let media = match find(&record.request) {
        Some(Source::Media(media)) if !record.truncated => media,
        Some(Source::Refused { .. }) => {
            return refusal(StatusCode::UNSUPPORTED_MEDIA_TYPE, "this input can carry script: not served\n")
        }
        _ => return refusal(StatusCode::NOT_FOUND, "this item has no image or audio to serve\n"),
    };
    let extension = media.content_type.rsplit('/').next().unwrap_or("bin");
    let mut response = Response::new(full_body(media.bytes));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media.content_type),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(MEDIA_CONTENT_SECURITY_POLICY),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"input.{extension}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    // The record does not change: the browser may keep it for this reviewer only.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=600"),
    );
    response
}

fn refusal(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(full_body(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::templates::tests::record_of;

    const PNG_HEAD: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\x01\x90\0\0\x01\x2c\x08\x02\0\0\0";

    /// A record of this request and the model's JSON answer.
    fn record(request: Payload, response: Value) -> ReviewRecord {
        record_of(request, &response.to_string())
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn media_is_recognised_by_its_bytes_not_its_declared_type() {
        assert_eq!(sniff(PNG_HEAD), Some((Kind::Image, "image/png")));
        assert_eq!(sniff(b"RIFF\0\0\0\0WAVEfmt "), Some((Kind::Audio, "audio/wav")));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some((Kind::Image, "image/webp")));
        assert_eq!(sniff(b"ID3\x04"), Some((Kind::Audio, "audio/mpeg")));
        assert_eq!(sniff(b"<svg onload=alert(1)>"), None);
        // A body declared a PNG but holding SVG is refused, not served as the declared type.
        let svg = Payload::from_bytes(Some("image/png"), b"<svg xmlns='x'><script>x()</script></svg>");
        assert_eq!(
            find(&svg),
            Some(Source::Refused {
                path: String::new(),
                what: "SVG"
            })
        );
        let png = Payload::from_bytes(Some("application/octet-stream"), PNG_HEAD);
        match find(&png) {
            Some(Source::Media(media)) => assert_eq!(media.content_type, "image/png"),
            other => panic!("{other:?}"),
        }
        assert_eq!(image_size(PNG_HEAD), Some((400, 300)));
    }

    #[test]
    fn json_fields_hold_base64_data_uris_and_urls() {
        let body = serde_json::json!({
            "FeatureTypes": ["FORMS"],
            "Document": {"Bytes": b64(PNG_HEAD)},
        });
        let payload = Payload::from_bytes(Some("application/json"), body.to_string().as_bytes());
        match find(&payload) {
            Some(Source::Media(media)) => {
                assert_eq!(media.path, "Document.Bytes");
                assert_eq!(media.bytes, PNG_HEAD);
            }
            other => panic!("{other:?}"),
        }
        let svg = format!("data:image/svg+xml;base64,{}", b64(b"<svg><script>x()</script></svg>"));
        let body = serde_json::json!({"inputs": "a caption", "image": svg});
        let payload = Payload::from_bytes(Some("application/json"), body.to_string().as_bytes());
        assert_eq!(
            find(&payload),
            Some(Source::Refused {
                path: "image".into(),
                what: "SVG"
            })
        );
        let body = serde_json::json!({"url": "https://cdn.example.com/a/cat.JPG?v=2"});
        let payload = Payload::from_bytes(Some("application/json"), body.to_string().as_bytes());
        assert_eq!(
            find(&payload),
            Some(Source::Url {
                path: "url".into(),
                url: "https://cdn.example.com/a/cat.JPG?v=2".into(),
                kind: Kind::Image
            })
        );
        let allowed_origins = ["https://cdn.example.com".to_owned()];
        assert!(allowed("https://CDN.example.com/x.png", &allowed_origins));
        assert!(!allowed("https://cdn.example.com.evil.org/x.png", &allowed_origins));
        assert!(!allowed("https://user@cdn.example.com/x.png", &allowed_origins));
        assert_eq!(origin("https://a.example;script-src *"), None);
        // An HTML page sent as text is text; declared an image, it is refused.
        let page = b"<!doctype html><script>x()</script>";
        assert_eq!(find(&Payload::from_bytes(Some("text/html"), page)), None);
        assert_eq!(
            find(&Payload::from_bytes(Some("image/jpeg"), page)),
            Some(Source::Refused {
                path: String::new(),
                what: "HTML"
            })
        );
        // Text of any script is not media (and never cut inside a character).
        let text = serde_json::json!({"inputs": "Größenwahn und Übermut: ein langer Satz, é".repeat(3)});
        let payload = Payload::from_bytes(Some("application/json"), text.to_string().as_bytes());
        assert_eq!(find(&payload), None);
        // Plain text and short strings are not media.
        let text = serde_json::json!({"inputs": "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQ="});
        let payload = Payload::from_bytes(Some("application/json"), text.to_string().as_bytes());
        assert_eq!(find(&payload), None);
    }

    #[test]
    fn auto_shows_rekognition_and_textract_answers_with_their_templates() {
        let image = || Payload::from_bytes(Some("image/png"), PNG_HEAD);
        let labels = serde_json::json!({"Labels": [{"Name": "Dog", "Confidence": 90.0, "Instances": []}]});
        assert_eq!(auto_kind(&record(image(), labels.clone())), Some(TemplateKind::Boxes));
        let moderation = serde_json::json!({"ModerationLabels": [{"Name": "Violence", "Confidence": 70.0}]});
        assert_eq!(auto_kind(&record(image(), moderation)), Some(TemplateKind::Boxes));
        let text = Payload::from_bytes(Some("application/json"), br#"{"inputs":"a dog"}"#);
        assert_eq!(auto_kind(&record(text.clone(), labels)), None, "no image, no boxes");
        let forms = serde_json::json!({"Blocks": [{"BlockType": "KEY_VALUE_SET", "Id": "k"}]});
        assert_eq!(auto_kind(&record(text.clone(), forms)), Some(TemplateKind::Document));
        let classes = serde_json::json!([{"label": "a", "score": 0.5}]);
        assert_eq!(auto_kind(&record(image(), classes)), None);
    }

    #[test]
    fn media_cut_to_fit_kafka_is_not_served() {
        let request = Payload::from_bytes(Some("image/png"), PNG_HEAD);
        let mut record = record(request, Value::Null);
        assert_eq!(response(&record).status(), StatusCode::OK);
        record.truncated = true;
        assert_eq!(response(&record).status(), StatusCode::NOT_FOUND);
        let shown = view(&record, &[], None).unwrap().into_string();
        assert!(shown.contains("cut to fit Kafka"), "{shown}");
        assert!(!shown.contains("<img"), "{shown}");
    }

    #[test]
    fn jpeg_and_gif_sizes_come_from_their_headers() {
        let mut jpeg = vec![0xff, 0xd8, 0xff, 0xe0, 0, 4, 0, 0];
        jpeg.extend([0xff, 0xc0, 0, 11, 8, 0, 30, 0, 40, 3, 0, 0]);
        assert_eq!(image_size(&jpeg), Some((40, 30)));
        assert_eq!(image_size(b"GIF89a\x0a\0\x05\0"), Some((10, 5)));
        assert_eq!(image_size(b"GIF89a"), None);
    }
}
