use std::time::Duration;

use super::*;
use crate::confidence::Preset;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_with_env(text, "test.toml", Vec::new()).map(|checked| checked.config)
}

fn load_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::from_toml_with_env(text, "test.toml", env).map(|checked| checked.config)
}

fn problem_keys(err: ConfigError) -> Vec<String> {
    err.problems().into_iter().map(|p| p.key).collect()
}

#[test]
fn empty_file_gives_the_documented_defaults() {
    let config = load("").unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(config.server.listen.port(), 8080);
    assert_eq!(config.join.review_timeout, Duration::from_secs(864_000));
}

#[test]
fn every_mistake_is_reported_not_just_the_first() {
    let err = load(
        r#"
        [server]
        max_in_flight = "many"
        listn = "0.0.0.0:1"
        [review]
        confidence_below = 1.5
        [kafka]
        delivery = "eventually"
        "#,
    )
    .unwrap_err();
    let mut keys = problem_keys(err);
    keys.sort();
    assert_eq!(
        keys,
        [
            "kafka.delivery",
            "review.confidence_below",
            "server.listn",
            "server.max_in_flight"
        ]
    );
    let err = load("[review]\nconfidence_below = 1.5\nsample_percent = 101\n").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("review.confidence_below = 1.5"), "{text}");
    assert!(text.contains("review.sample_percent = 101"), "{text}");
}

#[test]
fn environment_overrides_file_values_with_typed_parsing() {
    let config = load_env(
        "[kafka]\nbrokers = \"file:9092\"\n",
        &[
            ("REVIEWLOOP__KAFKA__BROKERS", "k1:9092,k2:9092"),
            ("REVIEWLOOP__REVIEW__SAMPLE_PERCENT", "12.5"),
            ("REVIEWLOOP__JOIN__GROUP_ID", "123"),
            ("REVIEWLOOP__KAFKA__OPTIONS__COMPRESSION_TYPE", "zstd"),
            ("UNRELATED", "x"),
        ],
    )
    .unwrap();
    assert_eq!(config.kafka.brokers, "k1:9092,k2:9092");
    assert_eq!(config.review.sample_percent, 12.5);
    assert_eq!(config.join.group_id, "123");
    assert_eq!(config.kafka.options["compression.type"], "zstd");
}

#[test]
fn bad_environment_values_are_named_by_their_key() {
    let err = load_env("", &[("REVIEWLOOP__SERVER__MAX_IN_FLIGHT", "lots")]).unwrap_err();
    assert_eq!(problem_keys(err), ["server.max_in_flight"]);
}

#[test]
fn routes_inherit_unset_keys_from_the_top_level() {
    let config = load(
        r#"
        [review]
        sample_percent = 5.0
        [[routes]]
        name = "sentiment"
        path = "/v2/models/{model}/infer"
        review = { confidence_below = 0.9 }
        "#,
    )
    .unwrap();
    let route = &config.routes[0];
    assert_eq!(route.review.confidence_below, 0.9);
    assert_eq!(route.review.sample_percent, 5.0);
    assert_eq!(route.confidence.preset, Preset::Auto);
}

#[test]
fn route_mistakes_name_the_route_index() {
    let err = load(
        r#"
        [[routes]]
        name = "a"
        path = "/a"
        [[routes]]
        name = "a"
        path = "b"
        review = { confidence_below = "low" }
        "#,
    )
    .unwrap_err();
    assert_eq!(
        problem_keys(err),
        [
            "routes[1].review.confidence_below",
            "routes[1].name",
            "routes[1].path"
        ]
    );
}

#[test]
fn sagemaker_needs_an_endpoint_and_jmespath_an_expression() {
    let err = load("[upstream]\nkind = \"sagemaker\"\n[confidence]\npreset = \"jmespath\"\n")
        .unwrap_err();
    assert_eq!(
        problem_keys(err),
        ["upstream.endpoint_name", "confidence.expression"]
    );
    let err =
        load("[upstream]\nkind = \"sagemaker\"\nendpoint_name = \"my_endpoint\"\n").unwrap_err();
    assert!(err.to_string().contains("SageMaker endpoint name"), "{err}");
    load("[upstream]\nkind = \"sagemaker\"\nendpoint_name = \"my-endpoint-2\"\n").unwrap();
    let err = load("[confidence]\npreset = \"jmespath\"\nexpression = \"a[\"\n").unwrap_err();
    assert!(err.to_string().contains("not a valid JMESPath"), "{err}");
}

#[test]
fn a_conditions_file_is_checked_with_the_json_path_of_each_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("conditions.json");
    std::fs::write(
        &file,
        r#"{"Conditions": [{"ConditionType": "Sampling", "ConditionParameters": {"RandomSamplingPercentage": 0}}]}"#,
    )
    .unwrap();
    let text = format!(
        "[review]\nconditions_file = {:?}\n",
        file.display().to_string()
    );
    let err = load(&text).unwrap_err();
    assert_eq!(problem_keys(err), ["review.conditions_file"]);
    let err = load(&text).unwrap_err().to_string();
    assert!(
        err.contains("$.Conditions[0].ConditionParameters.RandomSamplingPercentage"),
        "{err}"
    );
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/conditions.example.json"
    );
    assert!(load(&format!("[review]\nconditions_file = {example:?}\n")).is_ok());
}

#[test]
fn durations_read_as_humans_write_them() {
    let config = load("[join]\nreview_timeout = \"2h 30m\"\norphan_timeout = \"90s\"\n").unwrap();
    assert_eq!(config.join.review_timeout, Duration::from_secs(9000));
    assert_eq!(config.join.orphan_timeout, Duration::from_secs(90));
    let err = load("[server]\nshutdown_grace = \"soon\"\n").unwrap_err();
    assert!(err.to_string().contains("not a duration"), "{err}");
}

#[test]
fn kafka_queue_capacity_stays_within_librdkafkas_range() {
    assert_eq!(
        load("[kafka]\nqueue_capacity = 1\n")
            .unwrap()
            .kafka
            .queue_capacity,
        1
    );
    for bad in ["0", "2147483648"] {
        let err = load(&format!("[kafka]\nqueue_capacity = {bad}\n")).unwrap_err();
        assert_eq!(problem_keys(err), ["kafka.queue_capacity"], "{bad}");
    }
}

#[test]
fn the_kafka_spool_is_off_by_default_and_its_keys_are_checked() {
    let config = load("").unwrap();
    assert_eq!(config.kafka.spool_dir, None);
    let config = load_env(
        "[kafka]\nspool_dir = \"/var/lib/reviewloop/spool\"\nspool_fsync_interval = \"0s\"\n",
        &[("REVIEWLOOP__KAFKA__SPOOL_AFTER", "2s")],
    )
    .unwrap();
    assert_eq!(
        config.kafka.spool_dir.as_deref(),
        Some(std::path::Path::new("/var/lib/reviewloop/spool"))
    );
    assert_eq!(config.kafka.spool_fsync_interval, Duration::ZERO);
    assert_eq!(config.kafka.spool_after, Duration::from_secs(2));
    let err = load("[kafka]\nspool_dir = \"\"\nspool_max_bytes = 1000\nspool_after = \"0s\"\n")
        .unwrap_err();
    assert_eq!(
        problem_keys(err),
        [
            "kafka.spool_dir",
            "kafka.spool_max_bytes",
            "kafka.spool_after"
        ]
    );
}

#[test]
fn secrets_are_redacted_when_printed() {
    let config =
        load("[kafka.options]\n\"sasl.password\" = \"hunter2\"\n\"compression.type\" = \"zstd\"\n")
            .unwrap();
    let shown = config.to_redacted_toml();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("zstd"), "{shown}");
    // The printed config loads back to the same configuration (bar the redaction).
    let again = load(&shown).unwrap();
    assert_eq!(again.server, config.server);
}

#[test]
fn an_unknown_table_is_named_once_and_hides_no_other_problem() {
    let err = load(
        r#"
        [serverr]
        listen = "0.0.0.0:1"
        admin_listen = "0.0.0.0:2"
        [server]
        max_in_flight = 0
        lisen = "0.0.0.0:3"
        [review]
        confidence_below = 1.5
        sample_percent = -1.0
        [kafka]
        delivery = "whenever"
        [join]
        reviewers_per_item = 0
        "#,
    )
    .unwrap_err();
    let problems = err.problems();
    let mut keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "join.reviewers_per_item",
            "kafka.delivery",
            "review.confidence_below",
            "review.sample_percent",
            "server.lisen",
            "server.max_in_flight",
            "serverr",
        ]
    );
    let text = err.to_string();
    assert!(
        text.contains("serverr: unknown table; did you mean `server`?"),
        "{text}"
    );
    assert!(text.contains("did you mean `listen`?"), "{text}");
}

#[test]
fn an_unknown_table_inside_a_route_is_named_with_its_index() {
    let err =
        load("[[routes]]\nname = \"a\"\npath = \"/a\"\n[routes.reveiw]\nsample_percent = 2.0\n")
            .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("routes[0].reveiw: unknown table; did you mean `review`?"),
        "{text}"
    );
}

#[test]
fn target_rate_keys_are_checked_and_inherited_by_routes() {
    let config = load(
        r#"
        [review]
        target_rate = 0.05
        target_half_life = "90s"
        sample_strata = "label"
        [[routes]]
        name = "chat"
        path = "/v1/chat/completions"
        review = { target_warmup = 50 }
        "#,
    )
    .unwrap();
    let route = &config.routes[0].review;
    assert_eq!(route.target_rate, 0.05);
    assert_eq!(route.target_half_life, Duration::from_secs(90));
    assert_eq!(route.target_warmup, 50);
    assert_eq!(route.sample_strata, crate::decision::SampleStrata::Label);
    let err = load(
        r#"
        [review]
        target_rate = 1.5
        target_half_life = "0s"
        sample_strata = "class"
        "#,
    )
    .unwrap_err();
    assert_eq!(
        problem_keys(err),
        [
            "review.sample_strata",
            "review.target_rate",
            "review.target_half_life"
        ]
    );
    // The sketch belongs to the simple keys.
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/conditions.example.json"
    );
    let err = load(&format!(
        "[review]\nconditions_file = {example:?}\ntarget_rate = 0.1\nsample_strata = \"label\"\n"
    ))
    .unwrap_err();
    let text = err.to_string();
    assert_eq!(
        problem_keys(err),
        ["review.target_rate", "review.sample_strata"]
    );
    assert!(text.contains("not with conditions_file"), "{text}");
}

#[test]
fn redact_mistakes_are_all_reported_with_their_paths() {
    let err = load(
        r#"
        [redact]
        fields = [
            { path = "request.customer.email", action = "mask" },
            { path = "body.email", action = "hash" },
        ]
        patterns = ["email", "ssn"]
        custom = { broken = "([a-z" }
        [[routes]]
        name = "r"
        path = "/r"
        [routes.redact]
        fields = []
        patterns = []
        custom = { everything = "x*" }
        hash_key_env = "REVIEWLOOP_TEST_THIS_VARIABLE_IS_NOT_SET"
        "#,
    )
    .unwrap_err();
    let mut keys = problem_keys(err);
    keys.sort();
    assert_eq!(
        keys,
        [
            "redact.custom.broken",
            "redact.fields[1].path",
            "redact.hash_key_file",
            "redact.patterns",
            "routes[0].redact.custom.everything",
            "routes[0].redact.hash_key_env",
        ]
    );
    let err =
        load("[redact]\nfields = [{ path = \"request.a\", action = \"blur\" }]\n").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("redact.fields"), "{text}");
    assert!(text.contains("unknown variant `blur`"), "{text}");
}

#[test]
fn redact_reads_its_key_and_routes_inherit_or_override() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.key");
    std::fs::write(&short, "too short\n").unwrap();
    let err = load(&format!(
        "[redact]\npatterns = [\"email\"]\npattern_action = \"hash\"\nhash_key_file = {:?}\n",
        short.display().to_string()
    ))
    .unwrap_err();
    let text = err.to_string();
    assert_eq!(problem_keys(err), ["redact.hash_key_file"]);
    assert!(text.contains("at least 16"), "{text}");
    assert!(!text.contains("too short"), "the key is shown: {text}");

    let key = dir.path().join("good.key");
    std::fs::write(&key, "a key of thirty-two random bytes\n").unwrap();
    let config = load(&format!(
        r#"
        [redact]
        fields = [{{ path = "request.customer.email", action = "hash" }}]
        patterns = ["email", "credit_card"]
        hash_key_file = {:?}
        [[routes]]
        name = "open"
        path = "/open"
        [routes.redact]
        patterns = []
        "#,
        key.display().to_string()
    ))
    .unwrap();
    let route = &config.routes[0].redact;
    assert!(route.patterns.is_empty());
    assert_eq!(route.fields, config.redact.fields);
    assert_eq!(route.hash_key_file, config.redact.hash_key_file);
}

#[test]
fn the_proxy_runtime_model_and_threads_are_read_checked_and_overridable() {
    use crate::proxy::RuntimeModel;
    let defaults = load("").unwrap().server;
    assert_eq!(defaults.runtime, RuntimeModel::ThreadPerCore);
    assert!(defaults.serving_threads() >= 1, "0 means one per core");
    let config = load("[server]\nruntime = \"multi_thread\"\nthreads = 3\n").unwrap();
    assert_eq!(config.server.runtime, RuntimeModel::MultiThread);
    assert_eq!(config.server.serving_threads(), 3);
    let config = load_env("", &[("REVIEWLOOP__SERVER__RUNTIME", "multi_thread")]).unwrap();
    assert_eq!(config.server.runtime, RuntimeModel::MultiThread);
    let err = load("[server]\nruntime = \"fibers\"\nthreads = 5000\n").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("server.runtime"), "{text}");
    assert!(text.contains("server.threads = 5000"), "{text}");
}
