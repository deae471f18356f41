//! Fleet ACME end to end: three real gateway processes sharing one real
//! `redis-server`, behind a real HAProxy in TCP mode (round robin), with the
//! test CA Pebble validating HTTP-01 through the balancer. Each name gets
//! exactly one order, every replica serves the same certificate within a
//! second, a replica killed mid-order hands the order over, and with Redis
//! gone every restarted replica serves from its own copy.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::haproxy::Haproxy;
use common::pebble::Pebble;
use common::redis_server::Redis;
use common::{backend, free_port, handshake_full, series_value, Gateway};
use tenantgate::demo::EchoBackend;

const NAMES: [&str; 3] = ["a.fleet.example", "b.fleet.example", "c.fleet.example"];

fn config(p: &Pebble, pool: &EchoBackend, redis: &str, key: &Path, names: &[&str]) -> String {
    config_with(p, pool, redis, key, names, "")
}

/// [`config`] with `acme` added to `[tls.acme]`.
fn config_with(p: &Pebble, pool: &EchoBackend, redis: &str, key: &Path, names: &[&str], acme: &str) -> String {
    let list: Vec<String> = names.iter().map(|d| format!("{d:?}")).collect();
    format!(
        r#"
[gateway]
http_listen = "{{http}}"
https_listen = "{{https}}"
metrics_listen = "{{metrics}}"
admin_listen = "{{admin}}"

[store]
redis_url = "{redis}"
timeout_ms = 1000
key_file = "{}"
lease_secs = 3

[tls]
issuer = "acme"

[tls.acme]
directory_url = "{}"
ca_root = "{}"
retry_min_secs = 1
retry_max_secs = 2
{}
[pools.p]
upstreams = ["{}"]

[[tenants]]
id = "fleet"
domains = [{}]
pool = "p"

[[admin.tokens]]
name = "ops"
scope = "operator"
sha256 = "{}"
"#,
        key.display(),
        p.directory_url(),
        p.api_ca_pem_path().display(),
        acme,
        pool.addr,
        list.join(", "),
        tenantgate::admin::auth::hash_hex("ops-secret")
    )
}

/// `n` replicas on one Redis behind HAProxy, ordering `names` from Pebble,
/// which validates through the balancer: HTTP-01 on the replicas' plain
/// listeners, or TLS-ALPN-01 on their HTTPS listeners when `acme` says
/// `challenge = "tls-alpn-01"`.
struct Fleet {
    redis: Redis,
    p: Pebble,
    pool: EchoBackend,
    _keys: tempfile::TempDir,
    key: std::path::PathBuf,
    http: Vec<SocketAddr>,
    _lb: Haproxy,
    replicas: Vec<Gateway>,
    root: String,
}

impl Fleet {
    async fn start(n: usize, names: &[&str], acme: &str) -> Fleet {
        let redis = Redis::start();
        let lb: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let alpn = acme.contains("tls-alpn-01");
        let p = if alpn {
            Pebble::start(free_port(), lb.port(), 3600).await
        } else {
            Pebble::start(lb.port(), free_port(), 3600).await
        };
        let pool = backend("pool").await;
        let keys = tempfile::tempdir().expect("dir");
        let key = keys.path().join("store.key");
        std::fs::write(&key, "3f".repeat(32)).expect("key");
        let template = config_with(&p, &pool, &redis.url(), &key, names, acme);
        let addrs = |n: usize| -> Vec<SocketAddr> {
            (0..n)
                .map(|_| format!("127.0.0.1:{}", free_port()).parse().expect("addr"))
                .collect()
        };
        let (http, https) = (addrs(n), addrs(n));
        let lb = Haproxy::start(lb, if alpn { &https } else { &http });
        let mut replicas = Vec::new();
        for (h, s) in http.iter().zip(&https) {
            let dir = tempfile::tempdir().expect("dir");
            replicas.push(Gateway::start_with_listeners(dir, &template, *h, *s, &[]).await);
        }
        let root = p.issuing_root_pem().await;
        Fleet {
            redis,
            p,
            pool,
            _keys: keys,
            key,
            http,
            _lb: lb,
            replicas,
            root,
        }
    }

    fn config(&self, names: &[&str], acme: &str) -> String {
        config_with(&self.p, &self.pool, &self.redis.url(), &self.key, names, acme)
    }
}

fn redis_conn(r: &Redis) -> redis::Connection {
    redis::Client::open(r.url())
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .expect("redis connection")
}

/// Orders sent to the CA, by name, as the replicas counted them.
fn orders(r: &Redis) -> HashMap<String, u64> {
    redis::cmd("HGETALL")
        .arg("tenantgate:{acme}:orders")
        .query(&mut redis_conn(r))
        .expect("orders")
}

/// The leaf `gw` serves for `name`, if it verifies against `root`.
async fn leaf(gw: &Gateway, name: &str, root: &str) -> Option<Vec<u8>> {
    handshake_full(gw.https, Some(name), root.as_bytes())
        .await
        .ok()
        .map(|(_, l)| l)
}

/// Waits until every replica serves one and the same certificate for
/// `name`; returns it and the spread between the first and last replica.
async fn all_serve(replicas: &[&Gateway], name: &str, root: &str, p: &Pebble) -> (Vec<u8>, Duration) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen: Vec<Option<(Vec<u8>, Instant)>> = vec![None; replicas.len()];
    loop {
        for (i, gw) in replicas.iter().enumerate() {
            if seen[i].is_none() {
                if let Some(l) = leaf(gw, name, root).await {
                    seen[i] = Some((l, Instant::now()));
                }
            }
        }
        if seen.iter().all(Option::is_some) {
            break;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = replicas.iter().map(|g| g.log()).collect();
            panic!(
                "{name} not served by every replica: {:?}\n{}\npebble:\n{}",
                seen.iter().map(Option::is_some).collect::<Vec<_>>(),
                logs.join("\n-----\n"),
                p.pebble_log()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen: Vec<(Vec<u8>, Instant)> = seen.into_iter().flatten().collect();
    for (l, _) in &seen {
        assert_eq!(l, &seen[0].0, "{name}: replicas serve different certificates");
    }
    let first = seen.iter().map(|(_, t)| *t).min().expect("first");
    let last = seen.iter().map(|(_, t)| *t).max().expect("last");
    (seen[0].0.clone(), last - first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_haproxy_share_orders_challenges_and_certificates() {
    let f = Fleet::start(3, &NAMES, "").await;
    let Fleet {
        mut redis,
        p,
        pool,
        key,
        http,
        replicas,
        root,
        ..
    } = f;

    // Every replica serves the same certificate for each name, within a
    // second of the first one serving it, and the CA saw one order per name.
    let mut leaves = HashMap::new();
    for name in NAMES {
        let all: Vec<&Gateway> = replicas.iter().collect();
        let (l, spread) = all_serve(&all, name, &root, &p).await;
        assert!(spread <= Duration::from_secs(1), "{name}: spread {spread:?}");
        leaves.insert(name, l);
    }
    let counted = orders(&redis);
    for name in NAMES {
        assert_eq!(counted.get(name), Some(&1), "one order for {name}: {counted:?}");
    }
    // A name every replica holds, made due again on each (an operator's
    // retry): the fleet's copy is not due, so nobody orders, and every
    // replica keeps serving the one certificate.
    for gw in &replicas {
        let r = gw
            .admin_call(
                "POST",
                "/v1/domains/a.fleet.example/retry",
                Some("ops-secret"),
                None,
                &[],
            )
            .await;
        assert_eq!(r.status, 200, "retry: {:?}", r.json);
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(orders(&redis), counted, "no order for a name the fleet holds");
    for (i, gw) in replicas.iter().enumerate() {
        let l = leaf(gw, "a.fleet.example", &root).await;
        assert!(
            l.as_ref() == leaves.get("a.fleet.example"),
            "replica {i} still serves the fleet's a"
        );
    }
    // At rest in Redis the private key is sealed: no PEM key, not the
    // replica's key file bytes either.
    let mut c = redis_conn(&redis);
    let sealed: Vec<u8> = redis::cmd("HGET")
        .arg("tenantgate:{acme}:cert:a.fleet.example")
        .arg("key")
        .query(&mut c)
        .expect("sealed key");
    assert!(sealed.len() > 100);
    assert!(!String::from_utf8_lossy(&sealed).contains("PRIVATE KEY"));
    let on_disk = std::fs::read_to_string(replicas[1].dir().join("state/certs/a.fleet.example.pem")).expect("copy");
    assert!(on_disk.contains("PRIVATE KEY"), "each replica keeps a usable copy");

    // A new name, known first to replica 0 only: it takes the lease and
    // orders; killed mid-order, the lease lapses and another replica
    // finishes the order.
    let more: Vec<&str> = NAMES.iter().copied().chain(["d.fleet.example"]).collect();
    let template2 = config(&p, &pool, &redis.url(), &key, &more);
    replicas[0].write_config(&template2);
    let deadline = Instant::now() + Duration::from_secs(20);
    let holder = loop {
        let held: Option<String> = redis::cmd("GET")
            .arg("tenantgate:{acme}:lease:d.fleet.example")
            .query(&mut c)
            .expect("lease");
        if let Some(h) = held {
            break h;
        }
        assert!(Instant::now() < deadline, "no lease taken\n{}", replicas[0].log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    replicas[0].signal("KILL");
    assert!(
        holder.starts_with(&format!("{}-", replicas[0].pid())),
        "replica 0 holds the order: {holder}"
    );
    let stored: bool = redis::cmd("HEXISTS")
        .arg("tenantgate:{acme}:certs")
        .arg("d.fleet.example")
        .query(&mut c)
        .expect("hexists");
    assert!(!stored, "killed before its order finished");
    for gw in &replicas[1..] {
        gw.write_config(&template2);
    }
    let survivors: Vec<&Gateway> = replicas[1..].iter().collect();
    let (d_leaf, spread) = all_serve(&survivors, "d.fleet.example", &root, &p).await;
    assert!(spread <= Duration::from_secs(1), "d: spread {spread:?}");
    // The successor's order, and the dead replica's if it got as far as
    // sending one (after taking the lease it first spends from the fleet's
    // order budget, so the kill may come before).
    let d_orders = orders(&redis).get("d.fleet.example").copied();
    assert!(
        matches!(d_orders, Some(1 | 2)),
        "the successor's order (and the dead replica's): {d_orders:?}"
    );
    leaves.insert("d.fleet.example", d_leaf);

    // Redis gone, every replica restarted: each serves its own copies.
    let counted_before = orders(&redis);
    redis.kill();
    let mut restarted = Vec::new();
    let before: Vec<String> = replicas.iter().map(|g| g.log()).collect();
    for (gw, h) in replicas.into_iter().zip(&http) {
        let dir = gw.stop();
        restarted.push(Gateway::start_with_http(dir, &template2, *h).await);
    }
    for (i, gw) in restarted.iter().enumerate() {
        for name in more.iter().filter(|n| i > 0 || **n != "d.fleet.example") {
            let served = leaf(gw, name, &root)
                .await
                .unwrap_or_else(|| panic!("replica {i} does not serve {name} with Redis down\n{}", gw.log()));
            assert!(
                served == leaves[name],
                "replica {i}, {name}: not its last-known-good copy; orders {counted_before:?}\n{}\n-----before the restart:\n{}",
                gw.log(),
                before[i]
            );
        }
    }
}

/// Waits (at most 30 s) until `gw`'s log holds `needle`.
async fn wait_log(gw: &Gateway, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gw.log().contains(needle) {
        assert!(Instant::now() < deadline, "no {needle:?} in the log:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stored_in_redis(c: &mut redis::Connection, name: &str) -> (bool, bool) {
    let cert: bool = redis::cmd("EXISTS")
        .arg(format!("tenantgate:{{acme}}:cert:{name}"))
        .query(c)
        .expect("exists");
    let indexed: bool = redis::cmd("HEXISTS")
        .arg("tenantgate:{acme}:certs")
        .arg(name)
        .query(c)
        .expect("hexists");
    (cert, indexed)
}

/// A replica whose main file drops a name leaves the fleet's copy to the
/// replicas that still serve it; the last replica to drop it deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_dropped_by_one_replica_keeps_its_fleet_copy_until_the_last_drops_it() {
    let both = ["a.keep.example", "b.keep.example"];
    let mut f = Fleet::start(2, &both, "").await;
    let template = f.config(&both, "");
    let only_a = f.config(&["a.keep.example"], "");
    let http1 = f.http[1];
    let (redis, p, root) = (&f.redis, &f.p, f.root.clone());
    let replicas = &mut f.replicas;
    let all: Vec<&Gateway> = replicas.iter().collect();
    let (b_leaf, _) = all_serve(&all, "b.keep.example", &root, p).await;
    all_serve(&all, "a.keep.example", &root, p).await;
    let mut c = redis_conn(redis);
    assert_eq!(stored_in_redis(&mut c, "b.keep.example"), (true, true));

    // Replica 0 drops b: it stops serving it and deletes its own files,
    // but replica 1 still serves b, so the fleet's copy stays.
    replicas[0].write_config(&only_a);
    wait_log(&replicas[0], "other replicas still serve it").await;
    assert_eq!(
        stored_in_redis(&mut c, "b.keep.example"),
        (true, true),
        "the copy replica 1 serves is kept\n{}",
        replicas[0].log()
    );
    assert!(!replicas[0].dir().join("state/certs/b.keep.example.pem").exists());
    assert!(
        leaf(&replicas[0], "b.keep.example", &root).await.is_none(),
        "replica 0 no longer serves b"
    );
    assert_eq!(leaf(&replicas[1], "b.keep.example", &root).await, Some(b_leaf.clone()));

    // Replica 1 restarts (a new process; the id of its wanted set is kept
    // in its state dir): it still serves b, and no new order was sent.
    let dir = replicas.remove(1).stop();
    replicas.push(Gateway::start_with_http(dir, &template, http1).await);
    wait_log(&replicas[1], "certificates loaded").await;
    assert_eq!(leaf(&replicas[1], "b.keep.example", &root).await, Some(b_leaf));
    assert_eq!(orders(redis).get("b.keep.example"), Some(&1), "one order for b");

    // Now the last replica drops b: the fleet's copy goes.
    replicas[1].write_config(&only_a);
    wait_log(&replicas[1], "no replica serves the name any more").await;
    assert_eq!(stored_in_redis(&mut c, "b.keep.example"), (false, false));
    // a was never dropped: still stored.
    assert_eq!(stored_in_redis(&mut c, "a.keep.example"), (true, true));
}

/// The ACME state a replica shows for `name` (`GET /v1/domains/{name}`).
async fn acme_state(gw: &Gateway, name: &str) -> serde_json::Value {
    let r = gw
        .admin_call("GET", &format!("/v1/domains/{name}"), Some("ops-secret"), None, &[])
        .await;
    r.json["certificate"]["acme"].clone()
}

/// The CA's order budgets hold for the whole fleet: with a budget of two
/// first orders per registered domain, two replicas send two orders for
/// four names, not two each; the other names queue on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_budgets_are_shared_by_the_fleet() {
    let names = [
        "a.budget.example",
        "b.budget.example",
        "c.budget.example",
        "d.budget.example",
    ];
    let f = Fleet::start(2, &names, "budget_per_registered_domain = 2\n").await;
    let mut c = redis_conn(&f.redis);
    // Two names get certificates; the other two queue on both replicas.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (served, queued) = loop {
        let mut served = Vec::new();
        let mut queued = Vec::new();
        for name in names {
            let mut states = Vec::new();
            for gw in &f.replicas {
                states.push(acme_state(gw, name).await["state"].as_str().unwrap_or("").to_string());
            }
            if states.iter().all(|s| s == "valid") {
                served.push(name);
            } else if states.iter().all(|s| s == "queued") {
                queued.push(name);
            }
        }
        if served.len() + queued.len() == names.len() {
            break (served, queued);
        }
        assert!(
            Instant::now() < deadline,
            "served {served:?}, queued {queued:?}\n{}\n-----\n{}",
            f.replicas[0].log(),
            f.replicas[1].log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(served.len(), 2, "served {served:?}, queued {queued:?}");
    for name in &served {
        let all: Vec<&Gateway> = f.replicas.iter().collect();
        all_serve(&all, name, &f.root, &f.p).await;
    }
    // Two orders reached the CA in all, one per served name.
    let counted = orders(&f.redis);
    assert_eq!(counted.values().sum::<u64>(), 2, "{counted:?}");
    for name in &queued {
        assert!(leaf(&f.replicas[0], name, &f.root).await.is_none());
        // Queued until the oldest order leaves the 7-day window.
        let next: jiff::Timestamp = acme_state(&f.replicas[1], name).await["next_attempt"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .expect("next_attempt");
        let ahead = next.as_second() - jiff::Timestamp::now().as_second();
        assert!(
            ahead > 6 * 86_400 && ahead <= 7 * 86_400,
            "{name}: next attempt in {ahead} s"
        );
    }
    let spent: u64 = redis::cmd("ZCARD")
        .arg("tenantgate:{acme}:budget:domain:budget.example")
        .query(&mut c)
        .expect("zcard");
    assert_eq!(spent, 2);
}

/// TLS-ALPN-01 in a fleet: the CA's validator connects through the
/// balancer to any replica's HTTPS listener, and every replica answers with
/// the challenge certificate the ordering replica shared through Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_challenges_are_answered_by_every_replica() {
    let f = Fleet::start(3, &NAMES, "challenge = \"tls-alpn-01\"\n").await;
    let all: Vec<&Gateway> = f.replicas.iter().collect();
    for name in NAMES {
        let (_, spread) = all_serve(&all, name, &f.root, &f.p).await;
        assert!(spread <= Duration::from_secs(1), "{name}: spread {spread:?}");
    }
    // Each name validated on the first order, wherever the CA's
    // connections landed.
    let counted = orders(&f.redis);
    for name in NAMES {
        assert!(
            counted.get(name) == Some(&1),
            "one order for {name}: {counted:?}\n{}\npebble:\n{}",
            f.replicas.iter().map(|g| g.log()).collect::<Vec<_>>().join("\n-----\n"),
            f.p.pebble_log()
        );
    }
    let series = "tenantgate_tls_handshakes_total{result=\"acme_tls_alpn\"}";
    let mut answered = Vec::new();
    for gw in &f.replicas {
        answered.push(series_value(&gw.metrics_text().await, series).unwrap_or(0.0));
    }
    assert!(answered.iter().sum::<f64>() >= NAMES.len() as f64, "{answered:?}");
    // Every replica held every name's challenge certificate (where the
    // balancer sent the CA's connections depends on its health checks).
    for gw in &f.replicas {
        let log = gw
            .log_with(&["TLS-ALPN-01 challenge certificate from the fleet installed"])
            .await;
        for name in NAMES {
            assert!(
                log.lines()
                    .any(|l| l.contains("challenge certificate from the fleet installed") && l.contains(name)),
                "{name}'s challenge certificate not installed on every replica\n{log}"
            );
        }
    }
    // Nothing is left in Redis once the orders are done.
    let left: Vec<String> = redis::cmd("SMEMBERS")
        .arg("tenantgate:{acme}:alpns")
        .query(&mut redis_conn(&f.redis))
        .expect("smembers");
    assert!(left.is_empty(), "{left:?}");
}

/// A first order that fails issues nothing, so it gives the registered
/// domain's budget its share back (the CA counts certificates per
/// registered domain; it counts orders per account, and that share stays
/// spent): with a budget of one, a name whose validation failed is
/// certified once its DNS is fixed, not queued for a week.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_order_gives_the_domain_budget_back() {
    let f = Fleet::start(2, &["ok.other.example"], "budget_per_registered_domain = 1\n").await;
    let all: Vec<&Gateway> = f.replicas.iter().collect();
    all_serve(&all, "ok.other.example", &f.root, &f.p).await;
    // The CA's validator is sent where nothing listens.
    f.p.add_a_record("bad.refund.example", "127.0.0.3").await;
    let names = ["ok.other.example", "bad.refund.example"];
    let template = f.config(&names, "budget_per_registered_domain = 1\n");
    for gw in &f.replicas {
        gw.write_config(&template);
    }
    let mut c = redis_conn(&f.redis);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let failures: Vec<u64> = {
            let mut v = Vec::new();
            for gw in &f.replicas {
                v.push(
                    acme_state(gw, "bad.refund.example").await["failures"]
                        .as_u64()
                        .unwrap_or(0),
                );
            }
            v
        };
        if failures.iter().any(|n| *n >= 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed order\n{}\n-----\n{}",
            f.replicas[0].log(),
            f.replicas[1].log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counted = orders(&f.redis);
    assert!(
        counted.get("bad.refund.example").is_some_and(|n| *n >= 1),
        "{counted:?}"
    );
    let domain: u64 = redis::cmd("ZCARD")
        .arg("tenantgate:{acme}:budget:domain:refund.example")
        .query(&mut c)
        .expect("zcard");
    assert_eq!(domain, 0, "the failed order's domain share is given back");
    let accounts: Vec<String> = redis::cmd("KEYS")
        .arg("tenantgate:{acme}:budget:account:*")
        .query(&mut c)
        .expect("keys");
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    let account: u64 = redis::cmd("ZCARD").arg(&accounts[0]).query(&mut c).expect("zcard");
    assert!(account >= 2, "the account's orders stay counted: {account}");
    // DNS fixed: the next attempt is certified, within the budget of one.
    f.p.clear_a_record("bad.refund.example").await;
    all_serve(&all, "bad.refund.example", &f.root, &f.p).await;
    let spent: u64 = redis::cmd("ZCARD")
        .arg("tenantgate:{acme}:budget:domain:refund.example")
        .query(&mut c)
        .expect("zcard");
    assert_eq!(spent, 1);
}
