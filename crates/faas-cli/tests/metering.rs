//! Metering, pricing, quotas, rate limits and metrics, against a real server.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{ADMIN_KEY, Server};
use reqwest::Method;
use serde_json::{Value, json};

/// The tenant's single charges this month.
async fn records(server: &Server, key: &str) -> Vec<Value> {
    let r = server.get("/api/v1/usage/records?limit=1000", key).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["records"].as_array().expect("records").clone()
}

fn record_of<'a>(records: &'a [Value], id: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no usage record for {id}: {records:?}"))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an unsigned integer: {v}"))
}

#[tokio::test]
async fn cpu_time_is_billed_as_measured() {
    require_root!();
    let server = Server::start().await;
    let key = server.tenant_key("meter").await;
    let busy = server
        .exec_as(
            &key,
            // A second of CPU, however busy the host: the loop counts its own CPU time.
            json!({"language": "python", "code":
                "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0:\n    pass\n"}),
        )
        .await;
    let sleep = server.exec_as(&key, json!({"command": "sleep 1"})).await;
    let all = records(&server, &key).await;
    let busy_cpu = n(&record_of(&all, busy["id"].as_str().expect("id"))["cpu_us"]);
    let sleep_cpu = n(&record_of(&all, sleep["id"].as_str().expect("id"))["cpu_us"]);
    assert!(
        (900_000..=1_100_000).contains(&busy_cpu),
        "a 1 s busy loop was billed {busy_cpu} us of CPU"
    );
    assert!(sleep_cpu < 50_000, "a 1 s sleep was billed {sleep_cpu} us of CPU");
    let sleep_wall = n(&record_of(&all, sleep["id"].as_str().expect("id"))["wall_us"]);
    assert!(sleep_wall >= 1_000_000, "wall time {sleep_wall} us");

    // Another tenant sees none of it; the admin can read it by name.
    let other = server.tenant_key("meter-other").await;
    assert!(records(&server, &other).await.is_empty());
    let as_admin = server.get("/api/v1/usage/current?tenant=meter", ADMIN_KEY).await;
    assert_eq!(as_admin.status, 200, "{}", as_admin.body);
    assert_eq!(n(&as_admin.body["usage"]["records"]), 2);
    let sneaky = server.get("/api/v1/usage/current?tenant=meter", &other).await;
    assert_eq!(sneaky.status, 403, "{}", sneaky.body);
    let bad = server.get("/api/v1/usage?from=yesterday", &key).await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    let bad = server.get("/api/v1/usage?group_by=week", &key).await;
    assert_eq!(bad.status, 422, "{}", bad.body);
}

/// Test prices chosen so that every term is a whole number of pico-units: 10 units per
/// CPU-second, 1 unit per GiB-second (a KiB for a millisecond is 1/1000 of a micro-unit).
const PRICED: &str = "
[pricing]
vcpu_second_micros = 10000000
memory_gb_second_micros = 1048576
[[pricing.discounts]]
from_micros = 0
percent = 0
[[pricing.discounts]]
from_micros = 50000
percent = 10
[[pricing.discounts]]
from_micros = 150000
percent = 25
";

const TIERS: [(u64, u64); 3] = [(0, 0), (50_000, 10), (150_000, 25)];

/// The documented price: compute (CPU and memory) times the mode's percentage, rounded up
/// once to a micro-unit.
fn list_price(r: &Value) -> u64 {
    let percent: u128 = match r["mode"].as_str().expect("mode") {
        "cached" => 80,
        "checkpointed" => 120,
        "branched" => 150,
        "persistent" => 200,
        _ => 100,
    };
    let pico = n(&r["cpu_us"]) as u128 * 10_000_000 + n(&r["memory_kib_ms"]) as u128 * 1000;
    (pico * percent / 100).div_ceil(1_000_000) as u64
}

/// The part of a charge in each tier gets that tier's discount.
fn discounted(before: u64, list: u64) -> u64 {
    let mut discount = 0;
    for (i, (from, percent)) in TIERS.iter().enumerate() {
        let upper = TIERS.get(i + 1).map_or(u64::MAX, |t| t.0);
        let (lo, hi) = (before.max(*from), (before + list).min(upper));
        if hi > lo {
            discount += (hi - lo) * percent / 100;
        }
    }
    list - discount
}

#[tokio::test]
async fn the_cost_of_a_mix_of_calls_is_the_hand_computed_one() {
    require_root!();
    let server = Server::start_with(PRICED).await;
    let key = server.tenant_key("priced").await;
    let mut results = Vec::new();
    for req in [
        json!({"command": "echo one"}),
        json!({"command": "echo two", "mode": "cached"}),
        json!({"language": "python", "code": "print(sum(range(200000)))"}),
        json!({"command": "echo three", "mode": "cached"}),
        json!({"command": "sh -c 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done'"}),
        json!({"command": "true"}),
    ] {
        results.push(server.exec_as(&key, req).await);
    }
    let all = records(&server, &key).await;
    assert_eq!(all.len(), results.len(), "one charge per call: {all:?}");
    let mut before = 0;
    let (mut total_list, mut total_cost) = (0, 0);
    let mut crossed = 0;
    for r in &all {
        // The charge is the execution's measured usage...
        let result = results.iter().find(|x| x["id"] == r["id"]).expect("a call's charge");
        assert_eq!(r["mode"], result["mode"]);
        let cpu_us = (result["usage"]["cpu_ms"].as_f64().expect("cpu") * 1000.0).round() as u64;
        let wall_us = (result["duration_ms"].as_f64().expect("wall") * 1000.0).round() as u64;
        let peak = n(&result["usage"]["peak_memory_bytes"]);
        assert_eq!(n(&r["cpu_us"]), cpu_us, "{r}");
        assert_eq!(n(&r["wall_us"]), wall_us, "{r}");
        assert_eq!(n(&r["memory_kib_ms"]), peak / 1024 * wall_us / 1000, "{r}");
        // ...priced by the list, discounted by the month's spend before it.
        let list = list_price(r);
        assert_eq!(n(&r["list_micros"]), list, "{r}");
        let cost = discounted(before, list);
        assert_eq!(n(&r["cost_micros"]), cost, "record after {before} of spend: {r}");
        if TIERS.iter().any(|(from, _)| *from > before && *from < before + list) {
            crossed += 1;
            assert!(
                cost > list * 75 / 100 && cost < list,
                "a crossing charge is partly discounted"
            );
        }
        before += list;
        total_list += list;
        total_cost += cost;
    }
    assert!(crossed >= 1, "the mix crossed no discount tier (list spend {total_list})");
    let current = server.get("/api/v1/usage/current", &key).await;
    assert_eq!(current.status, 200, "{}", current.body);
    let usage = &current.body["usage"];
    assert_eq!(n(&usage["list_micros"]), total_list);
    assert_eq!(n(&usage["cost_micros"]), total_cost);
    assert_eq!(n(&usage["discount_micros"]), total_list - total_cost);
    let tier = TIERS.iter().rev().find(|(from, _)| *from <= total_list).expect("a tier");
    assert_eq!(n(&current.body["discount_tier"]["percent"]), tier.1);

    // Groups add up to the same total.
    let by_mode = server.get("/api/v1/usage?group_by=mode", &key).await;
    assert_eq!(by_mode.status, 200, "{}", by_mode.body);
    let groups = by_mode.body["groups"].as_array().expect("groups");
    let keys: Vec<&str> = groups.iter().map(|g| g["key"].as_str().expect("key")).collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.contains(&"ephemeral") && keys.contains(&"cached"), "{keys:?}");
    let sum: u64 = groups.iter().map(|g| n(&g["cost_micros"])).sum();
    assert_eq!(sum, total_cost);
    let by_day = server.get("/api/v1/usage?group_by=day", &key).await;
    let day = by_day.body["groups"][0]["key"].as_str().expect("day").to_owned();
    assert_eq!(day.len(), 10, "{day}");

    // A crash loses no charge and bills none twice.
    let mut server = server;
    server.crash_and_restart().await;
    let again = server.get("/api/v1/usage/current", &key).await;
    assert_eq!(n(&again.body["usage"]["cost_micros"]), total_cost);
    assert_eq!(n(&again.body["usage"]["records"]), results.len() as u64);
}

#[tokio::test]
async fn the_concurrent_sandbox_quota_turns_away_the_excess_and_admits_it_after() {
    require_root!();
    let server = Server::start().await;
    let key = server.tenant_key("busy").await;
    let put = |body: Value, as_key: String| {
        let server = &server;
        async move {
            server
                .request(
                    Method::PUT,
                    "/api/v1/tenants/busy/quotas",
                    Some(&as_key),
                    Some(body.to_string()),
                )
                .await
        }
    };
    let denied = put(json!({"max_concurrent_sandboxes": 2}), key.clone()).await;
    assert_eq!(denied.status, 403, "a tenant cannot set its own quotas: {}", denied.body);
    let set = put(json!({"max_concurrent_sandboxes": 2}), ADMIN_KEY.to_owned()).await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(n(&set.body["quotas"]["max_concurrent_sandboxes"]), 2);
    let bad = put(json!({"max_sandboxes": 2}), ADMIN_KEY.to_owned()).await;
    assert_eq!(bad.status, 422, "{}", bad.body);

    let slow = |key: String| {
        let url = format!("{}/api/v1/execute", server.url);
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(key)
                .body(json!({"command": "sleep 5"}).to_string())
                .send()
                .await
                .expect("request")
                .status()
                .as_u16()
        })
    };
    let running = [slow(key.clone()), slow(key.clone())];
    // Both are admitted at once; wait until the server holds them.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let q = server.get("/api/v1/quotas", &key).await;
        if n(&q.body["in_use"]["concurrent_sandboxes"]) == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the runs never started: {}", q.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let excess = server.post("/api/v1/execute", &key, json!({"command": "echo hi"})).await;
    assert_eq!(excess.status, 429, "{}", excess.body);
    assert_eq!(excess.body["error"]["code"], "quota_exceeded");
    let message = excess.body["error"]["message"].as_str().expect("message");
    assert!(message.contains("max_concurrent_sandboxes"), "{message}");
    assert!(excess.headers.contains_key("retry-after"));
    // Another tenant is not held back by this one's quota.
    let other = server.tenant_key("idle").await;
    server.exec_as(&other, json!({"command": "true"})).await;
    // An instance counts as a sandbox too.
    let instance = server.post("/api/v1/instances", &key, json!({})).await;
    assert_eq!(instance.status, 429, "{}", instance.body);
    for run in running {
        assert_eq!(run.await.expect("task"), 200);
    }
    let admitted = server.exec_as(&key, json!({"command": "echo hi"})).await;
    assert_eq!(admitted["stdout"], "hi\n");
    // The rejected calls changed nothing: only three runs were charged.
    assert_eq!(records(&server, &key).await.len(), 3);
}

#[tokio::test]
async fn instance_count_and_spend_caps_answer_403_naming_the_quota() {
    require_root!();
    let server = Server::start_with(PRICED).await;
    let key = server.tenant_key("capped").await;
    let set = server
        .request(
            Method::PUT,
            "/api/v1/tenants/capped/quotas",
            Some(ADMIN_KEY),
            Some(json!({"max_instances": 1, "monthly_spend_cap_micros": 1}).to_string()),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
    // Nothing spent yet: the first call runs, and spends more than the cap.
    server.exec_as(&key, json!({"command": "true"})).await;
    let over = server.post("/api/v1/execute", &key, json!({"command": "true"})).await;
    assert_eq!(over.status, 403, "{}", over.body);
    assert_eq!(over.body["error"]["code"], "quota_exceeded");
    assert!(over.body["error"]["message"].as_str().expect("m").contains("monthly_spend_cap"));
    let lifted = server
        .request(
            Method::PUT,
            "/api/v1/tenants/capped/quotas",
            Some(ADMIN_KEY),
            Some(json!({"max_instances": 1}).to_string()),
        )
        .await;
    assert_eq!(lifted.status, 200, "{}", lifted.body);
    let first = server.post("/api/v1/instances", &key, json!({})).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let second = server.post("/api/v1/instances", &key, json!({})).await;
    assert_eq!(second.status, 403, "{}", second.body);
    assert!(second.body["error"]["message"].as_str().expect("m").contains("max_instances"));
    let status = server.get("/api/v1/quotas", &key).await;
    assert_eq!(n(&status.body["in_use"]["instances"]), 1);
    assert_eq!(n(&status.body["quotas"]["max_instances"]), 1);

    // The instance's life is charged in persistent mode: its CPU, not its execs'. A start
    // it refuses (it runs already) changes nothing.
    let id = first.body["id"].as_str().expect("id");
    let again = server.post(&format!("/api/v1/instances/{id}/start"), &key, json!({})).await;
    assert_eq!(again.status, 409, "{}", again.body);
    let exec = server
        .post(
            &format!("/api/v1/instances/{id}/exec"),
            &key,
            json!({"command": "sh -c 'i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done'"}),
        )
        .await;
    assert_eq!(exec.status, 200, "{}", exec.body);
    let exec_cpu_us = (exec.body["usage"]["cpu_ms"].as_f64().expect("cpu") * 1000.0) as u64;
    let stop = server.post(&format!("/api/v1/instances/{id}/stop"), &key, json!({})).await;
    assert_eq!(stop.status, 200, "{}", stop.body);
    let all = records(&server, &key).await;
    assert!(
        all.iter().all(|r| r["id"] != exec.body["id"]),
        "an instance's exec is not charged twice"
    );
    let instance: Vec<&Value> = all.iter().filter(|r| r["kind"] == "instance").collect();
    assert!(!instance.is_empty(), "{all:?}");
    let cpu: u64 = instance.iter().map(|r| n(&r["cpu_us"])).sum();
    assert!(cpu >= exec_cpu_us * 9 / 10, "instance billed {cpu} us, its exec used {exec_cpu_us}");
    assert!(instance.iter().all(|r| r["mode"] == "persistent" && r["resource"] == id));
    // Periods carry their fractions of a micro-unit: together they cost the whole, rounded
    // up once.
    let pico: u64 = instance
        .iter()
        .map(|r| (n(&r["cpu_us"]) * 10_000_000 + n(&r["memory_kib_ms"]) * 1000) * 2)
        .sum();
    let listed: u64 = instance.iter().map(|r| n(&r["list_micros"])).sum();
    assert_eq!(listed, pico.div_ceil(1_000_000), "{instance:?}");

    // A request that can never fit is refused for good (403), not "try again".
    let set = server
        .request(
            Method::PUT,
            "/api/v1/tenants/capped/quotas",
            Some(ADMIN_KEY),
            Some(json!({"max_memory_mb": 256}).to_string()),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
    let big = server.post("/api/v1/instances", &key, json!({"memory_mb": 512})).await;
    assert_eq!(big.status, 403, "{}", big.body);
    assert!(big.body["error"]["message"].as_str().expect("m").contains("max_memory_mb"));
}

#[tokio::test]
async fn a_burst_above_the_rate_limit_gets_429_with_its_headers() {
    require_root!();
    let server = Server::start_with(
        "[rate_limits.tiers.default]\nper_second = 1\nburst = 3\n\
         [rate_limits.tiers.admin]\nper_second = 100\nburst = 100\n",
    )
    .await;
    let key = server.tenant_key("chatty").await;
    // A burst: the bucket empties (it refills by one a second, so a slow host may see one
    // more answer before the refusal).
    let mut answers = 0;
    let refused = loop {
        let r = server.get("/api/v1/usage/current", &key).await;
        if r.status == 429 {
            break r;
        }
        assert_eq!(r.status, 200, "{}", r.body);
        let header = |name: &str| {
            r.headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
        };
        assert_eq!(header("x-ratelimit-limit"), Some(3));
        assert!(header("x-ratelimit-remaining").is_some_and(|left| left <= 2 - answers.min(2)));
        assert!(header("x-ratelimit-reset").is_some_and(|s| (1..=3).contains(&s)));
        answers += 1;
        assert!(answers <= 5, "a burst of {answers} was never refused");
    };
    assert!(answers >= 3, "refused after {answers}");
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "rate_limited");
    let header =
        |name: &str| refused.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(header("retry-after").as_deref(), Some("1"));
    assert_eq!(header("x-ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(header("x-ratelimit-limit").as_deref(), Some("3"));
    // Another key has a bucket of its own; the first one refills.
    let other = server.tenant_key("quiet").await;
    assert_eq!(server.get("/api/v1/usage/current", &other).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(server.get("/api/v1/usage/current", &key).await.status, 200);
    // An unknown tier is refused when the key is made.
    let bad = server
        .post("/api/v1/keys", ADMIN_KEY, json!({"tenant": "x", "rate_tier": "platinum"}))
        .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
}

/// Parses Prometheus text exposition: every line is a comment or `name{labels} value`.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim_start();
            assert!(
                comment.starts_with("HELP ") || comment.starts_with("TYPE "),
                "bad comment: {line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name: {line}"
        );
        if name_end < series.len() {
            let labels = series[name_end..]
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("bad labels: {line}"));
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("bad label: {line}"));
                assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
                assert!(!v.trim_end_matches('"').contains('"'), "{line}");
            }
        }
        samples.insert(series.to_owned(), value);
    }
    samples
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_with_the_calls() {
    require_root!();
    let server = Server::start().await;
    let key = server.tenant_key("watched").await;
    assert_eq!(server.get("/metrics", &key).await.status, 403, "metrics are for admins");
    let scrape = || async {
        let r = server.get("/metrics", ADMIN_KEY).await;
        assert_eq!(r.status, 200);
        let content_type = r.headers.get("content-type").and_then(|v| v.to_str().ok());
        assert!(content_type.is_some_and(|t| t.starts_with("text/plain")), "{content_type:?}");
        parse_metrics(r.body.as_str().expect("text"))
    };
    let before = scrape().await;
    server.exec_as(&key, json!({"command": "true"})).await;
    server.exec_as(&key, json!({"command": "true", "mode": "cached"})).await;
    server.exec_as(&key, json!({"command": "true", "mode": "cached"})).await;
    let after = scrape().await;
    let moved = |series: &str| {
        after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
    };
    assert_eq!(moved("faas_executions_total{mode=\"ephemeral\"}"), 1.0, "{after:?}");
    assert_eq!(moved("faas_executions_total{mode=\"cached\"}"), 2.0);
    assert_eq!(moved("faas_sandbox_starts_total{mode=\"ephemeral\"}"), 1.0);
    // The first cached call starts one; the pool refills in the background.
    assert!(moved("faas_sandbox_starts_total{mode=\"cached\"}") >= 1.0);
    let hits = moved("faas_pool_checkouts_total{result=\"hit\"}");
    let misses = moved("faas_pool_checkouts_total{result=\"miss\"}");
    assert_eq!(hits + misses, 2.0);
    assert!(misses >= 1.0, "the first cached call finds the pool empty");
    let execute = "{method=\"POST\",route=\"/api/v1/execute\",status=\"200\"}";
    assert_eq!(moved(&format!("faas_http_requests_total{execute}")), 3.0, "{after:?}");
    assert_eq!(moved(&format!("faas_http_request_duration_seconds_count{execute}")), 3.0);
    assert!(after.contains_key(&format!(
        "faas_http_request_duration_seconds_bucket{}",
        "{method=\"POST\",route=\"/api/v1/execute\",status=\"200\",le=\"+Inf\"}"
    )));
    // The route's pattern, never the ids in it.
    server.get("/api/v1/executions/ex_nope", &key).await;
    let last = scrape().await;
    assert!(last.keys().any(|k| k.contains("route=\"/api/v1/executions/{id}\"")));
    assert!(!last.keys().any(|k| k.contains("ex_nope")));
    // Instances running move their gauge.
    let created = server.post("/api/v1/instances", &key, json!({})).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let now = scrape().await;
    assert_eq!(now.get("faas_instances_running").copied(), Some(1.0), "{now:?}");
}

#[tokio::test]
async fn snapshot_storage_is_charged_for_the_bytes_held_over_time() {
    require_root!();
    let server =
        Server::start_with("[metering]\ninterval_secs = 1\nstorage_interval_secs = 1\n").await;
    let key = server.tenant_key("keeper").await;
    let created = server.post("/api/v1/instances", &key, json!({})).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().expect("id").to_owned();
    let stop = server.post(&format!("/api/v1/instances/{id}/stop"), &key, json!({})).await;
    assert_eq!(stop.status, 200, "{}", stop.body);
    let snap = server.post("/api/v1/snapshots", &key, json!({"instance_id": id})).await;
    assert_eq!(snap.status, 201, "{}", snap.body);
    let snap_id = snap.body["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let r = server.get(&format!("/api/v1/snapshots/{snap_id}"), &key).await;
        if let Some(bytes) = r.body["stored_bytes"].as_u64() {
            break bytes;
        }
        assert!(Instant::now() < deadline, "never packed: {}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(stored > 0);
    // The meter charges every second what the tenant holds.
    let deadline = Instant::now() + Duration::from_secs(15);
    let period = loop {
        let all = records(&server, &key).await;
        let full = all.into_iter().find(|r| {
            r["kind"] == "storage"
                && n(&r["storage_kib_ms"]) > 0
                && n(&r["end_ms"]) > n(&r["start_ms"])
        });
        if let Some(r) = full {
            break r;
        }
        assert!(Instant::now() < deadline, "no storage was charged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(period["resource"], "keeper");
    let held_ms = n(&period["end_ms"]) - n(&period["start_ms"]);
    assert_eq!(n(&period["storage_kib_ms"]), stored / 1024 * held_ms, "{period}");
    let quotas = server.get("/api/v1/quotas", &key).await;
    assert_eq!(n(&quotas.body["in_use"]["snapshot_storage_bytes"]), stored);

    // Deleted, the snapshot's chunks are released and its storage stops accruing.
    let deleted = server
        .request(Method::DELETE, &format!("/api/v1/snapshots/{snap_id}"), Some(&key), None)
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    let deadline = Instant::now() + Duration::from_secs(15);
    while n(&server.get("/api/v1/quotas", &key).await.body["in_use"]["snapshot_storage_bytes"]) > 0
    {
        assert!(Instant::now() < deadline, "the chunks were never released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settled = records(&server, &key).await.len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(records(&server, &key).await.len(), settled, "nothing held, nothing charged");
}

#[tokio::test]
async fn bytes_out_through_a_port_proxy_are_charged_as_egress() {
    require_root!();
    let server = Server::start().await;
    let key = server.tenant_key("serving").await;
    let created = server.post("/api/v1/instances", &key, json!({})).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().expect("id").to_owned();
    let path = format!("/api/v1/instances/{id}/exec");
    let exec = |command: &str, background: bool| {
        let body = json!({"command": command, "background": background});
        server.post(&path, &key, body)
    };
    let made =
        exec("mkdir -p /home/user/site && head -c 100000 /dev/zero > /home/user/site/blob", false)
            .await;
    assert_eq!(made.status, 200, "{}", made.body);
    let serve = "cd /home/user/site && exec python3 -m http.server 8000 --bind 127.0.0.1";
    assert_eq!(exec(serve, true).await.status, 202);
    let url = format!("{}/api/v1/instances/{id}/ports/8000/blob", server.url);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = reqwest::Client::new().get(&url).bearer_auth(&key).send().await.expect("get");
        if resp.status() == 200 {
            assert_eq!(resp.bytes().await.expect("body").len(), 100_000);
            break;
        }
        assert!(Instant::now() < deadline, "the server never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stop = server.post(&format!("/api/v1/instances/{id}/stop"), &key, json!({})).await;
    assert_eq!(stop.status, 200, "{}", stop.body);
    let egress: u64 = records(&server, &key)
        .await
        .iter()
        .filter(|r| r["kind"] == "instance")
        .map(|r| n(&r["egress_bytes"]))
        .sum();
    // The body and the response's headers; failed attempts before the server listened
    // sent nothing out of the instance.
    assert!((100_000..102_000).contains(&egress), "egress {egress}");
}
