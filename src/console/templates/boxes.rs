//! `boxes` (also named `moderation`): the input image with each of the model's detections drawn
//! over it — its number, label and confidence — and a confirm/reject choice per detection.
//! Answers `{"detections": [{"label", "confidence", "box", "verdict"}], "rejected": n}`.
//!
//! One template for both: a moderation label is a detection without a box, and the reviewer's
//! job is the same — say which of the model's findings are right. Detections come from
//! Rekognition DetectLabels (`Labels[].Instances[].BoundingBox`, and labels without instances),
//! DetectModerationLabels (`ModerationLabels`), Custom Labels (`CustomLabels[].Geometry`), or
//! the route's `detections` JMESPath for other models.
//!
//! The boxes are an inline `<svg>` over the image whose viewBox is the image's size in pixels:
//! geometry in attributes, looks in the style sheet, no inline style (the policy forbids it).

use maud::{Markup, html};
use serde_json::{Value, json};

use super::{Form, Task, Template};
use crate::console::media;
use crate::console::prediction;

pub struct Boxes;

/// A box in fractions of the image's width and height (Rekognition's BoundingBox).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Area {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

impl Area {
    /// Rekognition's and Textract's `{Left, Top, Width, Height}`.
    pub fn from_bounding_box(value: &Value) -> Option<Area> {
        let get = |key: &str| value.get(key).and_then(Value::as_f64);
        Area {
            left: get("Left")?,
            top: get("Top")?,
            width: get("Width")?,
            height: get("Height")?,
        }
        .checked()
    }

    /// `[xmin, ymin, xmax, ymax]`, or `{left, top, width, height}`: fractions of the image, or
    /// pixels when a number is above 1 and the image's `size` is known.
    fn from_detection(value: &Value, size: Option<(u32, u32)>) -> Option<Area> {
        let area = if let Some(corners) = value.as_array() {
            let n: Vec<f64> = corners.iter().filter_map(Value::as_f64).collect();
            let [x0, y0, x1, y1] = n[..] else { return None };
            Area {
                left: x0,
                top: y0,
                width: x1 - x0,
                height: y1 - y0,
            }
        } else {
            let get = |key: &str| value.get(key).and_then(Value::as_f64);
            match (get("left"), get("top"), get("width"), get("height")) {
                (Some(left), Some(top), Some(width), Some(height)) => Area {
                    left,
                    top,
                    width,
                    height,
                },
                _ => return Area::from_bounding_box(value),
            }
        };
        let pixels = [area.left, area.top, area.width, area.height]
            .iter()
            .any(|v| *v > 1.01);
        match (pixels, size) {
            (true, Some((w, h))) => {
                let (w, h) = (f64::from(w), f64::from(h));
                Area {
                    left: area.left / w,
                    top: area.top / h,
                    width: area.width / w,
                    height: area.height / h,
                }
                .checked()
            }
            _ => area.checked(),
        }
    }

    /// Inside the image, with a size.
    fn checked(self) -> Option<Area> {
        let finite = [self.left, self.top, self.width, self.height]
            .iter()
            .all(|v| v.is_finite());
        (finite
            && self.width > 0.0
            && self.height > 0.0
            && self.left >= -0.01
            && self.top >= -0.01
            && self.left + self.width <= 1.01
            && self.top + self.height <= 1.01)
            .then_some(self)
    }

    pub fn json(&self) -> Value {
        json!({"left": self.left, "top": self.top, "width": self.width, "height": self.height})
    }
}

/// One finding of the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub label: String,
    /// 0–1.
    pub confidence: Option<f64>,
    pub area: Option<Area>,
}

/// The model's detections in its answer; `size` is the image's, for boxes in pixels.
pub fn detections(
    response: &Value,
    expression: Option<&str>,
    size: Option<(u32, u32)>,
) -> Vec<Detection> {
    if let Some(expression) = expression {
        return configured(response, expression, size);
    }
    let percent = |v: &Value| v.get("Confidence").and_then(Value::as_f64).map(|c| c / 100.0);
    let name = |v: &Value| v.get("Name").and_then(Value::as_str).map(str::to_owned);
    let mut found = Vec::new();
    if let Some(labels) = response.get("Labels").and_then(Value::as_array) {
        for label in labels {
            let Some(name) = name(label) else { continue };
            let instances = label.get("Instances").and_then(Value::as_array);
            let boxed: Vec<Detection> = instances
                .into_iter()
                .flatten()
                .filter_map(|instance| {
                    Some(Detection {
                        label: name.clone(),
                        confidence: percent(instance).or_else(|| percent(label)),
                        area: Some(Area::from_bounding_box(instance.get("BoundingBox")?)?),
                    })
                })
                .collect();
            if boxed.is_empty() {
                found.push(Detection {
                    label: name,
                    confidence: percent(label),
                    area: None,
                });
            } else {
                found.extend(boxed);
            }
        }
    }
    for (key, geometry) in [("ModerationLabels", None), ("CustomLabels", Some("Geometry"))] {
        for item in response.get(key).and_then(Value::as_array).into_iter().flatten() {
            let Some(label) = name(item) else { continue };
            let area = geometry
                .and_then(|g| item.get(g)?.get("BoundingBox"))
                .and_then(Area::from_bounding_box);
            // A moderation label names its category: "Suggestive / Swimwear".
            let parent = item.get("ParentName").and_then(Value::as_str).unwrap_or_default();
            let label = if parent.is_empty() || parent == label {
                label
            } else {
                format!("{parent} / {label}")
            };
            found.push(Detection {
                label,
                confidence: percent(item),
                area,
            });
        }
    }
    found
}

fn configured(response: &Value, expression: &str, size: Option<(u32, u32)>) -> Vec<Detection> {
    let Ok(expression) = jmespath::compile(expression) else {
        return Vec::new(); // the config check refuses it
    };
    let Ok(result) = expression.search(response) else {
        return Vec::new();
    };
    let Ok(Value::Array(items)) = serde_json::to_value(&*result) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let label = match item.get("label")? {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Some(Detection {
                label,
                confidence: item
                    .get("score")
                    .and_then(Value::as_f64)
                    .filter(|s| (0.0..=1.0).contains(s)),
                area: item
                    .get("box")
                    .and_then(|area| Area::from_detection(area, size)),
            })
        })
        .collect()
}

fn task_detections(task: &Task<'_>) -> Vec<Detection> {
    prediction::json_of(&task.record.response.payload)
        .map(|body| detections(&body, task.route.media.detections, image_size(task)))
        .unwrap_or_default()
}

/// The input image's size in pixels, when the console serves it and can read its header.
pub fn image_size(task: &Task<'_>) -> Option<(u32, u32)> {
    match media::find(&task.record.request) {
        Some(media::Source::Media(m)) => media::image_size(&m.bytes),
        _ => None,
    }
}

fn percent(confidence: Option<f64>) -> String {
    confidence.map_or(String::new(), |c| format!("{:.0} %", c * 100.0))
}

/// The request's image (of `size` pixels) with `areas` drawn over it, below a note when the
/// request holds none (`what`: "image", "page image").
pub fn image_with_areas<'a>(
    task: &Task<'_>,
    size: Option<(u32, u32)>,
    areas: impl Iterator<Item = (String, Area, String, &'a str)>,
    what: &str,
) -> Markup {
    let overlay = overlay(size, areas);
    html! {
        @if media::find(&task.record.request).is_none() {
            p.media-note.flash.warn { "The request holds no " (what) " this console can show." }
        }
        (media::input_view(task, Some(overlay)))
    }
}

/// The `<svg>` drawn over an image of `size` pixels: one labelled rectangle per area, each a
/// group with its id (the list beside the image points at it) and classes.
pub fn overlay<'a>(
    size: Option<(u32, u32)>,
    areas: impl Iterator<Item = (String, Area, String, &'a str)>,
) -> Markup {
    // Without the image's size, fractions of a 1000-unit square stretched over it: boxes stay
    // right, text would be distorted, so only the list names them.
    let (width, height, text) = match size {
        Some((w, h)) => (f64::from(w), f64::from(h), true),
        None => (1000.0, 1000.0, false),
    };
    let font = (width.max(height) / 36.0).max(10.0);
    html! {
        svg.overlay xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {width} {height}"))
            preserveAspectRatio=(if text { "xMidYMid meet" } else { "none" }) aria-hidden="true" {
            @for (id, area, caption, class) in areas {
                g class=(format!("area {class}")) id=(id) {
                    rect x=(area.left * width) y=(area.top * height)
                        width=(area.width * width) height=(area.height * height) {}
                    @if text {
                        text x=(area.left * width + font * 0.3) y=(area.top * height + font * 1.05)
                            font-size=(font) { (caption) }
                    }
                }
            }
        }
    }
}

impl Template for Boxes {
    fn input(&self, task: &Task<'_>) -> Markup {
        let found = task_detections(task);
        let size = image_size(task);
        let areas = found.iter().enumerate().filter_map(|(i, d)| {
            let caption = format!("{} {} {}", i + 1, d.label, percent(d.confidence));
            Some((format!("area-{}", i + 1), d.area?, caption, "detection"))
        });
        image_with_areas(task, size, areas, "image")
    }

    fn model_answer(&self, task: &Task<'_>) -> Markup {
        let found = task_detections(task);
        html! {
            @if found.is_empty() {
                p.muted { "The model's answer holds no detections this console can read." }
            } @else {
                p { (found.len()) " detection" @if found.len() != 1 { "s" } }
            }
        }
    }

    fn controls(&self, task: &Task<'_>, draft: Option<&Form>) -> Markup {
        let found = task_detections(task);
        html! {
            fieldset.detections {
                legend { "Is each detection right?" }
                @if found.is_empty() { p.muted { "Nothing to confirm: submit to agree that the image shows nothing." } }
                @for (i, detection) in found.iter().enumerate() {
                    @let field = format!("verdict.{i}");
                    @let chosen = draft.and_then(|f| f.get(&field)).unwrap_or("confirmed");
                    div.detection data-area=(format!("area-{}", i + 1)) {
                        span.num { (i + 1) }
                        span.label { (detection.label) }
                        span.score { (percent(detection.confidence)) }
                        @if detection.area.is_none() { span.muted { " (no box)" } }
                        label.verdict.confirm {
                            input type="radio" name=(field) value="confirmed" checked[chosen == "confirmed"];
                            " Right"
                        }
                        label.verdict.reject {
                            input type="radio" name=(field) value="rejected" checked[chosen == "rejected"];
                            " Wrong"
                        }
                    }
                }
            }
        }
    }

    fn answer(&self, task: &Task<'_>, form: &Form) -> Result<Value, String> {
        let found = task_detections(task);
        let mut answered = Vec::with_capacity(found.len());
        for (i, detection) in found.iter().enumerate() {
            let verdict = match form.get(&format!("verdict.{i}")) {
                Some(v @ ("confirmed" | "rejected")) => v,
                _ => return Err(format!("Say whether detection {} is right.", i + 1)),
            };
            answered.push(json!({
                "label": detection.label,
                "confidence": detection.confidence,
                "box": detection.area.map(|a| a.json()),
                "verdict": verdict,
            }));
        }
        let rejected = answered.iter().filter(|d| d["verdict"] == "rejected").count();
        Ok(json!({ "detections": answered, "rejected": rejected }))
    }

    fn keys(&self) -> &'static [(&'static str, &'static str)] {
        &[("1–9", "right/wrong"), ("Enter", "submit"), ("S", "skip")]
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{record, route};
    use super::*;
    use crate::console::config::TemplateKind;

    const REKOGNITION: &str = r#"{"Labels":[
        {"Name":"Dog","Confidence":93.5,"Instances":[
            {"BoundingBox":{"Left":0.1,"Top":0.2,"Width":0.3,"Height":0.4},"Confidence":91.0},
            {"BoundingBox":{"Left":0.6,"Top":0.1,"Width":0.2,"Height":0.2},"Confidence":55.0}]},
        {"Name":"Grass","Confidence":80.0,"Instances":[]}]}"#;

    #[test]
    fn a_request_without_an_image_says_so_and_the_document_names_a_page() {
        let r = record(r#"{"inputs":"a dog"}"#, REKOGNITION);
        let boxes = Boxes
            .input(&Task::new(&r, route(TemplateKind::Boxes, &[])))
            .into_string();
        assert!(
            boxes.contains("The request holds no image this console can show."),
            "{boxes}"
        );
        let page = super::super::template(TemplateKind::Document)
            .input(&Task::new(&r, route(TemplateKind::Document, &[])))
            .into_string();
        assert!(
            page.contains("The request holds no page image this console can show."),
            "{page}"
        );
    }

    #[test]
    fn rekognition_instances_are_boxes_and_labels_without_instances_are_listed() {
        let body: Value = serde_json::from_str(REKOGNITION).unwrap();
        let found = detections(&body, None, None);
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].label, "Dog");
        assert_eq!(found[0].confidence, Some(0.91));
        assert_eq!(
            found[0].area,
            Some(Area {
                left: 0.1,
                top: 0.2,
                width: 0.3,
                height: 0.4
            })
        );
        assert_eq!(found[2].label, "Grass");
        assert_eq!(found[2].area, None);
        let moderation: Value = serde_json::from_str(
            r#"{"ModerationLabels":[{"Name":"Swimwear","ParentName":"Suggestive","Confidence":72.5}]}"#,
        )
        .unwrap();
        let found = detections(&moderation, None, None);
        assert_eq!(found[0].label, "Suggestive / Swimwear");
        assert_eq!(found[0].confidence, Some(0.725));
    }

    #[test]
    fn a_configured_expression_reads_other_models_boxes() {
        let body: Value = serde_json::from_str(
            r#"{"predictions":[{"name":"cat","p":0.8,"xyxy":[0.1,0.1,0.5,0.6]},
                               {"name":"dog","p":0.4,"xyxy":[2,2,1,1]}]}"#,
        )
        .unwrap();
        let expression = "predictions[*].{label: name, score: p, box: xyxy}";
        let found = detections(&body, Some(expression), None);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].label, "cat");
        let area = found[0].area.unwrap();
        assert!((area.width - 0.4).abs() < 1e-9 && (area.height - 0.5).abs() < 1e-9);
        assert_eq!(found[1].area, None, "a box outside the image is not drawn");
        // Pixels (TorchServe, YOLO) become fractions of the image's size.
        let pixels: Value = serde_json::from_str(
            r#"{"predictions":[{"name":"cat","p":0.8,"xyxy":[40,30,200,150]}]}"#,
        )
        .unwrap();
        let area = detections(&pixels, Some(expression), Some((400, 300)))[0]
            .area
            .unwrap();
        assert_eq!((area.left, area.top, area.width, area.height), (0.1, 0.1, 0.4, 0.4));
        assert_eq!(
            detections(&pixels, Some(expression), None)[0].area,
            None,
            "pixels without the image's size cannot be placed"
        );
    }

    #[test]
    fn each_verdict_is_in_the_answer() {
        let r = record(r#"{"inputs":"x"}"#, REKOGNITION);
        let task = Task::new(&r, route(TemplateKind::Boxes, &[]));
        let html = Boxes.controls(&task, None).into_string();
        assert_eq!(html.matches("value=\"confirmed\" checked").count(), 3, "{html}");
        let form = Form(vec![
            ("verdict.0".into(), "confirmed".into()),
            ("verdict.1".into(), "rejected".into()),
            ("verdict.2".into(), "confirmed".into()),
        ]);
        let answer = Boxes.answer(&task, &form).unwrap();
        assert_eq!(answer["rejected"], 1);
        assert_eq!(answer["detections"][1]["verdict"], "rejected");
        assert_eq!(answer["detections"][1]["box"]["left"], 0.6);
        let missing = Form(vec![("verdict.0".into(), "confirmed".into())]);
        assert_eq!(
            Boxes.answer(&task, &missing).unwrap_err(),
            "Say whether detection 2 is right."
        );
    }

    #[test]
    fn labels_in_the_overlay_are_escaped() {
        let areas = [(
            "area-1".to_owned(),
            Area {
                left: 0.0,
                top: 0.0,
                width: 0.5,
                height: 0.5,
            },
            "1 <script>x()</script>".to_owned(),
            "detection",
        )];
        let svg = overlay(Some((200, 100)), areas.into_iter()).into_string();
        assert!(svg.contains("viewBox=\"0 0 200 100\""), "{svg}");
        assert!(svg.contains("<rect x=\"0\" y=\"0\" width=\"100\" height=\"50\">"), "{svg}");
        assert!(svg.contains("&lt;script&gt;"), "{svg}");
        assert!(!svg.contains("style"), "{svg}");
    }
}
