//! Branded error pages: the gateway's own 429, 502, 503, 504 and
//! maintenance answers, as the client asks for them. A client that prefers
//! HTML (`Accept: text/html`) gets the tenant's page in the language its
//! `Accept-Language` prefers (else the tenant's default language), filled
//! with the tenant's branding, every value HTML-escaped; a client that asks
//! for JSON gets `application/problem+json`; others keep the plain answer.
//! Without a template, a safe built-in page is used.

use http::HeaderValue;

use super::policy::{reason, Answer};
use crate::config::pages::{Page, Pages, Segment, Template, Var};
use crate::config::TenantSpec;

/// The request headers the gateway's own answers depend on.
#[derive(Debug, Default, Clone, Copy)]
pub struct Prefs<'a> {
    pub accept: Option<&'a [u8]>,
    pub accept_language: Option<&'a [u8]>,
    pub if_none_match: Option<&'a [u8]>,
}

impl<'a> Prefs<'a> {
    /// Picks them out of a request's headers (the first of each).
    pub fn scan(headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Prefs<'a> {
        let mut p = Prefs::default();
        for (name, value) in headers {
            let slot = match name.len() {
                6 if name.eq_ignore_ascii_case("accept") => &mut p.accept,
                15 if name.eq_ignore_ascii_case("accept-language") => &mut p.accept_language,
                13 if name.eq_ignore_ascii_case("if-none-match") => &mut p.if_none_match,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        p
    }

    /// What the client prefers, by the `q` of its best HTML and JSON ranges.
    pub fn wants(&self) -> Wants {
        let Some(accept) = self.accept else {
            return Wants::Other;
        };
        let (mut html, mut json) = (0u16, 0u16);
        for (range, q) in weighted(accept) {
            let range = range.to_ascii_lowercase();
            if range == "text/html" || range == "application/xhtml+xml" {
                html = html.max(q);
            } else if range == "application/json" || range.ends_with("+json") {
                json = json.max(q);
            }
        }
        match (html, json) {
            (0, 0) => Wants::Other,
            (h, j) if h > j => Wants::Html,
            _ => Wants::Json,
        }
    }
}

/// The form of an error answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wants {
    Html,
    Json,
    /// Neither asked for: the answer's usual form.
    Other,
}

/// The comma-separated items of a header with their `q` (0 to 1000).
fn weighted(v: &[u8]) -> impl Iterator<Item = (String, u16)> + '_ {
    v.split(|b| *b == b',').filter_map(|item| {
        let item = std::str::from_utf8(item).ok()?;
        let mut parts = item.split(';');
        let range = parts.next()?.trim();
        if range.is_empty() {
            return None;
        }
        let mut q = 1000u16;
        for p in parts {
            if let Some(v) = p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")) {
                q = v
                    .trim()
                    .parse::<f32>()
                    .map_or(0, |f| (f.clamp(0.0, 1.0) * 1000.0) as u16);
            }
        }
        Some((range.to_string(), q))
    })
}

/// The answer for a failed exchange (502, 504): branded when there is a
/// tenant, plain for a shared host's platform pool.
pub fn failure(branded: Option<&Branded<'_>>, status: u16) -> Answer {
    match branded {
        Some(b) => b.failure(status),
        None => Answer::failure(status),
    }
}

/// The tenant's error answers for one request.
#[derive(Clone, Copy)]
pub struct Branded<'s> {
    pub tenant: &'s TenantSpec,
    pub pages: &'s Pages,
    pub prefs: Prefs<'s>,
}

impl Branded<'_> {
    /// `plain` (the usual answer for `status`), as the client asks for it.
    /// `retry_after` goes into the page and the problem's `retry_after`.
    pub fn answer(&self, page: Page, mut plain: Answer, retry_after: Option<u32>) -> Answer {
        // Caches keep one answer per form and language.
        plain
            .headers
            .push(("vary", HeaderValue::from_static("accept, accept-language")));
        match self.prefs.wants() {
            Wants::Other => plain,
            Wants::Json if plain.content_type == "application/problem+json" => plain,
            Wants::Json => {
                let (title, detail) = words(page, plain.status);
                let mut v = serde_json::json!({
                    "type": format!("tag:tenantgate,2026:{}", kind(page)),
                    "title": title,
                    "status": plain.status,
                    "detail": detail,
                });
                if let Some(r) = retry_after {
                    v["retry_after"] = r.into();
                }
                plain.content_type = "application/problem+json";
                plain.body = v.to_string().into();
                plain
            }
            Wants::Html => {
                let (template, language) = self.choose(page);
                plain.content_type = "text/html; charset=utf-8";
                plain.body = self.fill(template, page, plain.status, retry_after, language).into();
                plain
            }
        }
    }

    /// The 502 or 504 of a failed exchange.
    pub fn failure(&self, status: u16) -> Answer {
        let plain = Answer::failure(status);
        match Page::of_status(status) {
            Some(page) => self.answer(page, plain, None),
            None => plain,
        }
    }

    /// The template for `page` and its language: the tenant's own set,
    /// else the one for all tenants, else the built-in page.
    fn choose(&self, page: Page) -> (&Template, &str) {
        let default = self.tenant.profile.locale.language.as_deref();
        for owner in [self.tenant.id.as_str(), ""] {
            let set = self.pages.of(owner, page);
            if let Some(found) = pick(set, self.prefs.accept_language, default) {
                return found;
            }
        }
        (builtin(), default.unwrap_or("en"))
    }

    fn fill(&self, t: &Template, page: Page, status: u16, retry_after: Option<u32>, language: &str) -> String {
        let b = &self.tenant.profile.branding;
        let (title, detail) = words(page, status);
        let name = b.name.as_deref().unwrap_or(&self.tenant.id);
        let mut out = String::with_capacity(2048);
        for s in &t.0 {
            match s {
                Segment::Text(text) => out.push_str(text),
                Segment::Var(v) => {
                    let value: std::borrow::Cow<'_, str> = match v {
                        Var::Name => name.into(),
                        Var::PrimaryColor => b.primary_color.as_deref().unwrap_or("#333333").into(),
                        Var::SecondaryColor => b.secondary_color.as_deref().unwrap_or("#f4f4f4").into(),
                        Var::LogoUrl => b.logo_url.as_deref().unwrap_or("").into(),
                        Var::FaviconUrl => b.favicon_url.as_deref().unwrap_or("").into(),
                        Var::Status => status.to_string().into(),
                        Var::Title => title.into(),
                        Var::Detail => detail.into(),
                        Var::RetryAfter => retry_after.map(|r| r.to_string()).unwrap_or_default().into(),
                        Var::Language => language.into(),
                    };
                    escape(&mut out, &value);
                }
            }
        }
        out
    }
}

/// The best template of `set` for `accept_language`, else for the tenant's
/// `default` language, else the one without a language.
fn pick<'t>(
    set: &'t [(Option<String>, Template)],
    accept_language: Option<&[u8]>,
    default: Option<&'t str>,
) -> Option<(&'t Template, &'t str)> {
    if set.is_empty() {
        return None;
    }
    let find = |wanted: &str| {
        let wanted = wanted.to_ascii_lowercase();
        let primary = wanted.split('-').next().unwrap_or("").to_string();
        set.iter()
            .find(|(l, _)| l.as_deref() == Some(wanted.as_str()))
            .or_else(|| {
                set.iter().find(|(l, _)| {
                    l.as_deref()
                        .is_some_and(|l| l.split('-').next() == Some(primary.as_str()))
                })
            })
            .and_then(|(l, t)| Some((t, l.as_deref()?)))
    };
    let mut ranges: Vec<(String, u16)> = accept_language
        .map(|a| weighted(a).filter(|(r, q)| *q > 0 && r != "*").collect())
        .unwrap_or_default();
    ranges.sort_by_key(|r| std::cmp::Reverse(r.1));
    for (range, _) in &ranges {
        if let Some(found) = find(range) {
            return Some(found);
        }
    }
    if let Some(found) = default.and_then(find) {
        return Some(found);
    }
    set.iter()
        .find(|(l, _)| l.is_none())
        .map(|(_, t)| (t, default.unwrap_or("en")))
}

/// The title and detail of a page.
fn words(page: Page, status: u16) -> (&'static str, &'static str) {
    match page {
        Page::TooManyRequests => (
            "Too Many Requests",
            "Too many requests right now. Please wait a moment and try again.",
        ),
        Page::BadGateway => (
            "Bad Gateway",
            "The service could not be reached. Please try again shortly.",
        ),
        Page::Unavailable => (
            reason(status),
            "The service is unavailable right now. Please try again shortly.",
        ),
        Page::GatewayTimeout => (
            "Gateway Timeout",
            "The service took too long to answer. Please try again shortly.",
        ),
        Page::Maintenance => (
            "Down for maintenance",
            "This service is down for scheduled maintenance. Please come back later.",
        ),
    }
}

fn kind(page: Page) -> &'static str {
    match page {
        Page::TooManyRequests => "rate-limited",
        Page::BadGateway => "bad-gateway",
        Page::Unavailable => "unavailable",
        Page::GatewayTimeout => "gateway-timeout",
        Page::Maintenance => "maintenance",
    }
}

/// `value` with `& < > " '` escaped, for text and quoted attributes alike.
pub fn escape(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// The built-in page: no script, no external resource but the tenant's
/// validated logo.
fn builtin() -> &'static Template {
    static T: std::sync::LazyLock<Template> = std::sync::LazyLock::new(|| Template::parse(BUILTIN).unwrap_or_default());
    &T
}

const BUILTIN: &str = r#"<!doctype html>
<html lang="{{ language }}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }} - {{ name }}</title>
<style>
body{margin:0;font-family:system-ui,sans-serif;background:{{ secondary_color }};color:#222}
main{max-width:36rem;margin:10vh auto;padding:2rem;background:#fff;border-top:6px solid {{ primary_color }};border-radius:8px}
h1{color:{{ primary_color }};font-size:1.6rem}
</style>
</head>
<body>
<main>
<p>{{ name }}</p>
<h1>{{ status }} {{ title }}</h1>
<p>{{ detail }}</p>
</main>
</body>
</html>
"#;

/// `Retry-After` as a header value.
pub fn retry_after(secs: u32) -> HeaderValue {
    HeaderValue::from(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefs(accept: &'static str, lang: &'static str) -> Prefs<'static> {
        Prefs {
            accept: Some(accept.as_bytes()),
            accept_language: Some(lang.as_bytes()),
            if_none_match: None,
        }
    }

    #[test]
    fn browsers_get_html_and_api_clients_get_json() {
        let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert_eq!(prefs(browser, "").wants(), Wants::Html);
        assert_eq!(prefs("application/json", "").wants(), Wants::Json);
        assert_eq!(prefs("text/html;q=0.5, application/json", "").wants(), Wants::Json);
        assert_eq!(prefs("*/*", "").wants(), Wants::Other);
        assert_eq!(Prefs::default().wants(), Wants::Other);
    }

    #[test]
    fn the_language_is_the_best_one_there_is_a_template_for() {
        let t = |s: &str| Template::parse(s).expect("template");
        let set = vec![
            (Some("de".to_string()), t("de")),
            (Some("fr-ch".to_string()), t("fr")),
            (None, t("none")),
        ];
        let lang = |al: &str, default: Option<&'static str>| {
            pick(&set, Some(al.as_bytes()), default).map(|(_, l)| l.to_string())
        };
        assert_eq!(lang("fr-CH, de;q=0.8", None).as_deref(), Some("fr-ch"));
        assert_eq!(lang("it, de-AT;q=0.5", None).as_deref(), Some("de"));
        assert_eq!(lang("fr;q=0.9, de;q=0.95", None).as_deref(), Some("de"));
        assert_eq!(lang("it", Some("fr-CH")).as_deref(), Some("fr-ch"));
        assert_eq!(lang("it", Some("ja")).as_deref(), Some("ja"));
    }

    #[test]
    fn filled_values_cannot_break_out_of_the_markup() {
        let mut out = String::new();
        escape(&mut out, "<script>alert('x')</script> & \"q\"");
        assert_eq!(
            out,
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
