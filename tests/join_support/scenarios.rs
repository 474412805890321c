//! The joiner's behaviour, written once and run over the mock cluster (`join_mock.rs`) and a
//! real broker (`join_broker.rs`).

use std::collections::BTreeSet;
use std::time::Duration;

use reviewloop::config::Agreement;
use serde_json::json;

use super::{Cluster, Joiner, Reader, Schema, duplicates, review_record, shuffle};

const WAIT: Duration = Duration::from_secs(120);

/// N review records and their answers in a shuffled interleaving (answers first for many)
/// give exactly N retraining records, each valid against the schema and carrying its review,
/// and whether the reviewers agreed with the model ("cat" at 0.42: half of them do).
pub async fn any_interleaving_joins_exactly_once(cluster: &Cluster, n: usize, seed: u64) {
    let config = cluster.config();
    let joiner = Joiner::start(&config);
    let producer = cluster.producer();
    enum Event {
        Review(usize),
        Answer(usize),
    }
    let mut events: Vec<Event> = (0..n)
        .flat_map(|i| [Event::Review(i), Event::Answer(i)])
        .collect();
    shuffle(&mut events, seed);
    let answers_first = {
        let mut seen = BTreeSet::new();
        let mut first = 0;
        for event in &events {
            match event {
                Event::Review(i) => {
                    seen.insert(*i);
                }
                Event::Answer(i) if !seen.contains(i) => first += 1,
                Event::Answer(_) => {}
            }
        }
        first
    };
    assert!(answers_first > n / 4, "the shuffle puts many answers first");
    for event in &events {
        match event {
            Event::Review(i) => producer.review(&config, &review_record(&format!("item-{i}"))),
            Event::Answer(i) => producer.answer(
                &config,
                &format!("item-{i}"),
                "alice",
                if i.is_multiple_of(2) { "cat" } else { "dog" },
            ),
        }
    }
    producer.flush();

    let mut reader = Reader::new(&cluster.bootstrap, &config.kafka.retraining_topic);
    assert!(
        reader.read_until(WAIT, |r| r.len() >= n),
        "only {} of {n} retraining records",
        reader.records.len()
    );
    reader.drain(Duration::from_secs(2));
    let counts = reader.counts_by_id();
    assert_eq!(counts.len(), n, "every item once");
    assert!(duplicates(&counts).is_empty(), "{:?}", duplicates(&counts));
    let schema = Schema::load("retraining.schema.json");
    for record in &reader.records {
        schema.assert_valid(record);
        let id = record["id"].as_str().unwrap();
        let i: usize = id.trim_start_matches("item-").parse().unwrap();
        let label = if i.is_multiple_of(2) { "cat" } else { "dog" };
        assert_eq!(record["label"], json!({"label": label}));
        assert_eq!(record["agreement"], 1.0);
        assert_eq!(record["request"]["body"]["inputs"], format!("request {id}"));
        assert_eq!(record["answers"][0]["reviewer"], "alice");
        assert_eq!(record["reasons"], json!(["low_confidence"]));
        assert_eq!(record["model_label"], "cat");
        assert_eq!(record["model_agreed"], label == "cat");
    }
    assert_eq!(
        joiner.metric("reviewloop_retraining_records_total"),
        n as f64
    );
    let cats = n.div_ceil(2) as f64;
    let route = "route=\"/invocations\"";
    for (agreed, count) in [("true", cats), ("false", n as f64 - cats)] {
        assert_eq!(
            joiner.metric(&format!(
                "reviewloop_model_agreement_total{{agreed=\"{agreed}\",reason=\"low_confidence\",{route}}}"
            )),
            count
        );
        assert_eq!(
            joiner.metric(&format!(
                "reviewloop_calibration_total{{agreed=\"{agreed}\",bucket=\"0.4\",{route}}}"
            )),
            count
        );
    }
    assert_eq!(
        joiner.metric("reviewloop_join_answers_total{outcome=\"accepted\"}"),
        n as f64
    );
    assert_eq!(joiner.metric("reviewloop_reviews_pending"), 0.0);
    joiner.stop().await.expect("clean stop");
}

/// Three reviewers, majority: 2 of 3 agreeing gives the label at exactly 2/3; the same reviewer
/// answering twice counts once.
pub async fn majority_of_three(cluster: &Cluster) {
    let mut config = cluster.config();
    config.join.reviewers_per_item = 3;
    config.join.agreement = Agreement::Majority;
    let joiner = Joiner::start(&config);
    let producer = cluster.producer();
    producer.review(&config, &review_record("m-1"));
    producer.answer(&config, "m-1", "alice", "cat");
    producer.answer(&config, "m-1", "alice", "dog"); // alice again: counts once
    producer.answer(&config, "m-1", "bob", "dog");
    producer.answer(&config, "m-1", "carol", "cat");
    // A2I output document for a second item: three workers in one record.
    let a2i = json!({
        "flowDefinitionArn": "arn:aws:sagemaker:us-east-1:111122223333:flow-definition/f",
        "humanLoopName": "m-2",
        "humanAnswers": [
            {"workerId": "w1", "answerContent": {"label": "cow"}, "submissionTime": "2026-11-22T10:00:00.000Z", "timeSpentInSeconds": 4.2},
            {"workerId": "w2", "answerContent": {"label": "cow"}},
            {"workerId": "w3", "answerContent": {"label": "pig"}}
        ],
        "inputContent": {}
    });
    producer.send(
        &config.kafka.completed_topic,
        Some("m-2"),
        a2i.to_string().as_bytes(),
    );
    producer.review(&config, &review_record("m-2"));
    producer.flush();

    let mut reader = Reader::new(&cluster.bootstrap, &config.kafka.retraining_topic);
    assert!(
        reader.read_until(WAIT, |r| r.len() >= 2),
        "{:?}",
        reader.records
    );
    reader.drain(Duration::from_secs(1));
    assert_eq!(reader.records.len(), 2);
    let schema = Schema::load("retraining.schema.json");
    for record in &reader.records {
        schema.assert_valid(record);
        // Exactly 2/3, and the counts it comes from.
        assert_eq!(record["agreement"], 2.0 / 3.0);
        assert_eq!(
            (record["agreeing"].as_u64(), record["answered"].as_u64()),
            (Some(2), Some(3))
        );
        assert_eq!(record["answers"].as_array().unwrap().len(), 3);
        match record["id"].as_str().unwrap() {
            "m-1" => {
                assert_eq!(record["label"], json!({"label": "cat"}));
                let reviewers: Vec<&str> = record["answers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a["reviewer"].as_str().unwrap())
                    .collect();
                assert_eq!(reviewers, ["alice", "bob", "carol"]);
                assert_eq!(record["answers"][0]["answer"], json!({"label": "cat"}));
            }
            "m-2" => {
                assert_eq!(record["label"], json!({"label": "cow"}));
                assert_eq!(record["answers"][0]["reviewer"], "w1");
                assert_eq!(record["answers"][0]["time_spent_seconds"], 4.2);
            }
            other => panic!("unexpected id {other}"),
        }
    }
    assert_eq!(
        joiner.metric("reviewloop_join_answers_total{outcome=\"duplicate\"}"),
        1.0
    );
    joiner.stop().await.expect("clean stop");
}

/// Unanimous with a dissent: a dead letter `no_agreement` pointing at the review record.
pub async fn unanimous_with_a_dissent(cluster: &Cluster) {
    let mut config = cluster.config();
    config.join.reviewers_per_item = 3;
    config.join.agreement = Agreement::Unanimous;
    let joiner = Joiner::start(&config);
    let producer = cluster.producer();
    producer.review(&config, &review_record("u-1"));
    producer.answer(&config, "u-1", "alice", "cat");
    producer.answer(&config, "u-1", "bob", "cat");
    producer.answer(&config, "u-1", "carol", "dog");
    producer.review(&config, &review_record("u-2"));
    for reviewer in ["alice", "bob", "carol"] {
        producer.answer(&config, "u-2", reviewer, "cat");
    }
    producer.flush();

    let mut dead = Reader::new(&cluster.bootstrap, &config.kafka.dead_letter_topic);
    assert!(dead.read_until(WAIT, |r| !r.is_empty()));
    let mut retraining = Reader::new(&cluster.bootstrap, &config.kafka.retraining_topic);
    assert!(retraining.read_until(WAIT, |r| !r.is_empty()));
    dead.drain(Duration::from_secs(1));
    retraining.drain(Duration::from_secs(1));
    assert_eq!(dead.records.len(), 1, "{:?}", dead.records);
    let letter = &dead.records[0];
    Schema::load("dead-letter.schema.json").assert_valid(letter);
    assert_eq!(letter["reason"], "no_agreement");
    assert_eq!(letter["id"], "u-1");
    assert_eq!(letter["source_topic"], config.kafka.review_topic.as_str());
    assert_eq!(
        letter["payload"]["body"]["answers"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(retraining.records.len(), 1);
    assert_eq!(retraining.records[0]["id"], "u-2");
    assert_eq!(retraining.records[0]["agreement"], 1.0);
    assert_eq!(
        joiner.metric("reviewloop_dead_letters_total{reason=\"no_agreement\"}"),
        1.0
    );
    joiner.stop().await.expect("clean stop");
}

/// Garbage on the completed topic (not JSON, no id, wrong shape, 1 MB of noise) becomes dead
/// letters naming where it came from, and the valid answers after it still join.
pub async fn garbage_becomes_dead_letters(cluster: &Cluster) {
    let config = cluster.config();
    let joiner = Joiner::start(&config);
    let producer = cluster.producer();
    let topic = &config.kafka.completed_topic;
    let noise: Vec<u8> = (0..1_000_000u64)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    let garbage: [(&str, Vec<u8>); 4] = [
        ("not json", b"this is not json {".to_vec()),
        (
            "missing id",
            br#"{"reviewer":"alice","answer":{"label":"cat"}}"#.to_vec(),
        ),
        (
            "wrong shape",
            br#"{"id":"g-0","reviewer":["alice"],"answer":1}"#.to_vec(),
        ),
        ("noise", noise.clone()),
    ];
    for partition in 0..super::PARTITIONS {
        for (_, bytes) in &garbage {
            producer.send_to_partition(topic, partition, bytes);
        }
    }
    // A broken review record too: its own dead letter, from the review topic.
    producer.send_to_partition(&config.kafka.review_topic, 0, br#"{"id":"broken-review"}"#);
    for i in 0..30 {
        let id = format!("g-{i}");
        producer.review(&config, &review_record(&id));
        producer.answer(&config, &id, "alice", "cat");
    }
    producer.flush();

    let mut retraining = Reader::new(&cluster.bootstrap, &config.kafka.retraining_topic);
    assert!(
        retraining.read_until(WAIT, |r| r.len() >= 30),
        "{} of 30",
        retraining.records.len()
    );
    let expected_dead = garbage.len() * super::PARTITIONS as usize;
    let mut dead = Reader::new(&cluster.bootstrap, &config.kafka.dead_letter_topic);
    assert!(dead.read_until(WAIT, |r| r.len() > expected_dead));
    dead.drain(Duration::from_secs(1));
    assert_eq!(dead.records.len(), expected_dead + 1);
    let (review_letters, answer_letters): (Vec<_>, Vec<_>) = dead
        .records
        .drain(..)
        .partition(|l| l["source_topic"] == config.kafka.review_topic.as_str());
    assert_eq!(review_letters.len(), 1);
    assert_eq!(review_letters[0]["id"], "broken-review");
    assert_eq!(review_letters[0]["reason"], "invalid");
    assert!(
        review_letters[0]["detail"]
            .as_str()
            .unwrap()
            .contains("not a review record")
    );
    dead.records = answer_letters;
    let schema = Schema::load("dead-letter.schema.json");
    let mut offsets = BTreeSet::new();
    for letter in &dead.records {
        schema.assert_valid(letter);
        assert_eq!(letter["reason"], "invalid");
        assert_eq!(letter["source_topic"], topic.as_str());
        offsets.insert((
            letter["partition"].as_i64().unwrap(),
            letter["offset"].as_i64().unwrap(),
        ));
        let detail = letter["detail"].as_str().unwrap();
        let body = &letter["payload"]["body"];
        if detail.starts_with("not JSON") && body.as_str().is_some_and(|s| s.len() > 10_000) {
            assert!(detail.contains("cut to 65536 of 1000000 bytes"), "{detail}");
        }
    }
    assert_eq!(
        offsets.len(),
        expected_dead,
        "one dead letter per bad record"
    );
    let details: Vec<&str> = dead
        .records
        .iter()
        .map(|l| l["detail"].as_str().unwrap())
        .collect();
    assert!(
        details.iter().any(|d| d.contains("missing \"id\"")),
        "{details:?}"
    );
    assert!(
        details
            .iter()
            .any(|d| d.contains("\"reviewer\" must be a string")),
        "{details:?}"
    );
    // The wrong-shape record names its id.
    assert!(dead.records.iter().any(|l| l["id"] == "g-0"));
    assert_eq!(
        joiner.metric("reviewloop_join_answers_total{outcome=\"invalid\"}"),
        expected_dead as f64
    );
    assert_eq!(
        joiner.metric("reviewloop_dead_letters_total{reason=\"invalid\"}"),
        (expected_dead + 1) as f64
    );
    joiner.stop().await.expect("clean stop");
}

/// A review nobody answers expires; an answer whose review never comes is an orphan.
pub async fn timeouts_give_expired_and_orphan(cluster: &Cluster) {
    let mut config = cluster.config();
    config.join.reviewers_per_item = 2;
    config.join.review_timeout = Duration::from_secs(2);
    config.join.orphan_timeout = Duration::from_secs(2);
    let joiner = Joiner::start(&config);
    let producer = cluster.producer();
    producer.review(&config, &review_record("lonely-review"));
    producer.answer(&config, "lonely-review", "alice", "cat"); // 1 of 2
    producer.answer(&config, "lonely-answer", "bob", "dog");
    producer.flush();

    let mut dead = Reader::new(&cluster.bootstrap, &config.kafka.dead_letter_topic);
    assert!(
        dead.read_until(WAIT, |r| r.len() >= 2),
        "{:?}",
        dead.records
    );
    dead.drain(Duration::from_secs(1));
    assert_eq!(dead.records.len(), 2);
    let schema = Schema::load("dead-letter.schema.json");
    for letter in &dead.records {
        schema.assert_valid(letter);
        match letter["id"].as_str().unwrap() {
            "lonely-review" => {
                assert_eq!(letter["reason"], "expired");
                assert_eq!(letter["source_topic"], config.kafka.review_topic.as_str());
                assert_eq!(
                    letter["payload"]["body"]["answers"][0]["answer"]["label"],
                    "cat"
                );
            }
            "lonely-answer" => {
                assert_eq!(letter["reason"], "orphan");
                assert_eq!(
                    letter["source_topic"],
                    config.kafka.completed_topic.as_str()
                );
                assert_eq!(
                    letter["payload"]["body"]["answers"][0]["answer"]["label"],
                    "dog"
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
    // A late answer to the expired review is a duplicate, not a second dead letter.
    producer.answer(&config, "lonely-review", "bob", "cat");
    producer.flush();
    dead.drain(Duration::from_secs(3));
    assert_eq!(dead.records.len(), 2);
    assert_eq!(joiner.metric("reviewloop_reviews_pending"), 0.0);
    assert_eq!(
        joiner.metric("reviewloop_dead_letters_total{reason=\"expired\"}"),
        1.0
    );
    assert_eq!(
        joiner.metric("reviewloop_dead_letters_total{reason=\"orphan\"}"),
        1.0
    );
    // Each answer counted once, at its final outcome: the orphan's only as `orphan`. The late
    // duplicate is counted when its (output-less) transaction commits.
    let late = "reviewloop_join_answers_total{outcome=\"duplicate\"}";
    let until = std::time::Instant::now() + WAIT;
    while joiner.metric(late) < 1.0 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (outcome, n) in [("accepted", 1.0), ("orphan", 1.0), ("duplicate", 1.0)] {
        assert_eq!(
            joiner.metric(&format!(
                "reviewloop_join_answers_total{{outcome=\"{outcome}\"}}"
            )),
            n,
            "{outcome}"
        );
    }
    joiner.stop().await.expect("clean stop");
}

/// Pending reviews survive a restart: the state comes back from the changelog and the review
/// payloads from their offsets.
pub async fn restart_keeps_pending_reviews(cluster: &Cluster) {
    let config = cluster.config();
    let producer = cluster.producer();
    let first = Joiner::start(&config);
    for i in 0..20 {
        producer.review(&config, &review_record(&format!("p-{i}")));
    }
    // Half the answers now, half after the restart.
    for i in 0..10 {
        producer.answer(&config, &format!("p-{i}"), "alice", "cat");
    }
    producer.flush();
    let mut reader = Reader::new(&cluster.bootstrap, &config.kafka.retraining_topic);
    assert!(reader.read_until(WAIT, |r| r.len() >= 10));
    // Wait until the pending ones are committed in the changelog too.
    let deadline = std::time::Instant::now() + WAIT;
    while first.metric("reviewloop_reviews_pending") < 10.0 && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(first.metric("reviewloop_reviews_pending"), 10.0);
    first.stop().await.expect("clean stop");

    let second = Joiner::start(&config);
    let deadline = std::time::Instant::now() + WAIT;
    while second.metric("reviewloop_reviews_pending") < 10.0 && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        second.metric("reviewloop_reviews_pending"),
        10.0,
        "restored from the changelog"
    );
    for i in 10..20 {
        producer.answer(&config, &format!("p-{i}"), "bob", "dog");
    }
    producer.flush();
    assert!(reader.read_until(WAIT, |r| r.len() >= 20));
    reader.drain(Duration::from_secs(2));
    let counts = reader.counts_by_id();
    assert_eq!(counts.len(), 20);
    assert!(duplicates(&counts).is_empty(), "{:?}", duplicates(&counts));
    for record in &reader.records {
        let id = record["id"].as_str().unwrap();
        assert_eq!(record["request"]["body"]["inputs"], format!("request {id}"));
    }
    assert_eq!(second.metric("reviewloop_reviews_pending"), 0.0);
    second.stop().await.expect("clean stop");
}

/// Two joiners in one group; a second starts mid-stream, the first stops mid-stream, a third
/// starts: every item is joined exactly once across the rebalances.
pub async fn rebalances_lose_and_duplicate_nothing(cluster: &Cluster, n: usize) {
    let config = cluster.config();
    let producer = cluster.producer();
    let mut reader = Reader::new(&cluster.bootstrap, &config.kafka.retraining_topic);
    let send_range = |from: usize, to: usize| {
        for i in from..to {
            let id = format!("r-{i}");
            producer.answer(&config, &id, "alice", "cat");
            producer.review(&config, &review_record(&id));
        }
        producer.flush();
    };
    let a = Joiner::start(&config);
    send_range(0, n / 3);
    assert!(reader.read_until(WAIT, |r| r.len() >= n / 6));
    let b = Joiner::start(&config);
    send_range(n / 3, 2 * n / 3);
    assert!(reader.read_until(WAIT, |r| r.len() >= n / 2));
    // A hands partitions to B. A leaves only once that rebalance is over: tansu (the CI
    // broker) keeps a member that leaves mid-rebalance as the group's leader, and the group
    // then never completes another rebalance. Kafka and the mock cluster have no such wait.
    assert!(
        group_owns_all(&[&a, &b], WAIT).await,
        "A and B never shared the partitions"
    );
    a.stop().await.expect("a stops cleanly");
    send_range(2 * n / 3, n);
    let c = Joiner::start(&config);
    assert!(
        reader.read_until(WAIT, |r| r.len() >= n),
        "{} of {n}",
        reader.records.len()
    );
    reader.drain(Duration::from_secs(3));
    let counts = reader.counts_by_id();
    assert_eq!(counts.len(), n, "every item joined");
    assert!(duplicates(&counts).is_empty(), "{:?}", duplicates(&counts));
    assert!(
        group_owns_all(&[&b, &c], WAIT).await,
        "C never took partitions over from B"
    );
    b.stop().await.expect("b stops cleanly");
    c.stop().await.expect("c stops cleanly");
}

/// Waits until every one of `joiners` owns a partition and together they own them all: the
/// group's last rebalance is complete.
async fn group_owns_all(joiners: &[&Joiner], wait: Duration) -> bool {
    let owned = |j: &&Joiner| j.metric("reviewloop_join_partitions_assigned");
    let deadline = std::time::Instant::now() + wait;
    loop {
        let each: Vec<f64> = joiners.iter().map(owned).collect();
        if each.iter().all(|&p| p > 0.0) && each.iter().sum::<f64>() == f64::from(super::PARTITIONS)
        {
            return true;
        }
        if std::time::Instant::now() > deadline {
            eprintln!("partitions owned: {each:?}");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Many reviews wait (the state holds only their offsets), then all answers come: every join
/// reads its review record back by offset, in runs.
pub async fn pending_backlog_then_answers(cluster: &Cluster, n: usize) {
    let config = cluster.config();
    let joiner = Joiner::start(&config);
    let producer = cluster.producer();
    for i in 0..n {
        producer.review(&config, &review_record(&format!("b-{i}")));
    }
    producer.flush();
    let deadline = std::time::Instant::now() + WAIT;
    while joiner.metric("reviewloop_reviews_pending") < n as f64
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(joiner.metric("reviewloop_reviews_pending"), n as f64);
    // Answers in an order unlike the reviews', so the fetches jump around.
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut order, 99);
    for i in order {
        producer.answer(&config, &format!("b-{i}"), "alice", "cat");
    }
    producer.flush();
    let mut reader = Reader::new(&cluster.bootstrap, &config.kafka.retraining_topic);
    assert!(
        reader.read_until(WAIT, |r| r.len() >= n),
        "{} of {n}",
        reader.records.len()
    );
    reader.drain(Duration::from_secs(1));
    let counts = reader.counts_by_id();
    assert_eq!(counts.len(), n);
    assert!(duplicates(&counts).is_empty());
    for record in &reader.records {
        let id = record["id"].as_str().unwrap();
        assert_eq!(record["request"]["body"]["inputs"], format!("request {id}"));
    }
    assert_eq!(
        joiner.metric("reviewloop_dead_letters_total{reason=\"expired\"}"),
        0.0
    );
    joiner.stop().await.expect("clean stop");
}
