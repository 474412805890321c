//! The labeling config (pure): which kind of answer a route's tasks ask for, and the Label
//! Studio XML derived for it from the console's settings — the route's instructions and
//! labels, every value XML-escaped (labels come from the configuration, but a config is
//! text someone typed, and an unescaped `"` or `<` would break the project).
//!
//! The control names are the answer's keys, so an annotation becomes the same answer the
//! console publishes: a Choices named `label` gives `{"label": …}`, a TextArea named `text`
//! gives `{"text": …}`, a TextArea named `json` gives the JSON value typed into it.

use crate::console::{ConsoleConfig, TemplateKind};

/// The task data key holding the input the annotator reads.
pub const INPUT_KEY: &str = "text";
/// The task data key holding the model's answer as text (text and JSON tasks).
pub const MODEL_KEY: &str = "model";
/// The object tag every control labels.
pub const INPUT_NAME: &str = "input";

/// What the annotator gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One of the labels: a Choices named `label`.
    Classify,
    /// The corrected text: a TextArea named `text`.
    Text,
    /// The corrected JSON: a TextArea named `json`.
    Json,
}

impl Kind {
    /// The control an annotation of this kind fills.
    pub fn control(self) -> &'static str {
        match self {
            Kind::Classify => "label",
            Kind::Text => "text",
            Kind::Json => "json",
        }
    }
}

/// The kind and labels of `route`'s tasks from the console's settings: `auto` is a classify
/// task when labels are configured (Label Studio's choices are fixed in the project, so the
/// model's own labels cannot stand in for them).
pub fn route_kind(console: &ConsoleConfig, route: &str) -> Result<(Kind, Vec<String>), String> {
    let view = console.route(route);
    let labels = view.labels.to_vec();
    let where_ = if route.is_empty() {
        "console.labels".to_owned()
    } else {
        format!("console.routes.{route:?}.labels (or console.labels)")
    };
    match view.template {
        TemplateKind::Classify | TemplateKind::Auto if !labels.is_empty() => {
            Ok((Kind::Classify, labels))
        }
        // A translation's answer is `{"text": …}` as well.
        TemplateKind::Text | TemplateKind::Translation => Ok((Kind::Text, labels)),
        TemplateKind::Json => Ok((Kind::Json, labels)),
        TemplateKind::Classify => Err(format!(
            "a classify task needs its labels: set {where_}, or give label_studio.label_config"
        )),
        TemplateKind::Boxes | TemplateKind::Document => Err(format!(
            "the console's \"{}\" template has no generated Label Studio config: give \
             label_studio.label_config",
            view.template.as_str()
        )),
        TemplateKind::Entities => Err(
            "the entities template has no derived Label Studio config: give \
             label_studio.label_config (Labels over the text)"
                .to_owned(),
        ),
        TemplateKind::Auto => Err(format!(
            "the console's template is \"auto\" with no labels, which Label Studio cannot show: \
             set {where_}, a template (\"text\" or \"json\"), or label_studio.label_config"
        )),
    }
}

/// The labeling config for `kind`, with `instructions` above the input.
pub fn label_config(kind: Kind, labels: &[String], instructions: &str) -> String {
    let mut xml = String::from("<View>\n");
    if !instructions.trim().is_empty() {
        xml.push_str(&format!(
            "  <Header value=\"{}\"/>\n",
            escape(instructions.trim())
        ));
    }
    xml.push_str(&format!(
        "  <Text name=\"{INPUT_NAME}\" value=\"${INPUT_KEY}\"/>\n"
    ));
    match kind {
        Kind::Classify => {
            xml.push_str(&format!(
                "  <Choices name=\"label\" toName=\"{INPUT_NAME}\" choice=\"single\" showInline=\"true\" required=\"true\">\n"
            ));
            for label in labels {
                xml.push_str(&format!("    <Choice value=\"{}\"/>\n", escape(label)));
            }
            xml.push_str("  </Choices>\n");
        }
        Kind::Text | Kind::Json => {
            let what = if kind == Kind::Text { "text" } else { "JSON" };
            xml.push_str(&format!(
                "  <Header value=\"The model's {what} (correct it below)\"/>\n  <Text name=\"model\" value=\"${MODEL_KEY}\"/>\n"
            ));
            xml.push_str(&format!(
                "  <TextArea name=\"{}\" toName=\"{INPUT_NAME}\" editable=\"true\" maxSubmissions=\"1\" rows=\"6\" required=\"true\"/>\n",
                kind.control()
            ));
        }
    }
    xml.push_str("</View>\n");
    xml
}

/// `s` as an XML attribute value. `$` is escaped too: Label Studio reads `$name` in an
/// attribute as a reference to task data.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '$' => out.push_str("&#36;"),
            '\n' => out.push_str("&#10;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::RouteSettings;

    #[test]
    fn a_classify_config_lists_the_labels_escaped() {
        let labels = vec![
            "billing".to_owned(),
            "R&D \"lab\"".to_owned(),
            "<script>".to_owned(),
        ];
        let xml = label_config(Kind::Classify, &labels, "Pick the team's $queue");
        assert!(xml.starts_with("<View>"), "{xml}");
        assert!(xml.contains("<Header value=\"Pick the team&apos;s &#36;queue\"/>"), "{xml}");
        assert!(xml.contains("<Text name=\"input\" value=\"$text\"/>"), "{xml}");
        assert!(xml.contains("<Choices name=\"label\" toName=\"input\""), "{xml}");
        assert!(xml.contains("<Choice value=\"billing\"/>"), "{xml}");
        assert!(xml.contains("<Choice value=\"R&amp;D &quot;lab&quot;\"/>"), "{xml}");
        assert!(xml.contains("<Choice value=\"&lt;script&gt;\"/>"), "{xml}");
        assert!(!xml.contains("<script>"), "{xml}");
    }

    #[test]
    fn text_and_json_configs_show_the_models_answer_and_a_text_area() {
        let text = label_config(Kind::Text, &[], "");
        assert!(!text.contains("Header value=\"\""), "{text}");
        assert!(text.contains("<Text name=\"model\" value=\"$model\"/>"), "{text}");
        assert!(text.contains("<TextArea name=\"text\" toName=\"input\""), "{text}");
        let json = label_config(Kind::Json, &[], "");
        assert!(json.contains("<TextArea name=\"json\""), "{json}");
    }

    #[test]
    fn the_kind_follows_the_consoles_route_settings() {
        let mut console = ConsoleConfig {
            labels: vec!["a".into(), "b".into()],
            ..ConsoleConfig::default()
        };
        console.routes.insert(
            "chat".into(),
            RouteSettings {
                template: Some(TemplateKind::Text),
                labels: Some(vec![]),
                ..RouteSettings::default()
            },
        );
        console.routes.insert(
            "other".into(),
            RouteSettings {
                labels: Some(vec![]),
                ..RouteSettings::default()
            },
        );
        assert_eq!(
            route_kind(&console, "").unwrap(),
            (Kind::Classify, vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(route_kind(&console, "chat").unwrap().0, Kind::Text);
        let auto = route_kind(&console, "other").unwrap_err();
        assert!(auto.contains("\"auto\" with no labels"), "{auto}");
    }
}
