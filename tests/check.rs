//! `tenantgate check`: every class of bad config is refused with a message
//! naming the file, the tenant(s), the field and every claimant.

mod common;

use std::process::Command;

use common::BIN;

const HEAD: &str = r#"
[gateway]
http_listen = "127.0.0.1:8080"
base_domains = ["saas.example"]

[pools.shared]
upstreams = ["127.0.0.1:9001"]
"#;

fn tenant(id: &str, extra: &str) -> String {
    format!("\n[[tenants]]\nid = \"{id}\"\npool = \"shared\"\n{extra}\n")
}

/// Runs `check` on `text`; returns (exit code, stdout + stderr, file path).
fn check(text: &str) -> (i32, String, String) {
    check_files(text, &[])
}

/// Like [`check`], with more files beside the config (`tenants/a.toml`, …).
fn check_files(text: &str, files: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("routing.toml");
    std::fs::write(&path, text).expect("write");
    for (name, body) in files {
        let file = dir.path().join(name);
        std::fs::create_dir_all(file.parent().expect("folder")).expect("mkdir");
        std::fs::write(file, body).expect("write");
    }
    let out = Command::new(BIN).arg("check").arg(&path).output().expect("run check");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), all, path.display().to_string())
}

/// Asserts the config is refused and every `needle` is in the output, on a
/// line that names the file.
fn refused(text: &str, needles: &[&str]) -> String {
    let (code, out, path) = check(text);
    assert_eq!(code, 1, "want exit 1:\n{out}");
    for n in needles {
        let line = out
            .lines()
            .find(|l| l.contains(n))
            .unwrap_or_else(|| panic!("{n:?} not in:\n{out}"));
        assert!(line.starts_with(&path), "line does not name the file: {line}");
    }
    out
}

#[test]
fn shipped_configs_are_valid() {
    for f in ["config/example.toml", "config/demo.toml"] {
        let out = Command::new(BIN).arg("check").arg(f).output().expect("run check");
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("ok:"));
    }
}

#[test]
fn a_duplicate_in_any_spelling_names_every_claimant() {
    let text = format!(
        "{HEAD}{}{}{}",
        tenant("a", r#"domains = ["bücher.example"]"#),
        tenant("b", r#"domains = ["XN--BCHER-KVA.example."]"#),
        tenant("c", r#"domains = ["Bücher.Example"]"#),
    );
    refused(
        &text,
        &[
            r#"tenants[0].domains[0] and tenants[1].domains[0] and tenants[2].domains[0]: domain xn--bcher-kva.example is claimed by tenants "a", "b", "c""#,
        ],
    );
}

#[test]
fn a_custom_domain_equal_to_another_tenants_platform_host_is_a_duplicate() {
    let text = format!(
        "{HEAD}{}{}",
        tenant("acme", r#"subdomain = "acme""#),
        tenant("evil", r#"domains = ["ACME.saas.example"]"#)
    );
    refused(
        &text,
        &[r#"domain acme.saas.example is claimed by tenants "acme", "evil""#],
    );
    // A tenant may list its own platform host.
    let own = format!(
        "{HEAD}{}",
        tenant("acme", "subdomain = \"acme\"\ndomains = [\"acme.saas.example\"]")
    );
    assert_eq!(check(&own).0, 0);
}

#[test]
fn wildcard_conflicts_are_refused() {
    let text = format!(
        "{HEAD}{}{}{}",
        tenant("a", r#"domains = ["*.shop.example"]"#),
        tenant("b", r#"domains = ["*.Shop.example"]"#),
        tenant("c", r#"domains = ["x.shop.example"]"#),
    );
    refused(
        &text,
        &[
            r#"wildcard *.shop.example is claimed by tenants "a", "b""#,
            r#"domain x.shop.example is under the wildcard *.shop.example of tenants "a", "c""#,
        ],
    );
    // A name under one's own wildcard, or two labels down, is fine.
    let ok = format!(
        "{HEAD}{}",
        tenant(
            "a",
            r#"domains = ["*.shop.example", "x.shop.example", "a.b.shop.example"]"#
        )
    );
    assert_eq!(check(&ok).0, 0, "{}", check(&ok).1);
}

#[test]
fn names_inside_the_platform_namespace_are_refused() {
    let text = format!(
        "{HEAD}{}",
        tenant(
            "a",
            r#"domains = ["saas.example", "x.y.saas.example", "*.saas.example", "free.saas.example"]"#
        )
    );
    refused(
        &text,
        &[
            r#"tenant "a": tenants[0].domains[0]: domain saas.example is inside the platform domain saas.example"#,
            "domain x.y.saas.example is inside the platform domain",
            "domain *.saas.example is inside the platform domain",
            "domain free.saas.example is inside the platform domain",
        ],
    );
}

#[test]
fn names_at_or_above_a_public_suffix_are_refused() {
    let text = format!(
        "{HEAD}{}",
        tenant("a", r#"domains = ["*.com", "co.uk", "*.github.io", "com"]"#)
    );
    refused(
        &text,
        &[
            "*.com is at or above a public suffix (com)",
            "co.uk is at or above a public suffix (co.uk)",
            "*.github.io is at or above a public suffix (github.io)",
            "tenants[0].domains[3]: com is at or above a public suffix",
        ],
    );
    let ok = format!(
        "{HEAD}{}",
        tenant("a", r#"domains = ["*.acme.github.io", "shop.co.uk"]"#)
    );
    assert_eq!(check(&ok).0, 0);
}

#[test]
fn malformed_names_are_refused_with_the_reason() {
    let text = format!(
        "{HEAD}{}",
        tenant(
            "a",
            &format!(
                r#"domains = ["a.com:443", "https://a.com/x", "10.0.0.1", "a..com", "bad_name.com", "*.*.a.com", "{}.com"]"#,
                vec!["a".repeat(60); 5].join(".")
            )
        )
    );
    refused(
        &text,
        &[
            r#"tenants[0].domains[0]: "a.com:443" is not a valid host name: a port is not allowed here"#,
            "a path is not allowed",
            "an IP address is not a host name",
            "a label is empty or longer than 63 characters",
            "invalid characters",
            r#""*.*.a.com" is not a valid wildcard"#,
            "longer than 253 characters",
        ],
    );
}

#[test]
fn tenant_ids_subdomains_and_pools_are_checked() {
    let text = format!(
        "{HEAD}\n[pools.empty]\nupstreams = []\n\n[pools.bad]\nupstreams = [\"http://localhost:80\"]\n{}{}{}{}{}{}",
        tenant("dup", r#"subdomain = "one""#),
        tenant("dup", r#"subdomain = "two""#),
        tenant("x", r#"subdomain = "ONE""#),
        tenant("y", r#"subdomain = "www""#),
        tenant("Bad Id", ""),
        "\n[[tenants]]\nid = \"z\"\npool = \"missing\"\n",
    );
    refused(
        &text,
        &[
            r#"tenant "dup": tenants[0].id, tenants[1].id: tenant id "dup" is used 2 times"#,
            r#"subdomain "one" is claimed by tenants "dup", "x""#,
            r#"tenant "y": tenants[3].subdomain: subdomain "www" is reserved"#,
            r#""Bad Id" is not a valid tenant id"#,
            r#"tenant "z": tenants[5].pool: pool "missing" is not defined"#,
            r#"pools.empty.upstreams: pool "empty" has no upstreams"#,
            r#""http://localhost:80" is not a valid upstream address (want IP:port or host:port)"#,
        ],
    );
}

#[test]
fn reserved_subdomains_are_configurable() {
    let text = HEAD.replace("base_domains", "reserved_subdomains = [\"billing\"]\nbase_domains")
        + &tenant("w", r#"subdomain = "www""#)
        + &tenant("b", r#"subdomain = "billing""#);
    let out = refused(&text, &[r#"subdomain "billing" is reserved"#]);
    assert!(
        !out.contains("\"www\" is reserved"),
        "the list replaces the default:\n{out}"
    );
}

#[test]
fn every_problem_is_reported_in_one_run() {
    let text = format!(
        "{HEAD}{}{}",
        tenant("a", "subdomain = \"www\"\ndomains = [\"*.com\"]"),
        "\n[[tenants]]\nid = \"b\"\npool = \"gone\"\n"
    );
    let out = refused(&text, &["is reserved", "public suffix", "is not defined"]);
    assert!(out.contains("3 problem(s)"), "{out}");
}

#[test]
fn syntax_and_unknown_fields_are_refused_with_a_position() {
    let (code, out, path) = check("[gateway]\nhttp_listen = \"127.0.0.1:1\"\nbogus_knob = 1\n");
    assert_eq!(code, 1);
    assert!(
        out.starts_with(&path) && out.contains("bogus_knob") && out.contains("line 3"),
        "{out}"
    );
    let (code, out, _) = check("[gateway\n");
    assert_eq!(code, 1);
    assert!(out.contains("line 1"), "{out}");
    let (code, out, _) = check_missing();
    assert_eq!(code, 1);
    assert!(out.contains("cannot read"), "{out}");
}

fn check_missing() -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["check", "/nonexistent/tenantgate.toml"])
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        String::new(),
    )
}

#[test]
fn a_wildcard_may_not_capture_a_platform_domain() {
    let text = HEAD.replace(
        r#"base_domains = ["saas.example"]"#,
        r#"base_domains = ["saas.acme.com"]"#,
    ) + &tenant("a", r#"domains = ["*.acme.com"]"#);
    refused(
        &text,
        &["wildcard *.acme.com would cover the platform domain saas.acme.com"],
    );
}

#[test]
fn headers_the_gateway_writes_cannot_be_the_tenant_header_or_stripped() {
    let text = HEAD.replace(
        "base_domains",
        "tenant_header = \"Host\"\nstrip_headers = [\"x-request-id\", \"x-ok\"]\nbase_domains",
    ) + &tenant("a", r#"domains = ["a.example.com"]"#);
    refused(
        &text,
        &[
            r#"gateway.tenant_header: header "Host" is set or used by the gateway itself"#,
            r#"gateway.strip_headers: header "x-request-id" is set or used by the gateway itself"#,
        ],
    );
}

#[test]
fn reserved_subdomains_are_normalised_like_subdomains() {
    let text = HEAD.replace("base_domains", "reserved_subdomains = [\"Bücher\"]\nbase_domains")
        + &tenant("a", r#"subdomain = "bücher""#);
    refused(&text, &[r#"subdomain "xn--bcher-kva" is reserved"#]);
}

#[test]
fn positions_stay_right_after_a_tenant_with_an_unknown_pool() {
    let text = format!(
        "{HEAD}\n[[tenants]]\nid = \"lost\"\npool = \"nope\"\n{}{}",
        tenant("a", r#"domains = ["x.example.com"]"#),
        tenant("b", r#"domains = ["x.example.com"]"#)
    );
    refused(
        &text,
        &[r#"tenants[1].domains[0] and tenants[2].domains[0]: domain x.example.com is claimed by tenants "a", "b""#],
    );
}

#[test]
fn plans_and_limits_are_validated() {
    let text = format!(
        "{HEAD}\n[plans.bad]\nrequests_per_second = 50\nburst = 10\nmax_concurrent = 0\nrequests_per_day = -5\n\n\
         [plans.orphan]\nburst = 5\n{}{}{}{}",
        tenant("a", "plan = \"missing\""),
        tenant("b", ""),
        tenant("c", "plan = \"orphan\"\ntimezone = \"Mars/Olympus\""),
        tenant("d", "plan = \"unlimited\"")
    );
    refused(
        &text,
        &[
            "plans.bad.burst: burst 10 is below requests_per_second 50",
            "plans.bad.max_concurrent: max_concurrent = 0 must be a positive whole number",
            "plans.bad.requests_per_day: requests_per_day = -5 must be a positive whole number",
            "plans.orphan.burst: burst is set without requests_per_second",
            r#"tenant "a": tenants[0].plan: plan "missing" is not defined"#,
            r#"tenant "b": tenants[1].plan: the tenant has no plan, and [limits] default_plan is not set"#,
            r#"tenant "c": tenants[2].timezone: "Mars/Olympus" is not a known time zone"#,
        ],
    );
}

#[test]
fn without_plans_tenants_are_unlimited_and_a_default_plan_applies() {
    let none = format!("{HEAD}{}", tenant("a", ""));
    assert_eq!(check(&none).0, 0, "configs without plans stay valid");
    let with_default = format!(
        "{HEAD}\n[limits]\ndefault_plan = \"basic\"\n\n[plans.basic]\nrequests_per_second = 5\n{}",
        tenant("a", "")
    );
    assert_eq!(check(&with_default).0, 0, "{}", check(&with_default).1);
}

#[test]
fn store_section_and_store_failure_mode_are_validated() {
    let out = refused(
        &format!(
            "{HEAD}\n[store]\nredis_url = \"http://user:secret@127.0.0.1:6379\"\ntimeout_ms = 0\nkey_prefix = \"Bad Prefix\"\n\n\
             [plans.p]\nrequests_per_second = 5\non_store_failure = \"maybe\"\n{}",
            tenant("a", "plan = \"p\"\n[tenants.limits]\non_store_failure = \"sometimes\"")
        ),
        &[
            "store.redis_url: \"127.0.0.1:6379\" is not a usable Redis URL",
            "store.timeout_ms: \"0\" must be greater than zero",
            "store.key_prefix: key prefix \"Bad Prefix\" is not 1 to 32 characters",
            "plans.p.on_store_failure: \"maybe\" is not \"open\" or \"closed\"",
            r#"tenant "a": tenants[0].limits.on_store_failure: "sometimes" is not "open" or "closed""#,
        ],
    );
    assert!(!out.contains("secret"), "the password is never printed: {out}");
    // TLS to Redis: the CA file must hold certificates, and needs rediss://.
    let certs = tempfile::tempdir().expect("tempdir");
    let bad_ca = certs.path().join("tenantgate-not-a-ca.pem");
    std::fs::write(&bad_ca, "not pem").expect("write");
    refused(
        &format!(
            "{HEAD}\n[store]\nredis_url = \"redis://127.0.0.1:6379\"\nca_file = {:?}\n{}",
            bad_ca.display().to_string(),
            tenant("a", "")
        ),
        &[
            "store.ca_file: cannot use",
            "tenantgate-not-a-ca.pem as the Redis CA: no certificate in it",
        ],
    );
    let out = refused(
        &format!(
            "{HEAD}\n[store]\nredis_url = \"redis://127.0.0.1:6379\"\nca_file = \"/nonexistent/ca.pem\"\n{}",
            tenant("a", "")
        ),
        &["store.ca_file: cannot use /nonexistent/ca.pem as the Redis CA: No such file or directory"],
    );
    assert!(!out.contains("is not rediss://"), "only the unreadable file: {out}");
    let (ca, _, _) = common::pebble::write_api_certs(certs.path());
    let ca = ca.display().to_string();
    refused(
        &format!(
            "{HEAD}\n[store]\nredis_url = \"redis://127.0.0.1:6379\"\nca_file = {ca:?}\n{}",
            tenant("a", "")
        ),
        &["store.ca_file: ca_file is set but redis_url is not rediss://; fix: use a rediss:// URL, or remove ca_file"],
    );
    let with_ca = format!(
        "{HEAD}\n[store]\nredis_url = \"rediss://127.0.0.1:6380\"\nca_file = {ca:?}\n{}",
        tenant("a", "")
    );
    assert_eq!(check(&with_ca).0, 0, "{}", check(&with_ca).1);
    let rediss = format!(
        "{HEAD}\n[store]\nredis_url = \"rediss://user:pw@127.0.0.1:6380\"\n{}",
        tenant("a", "")
    );
    assert_eq!(check(&rediss).0, 0, "{}", check(&rediss).1);
    let ok = format!(
        "{HEAD}\n[store]\nredis_url = \"redis://127.0.0.1:6379/0\"\n\n[plans.p]\nrequests_per_second = 5\non_store_failure = \"closed\"\n{}",
        tenant("a", "plan = \"p\"")
    );
    assert_eq!(check(&ok).0, 0, "{}", check(&ok).1);
}

#[test]
fn client_limits_are_validated_like_the_tenant_rate() {
    refused(
        &format!(
            "{HEAD}\n[plans.p]\nclient_requests_per_second = 10\nclient_burst = 5\n\n[plans.q]\nclient_burst = 3\n\n\
             [plans.r]\nclient_requests_per_second = -1\n{}",
            tenant("a", "plan = \"p\"")
        ),
        &[
            "plans.p.client_burst: client_burst 5 is below client_requests_per_second 10",
            "plans.q.client_burst: client_burst is set without client_requests_per_second",
            "plans.r.client_requests_per_second: client_requests_per_second = -1 must be a positive whole number",
        ],
    );
}

#[test]
fn templates_are_checked_once_and_every_tenant_needs_a_known_template_and_a_pool() {
    let text = format!(
        "{HEAD}\n[templates.basic]\nplan = \"unlimited\"\n\n[templates.broken]\npool = \"nope\"\n\n\
         [[tenants]]\nid = \"a\"\ntemplate = \"gold\"\n\n[[tenants]]\nid = \"b\"\ntemplate = \"basic\"\n\n\
         [[tenants]]\nid = \"c\"\n\n[[tenants]]\nid = \"d\"\ntemplate = \"broken\"\n\n\
         [[tenants]]\nid = \"e\"\ntemplate = \"broken\"\nsubdomain = \"e\"\n"
    );
    let files = [
        (
            "templates/filed.toml",
            "pool = \"shared\"\ntimezone = \"Mars/Olympus\"\n",
        ),
        ("tenants/f.toml", "id = \"f\"\ntemplate = \"nothing\"\n"),
    ];
    let (code, out, path) = check_files(&text, &files);
    assert_eq!(code, 1);
    let defined = r#"(defined: "basic", "broken", "filed"); fix: name a defined template, or define it under [templates.<name>] or in templates/<name>.toml"#;
    let want = [
        "6 problem(s)".to_string(),
        r#"templates.broken.pool: pool "nope" is not defined; fix: define it under [pools.<name>] or point the tenant at an existing pool"#.to_string(),
        r#"templates/filed.toml:timezone: "Mars/Olympus" is not a known time zone; fix: use an IANA time zone name such as Europe/Berlin, or remove it for UTC"#.to_string(),
        format!(r#"tenant "a": tenants[0].template: template "gold" is not defined {defined}"#),
        r#"tenant "b": tenants[1].pool: the tenant has no pool, and its template "basic" sets none; fix: set pool = "<name>" on the tenant, or on the template it names"#.to_string(),
        r#"tenant "c": tenants[2].pool: the tenant has no pool; fix: set pool = "<name>" on the tenant, or on the template it names"#.to_string(),
        format!(r#"tenant "f": tenants/f.toml:template: template "nothing" is not defined {defined}"#),
    ];
    let want: Vec<String> = want.iter().map(|l| format!("{path}: {l}")).collect();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        want,
        "the broken template's pool is reported once, not per tenant"
    );

    let main_and_file = check_files(
        &format!("{HEAD}\n[templates.basic]\npool = \"shared\"\n"),
        &[
            ("templates/basic.toml", "pool = \"shared\"\n"),
            ("templates/Bad.toml", ""),
        ],
    );
    assert_eq!(
        main_and_file.1.lines().skip(1).collect::<Vec<_>>(),
        [
            format!("{}: templates.basic: template \"basic\" is defined both in the main file and in templates/basic.toml; fix: keep one definition: remove [templates.<name>] or the file", main_and_file.2),
            format!("{}: templates/Bad.toml: \"Bad\" is not a valid template name; fix: use 1 to 63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit", main_and_file.2),
        ]
    );

    let ok = format!(
        "{HEAD}\n[pools.other]\nupstreams = [\"127.0.0.1:9002\"]\n\n[templates.basic]\npool = \"shared\"\n\n\
         [[tenants]]\nid = \"a\"\ntemplate = \"basic\"\n\n[[tenants]]\nid = \"b\"\ntemplate = \"basic\"\npool = \"other\"\n"
    );
    let (code, out, _) = check_files(&ok, &[("templates/edge.toml", "pool = \"other\"\n")]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn gateway_timeouts_of_zero_are_refused() {
    let text = HEAD.replace(
        "base_domains",
        "connect_timeout_ms = 0\nclient_timeout_ms = 0\nbase_domains",
    );
    refused(
        &text,
        &[
            "gateway.connect_timeout_ms: \"0\" must be greater than zero",
            "gateway.client_timeout_ms: \"0\" must be greater than zero",
        ],
    );
}

#[test]
fn limits_on_the_unlimited_plan_are_checked_too() {
    let main = format!("{HEAD}\n[plans.pro]\nrequests_per_second = 10\n\n[limits]\ndefault_plan = \"unlimited\"\n");
    for tenant in [
        "id = \"neg\"\npool = \"shared\"\nplan = \"unlimited\"\n\n[limits]\nrequests_per_second = -1\n",
        "id = \"neg\"\npool = \"shared\"\n\n[limits]\nmax_domains = -3\n",
    ] {
        let (code, out, path) = check_files(&main, &[("tenants/neg.toml", tenant)]);
        assert_ne!(code, 0, "{out}");
        assert!(out.contains(&path), "{out}");
        assert!(out.contains("tenant \"neg\""), "{out}");
        assert!(out.contains("limits."), "{out}");
        assert!(out.contains("fix: use a value of 1 or more"), "{out}");
    }
}

#[test]
fn fleet_acme_needs_a_key_file_of_64_hex_digits() {
    let acme = "\n[tls]\nissuer = \"acme\"\n\n[tls.acme]\ndirectory_url = \"https://acme.example/dir\"\n";
    let head = HEAD.replace("base_domains", "https_listen = \"127.0.0.1:8443\"\nbase_domains");
    let store = "\n[store]\nredis_url = \"redis://127.0.0.1:6379\"\n";
    // The ACME issuer in fleet mode keeps private keys in Redis: refused
    // without a key to seal them.
    refused(
        &format!("{head}{store}{acme}{}", tenant("a", "")),
        &["store.key_file: fleet mode with the ACME issuer keeps certificates' private keys in Redis, and no key_file encrypts them; fix: set [store] key_file to a file of 64 hex digits"],
    );
    let keys = tempfile::tempdir().expect("tempdir");
    let short = keys.path().join("short.key");
    std::fs::write(&short, "abcd\n").expect("write");
    refused(
        &format!(
            "{head}{store}key_file = {:?}\nlease_secs = 0\n{acme}{}",
            short.display().to_string(),
            tenant("a", "")
        ),
        &[
            "short.key as the store key: it holds 4 characters, not 64 hex digits",
            "store.lease_secs: \"0\" must be greater than zero",
        ],
    );
    let good = keys.path().join("good.key");
    std::fs::write(&good, format!("{}\n", "0a".repeat(32))).expect("write");
    let ok = format!(
        "{head}{store}key_file = {:?}\n{acme}{}",
        good.display().to_string(),
        tenant("a", "")
    );
    assert_eq!(check(&ok).0, 0, "{}", check(&ok).1);
    // Without [store], or with another issuer, no key is needed.
    let internal = format!("{head}{store}\n[tls]\nissuer = \"internal\"\n{}", tenant("a", ""));
    assert_eq!(check(&internal).0, 0, "{}", check(&internal).1);
}

#[test]
fn acme_issuers_and_external_account_binding_are_checked() {
    let head = HEAD.replace("base_domains", "https_listen = \"127.0.0.1:8443\"\nbase_domains");
    refused(
        &format!(
            "{head}\n[tls]\nissuer = \"acme\"\n\n[tls.acme]\neab_kid = \"kid\"\n\n\
             [[tls.acme.issuers]]\ndirectory_url = \"http://ca.example/dir\"\neab_hmac_key = \"!!not base64!!\"\neab_kid = \"k\"\n\n\
             [[tls.acme.issuers]]\ndirectory_url = \"https://ca2.example/dir\"\neab_hmac_key = \"abc\"\n{}",
            tenant("a", "")
        ),
        &[
            "tls.acme.eab_hmac_key: External Account Binding needs both eab_kid and eab_hmac_key",
            "tls.acme.issuers[0].directory_url: \"http://ca.example/dir\" is not a valid ACME directory URL",
            "tls.acme.issuers[0].eab_hmac_key: the External Account Binding HMAC key is not base64url",
            "tls.acme.issuers[1].eab_kid: External Account Binding needs both",
        ],
    );
    refused(
        &format!("{head}\n[tls]\nissuer = \"acme\"\n\n[tls.acme]\ncontact = \"ops@example.com\"\n{}", tenant("a", "")),
        &["tls.acme.directory_url: no ACME CA: neither directory_url nor [[tls.acme.issuers]] is set; fix: set directory_url"],
    );
    let ok = format!(
        "{head}\n[tls]\nissuer = \"acme\"\n\n[tls.acme]\nfallback_after = 5\n\n[[tls.acme.issuers]]\ndirectory_url = \"https://a.example/dir\"\n\n\
         [[tls.acme.issuers]]\ndirectory_url = \"https://b.example/dir\"\neab_kid = \"k\"\neab_hmac_key = \"{}\"\n{}",
        "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W",
        tenant("a", "")
    );
    assert_eq!(check(&ok).0, 0, "{}", check(&ok).1);
}

#[test]
fn ari_min_poll_secs_of_zero_is_refused() {
    let head = HEAD.replace("base_domains", "https_listen = \"127.0.0.1:8443\"\nbase_domains");
    let acme = "[tls]\nissuer = \"acme\"\n\n[tls.acme]\ndirectory_url = \"https://ca.example/dir\"\n";
    let out = refused(
        &format!("{head}\n{acme}ari_min_poll_secs = 0\n{}", tenant("a", "")),
        &["tls.acme.ari_min_poll_secs"],
    );
    assert!(out.contains("fix"), "{out}");
    let ok = format!("{head}\n{acme}ari_min_poll_secs = 3600\n{}", tenant("a", ""));
    assert_eq!(check(&ok).0, 0, "{}", check(&ok).1);
}
