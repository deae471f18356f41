//! Branded error page templates, read and checked at load so that a broken
//! template never reaches a user.
//!
//! Layout of `[profile] pages_dir`: `<page>.html` or `<page>.<language>.html`
//! for every tenant, and the same under `<tenant id>/` for one tenant;
//! `<page>` is `429`, `502`, `503`, `504` or `maintenance`. A template is
//! UTF-8 HTML of at most 64 KiB with `{{ name }}` placeholders (see
//! [`Var`]); every value is HTML-escaped when filled in.

use std::collections::HashMap;
use std::path::Path;

use super::profile::ProfileProblem;
use super::{err, ConfigError, Problem};

/// Largest template accepted.
pub const MAX_TEMPLATE_BYTES: usize = 64 << 10;

/// Which error a page is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Page {
    TooManyRequests,
    BadGateway,
    Unavailable,
    GatewayTimeout,
    Maintenance,
}

impl Page {
    pub const ALL: [Page; 5] = [
        Page::TooManyRequests,
        Page::BadGateway,
        Page::Unavailable,
        Page::GatewayTimeout,
        Page::Maintenance,
    ];

    /// The file name stem.
    pub fn stem(self) -> &'static str {
        match self {
            Page::TooManyRequests => "429",
            Page::BadGateway => "502",
            Page::Unavailable => "503",
            Page::GatewayTimeout => "504",
            Page::Maintenance => "maintenance",
        }
    }

    /// The page for a status of the gateway's own, if it has one.
    pub fn of_status(status: u16) -> Option<Page> {
        match status {
            429 => Some(Page::TooManyRequests),
            502 => Some(Page::BadGateway),
            503 => Some(Page::Unavailable),
            504 => Some(Page::GatewayTimeout),
            _ => None,
        }
    }
}

/// A value a template may show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    Name,
    PrimaryColor,
    SecondaryColor,
    LogoUrl,
    FaviconUrl,
    Status,
    Title,
    Detail,
    RetryAfter,
    Language,
}

impl Var {
    fn parse(s: &str) -> Option<Var> {
        Some(match s {
            "name" => Var::Name,
            "primary_color" => Var::PrimaryColor,
            "secondary_color" => Var::SecondaryColor,
            "logo_url" => Var::LogoUrl,
            "favicon_url" => Var::FaviconUrl,
            "status" => Var::Status,
            "title" => Var::Title,
            "detail" => Var::Detail,
            "retry_after" => Var::RetryAfter,
            "language" => Var::Language,
            _ => return None,
        })
    }
}

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Text(String),
    Var(Var),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template(pub Vec<Segment>);

impl Template {
    /// Parses `{{ var }}` placeholders; an unknown name or an unclosed
    /// `{{` is refused.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find("{{") {
            if at > 0 {
                out.push(Segment::Text(rest[..at].to_string()));
            }
            let after = &rest[at + 2..];
            let end = after.find("}}").ok_or("a {{ is not closed by }}")?;
            let name = after[..end].trim();
            let var = Var::parse(name).ok_or_else(|| format!("unknown placeholder {{{{ {name} }}}}"))?;
            out.push(Segment::Var(var));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            out.push(Segment::Text(rest.to_string()));
        }
        Ok(Template(out))
    }
}

/// The templates of one page for one owner, by language.
pub type ByLanguage = Vec<(Option<String>, Template)>;

/// Every template, by owner (`""` for all tenants), page and language
/// (lowercase; `None` for the file without one).
#[derive(Debug, Default)]
pub struct Pages {
    templates: HashMap<(String, Page), ByLanguage>,
}

impl Pages {
    /// Reads `dir` (`shown` is its name as written) and one level of tenant
    /// folders. Each unreadable or broken template is a problem.
    pub fn load(dir: &Path, shown: &str, errs: &mut Vec<ConfigError>) -> Pages {
        let mut pages = Pages::default();
        let field = "profile.pages_dir";
        let mut bad = |file: String, reason: String, errs: &mut Vec<ConfigError>| {
            errs.push(err(
                None,
                field,
                Problem::Profile(ProfileProblem::BadPage { file, reason }),
            ));
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                bad(shown.to_string(), e.to_string(), errs);
                return pages;
            }
        };
        let mut folders = Vec::new();
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                    if super::valid_tenant_id(name) {
                        folders.push((name.to_string(), p.clone()));
                    }
                }
            } else {
                pages.file(String::new(), &p, shown, &mut bad, errs);
            }
        }
        for (owner, folder) in folders {
            let shown = format!("{shown}/{owner}");
            for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
                pages.file(owner.clone(), &entry.path(), &shown, &mut bad, errs);
            }
        }
        pages
    }

    fn file(
        &mut self,
        owner: String,
        p: &Path,
        shown: &str,
        bad: &mut impl FnMut(String, String, &mut Vec<ConfigError>),
        errs: &mut Vec<ConfigError>,
    ) {
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        let Some(stem) = name.strip_suffix(".html") else { return };
        let shown = format!("{shown}/{name}");
        let (page, lang) = match stem.split_once('.') {
            Some((page, lang)) => (page, Some(lang.to_ascii_lowercase())),
            None => (stem, None),
        };
        let Some(page) = Page::ALL.into_iter().find(|x| x.stem() == page) else {
            bad(
                shown,
                "not a page name (429, 502, 503, 504 or maintenance)".into(),
                errs,
            );
            return;
        };
        if lang
            .as_ref()
            .is_some_and(|l| l.is_empty() || l.len() > 35 || !l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'))
        {
            bad(
                shown,
                "the part between the page and .html is not a language tag".into(),
                errs,
            );
            return;
        }
        let text = match std::fs::read(p) {
            Ok(b) if b.len() > MAX_TEMPLATE_BYTES => {
                bad(shown, format!("larger than {MAX_TEMPLATE_BYTES} bytes"), errs);
                return;
            }
            Ok(b) => match String::from_utf8(b) {
                Ok(t) => t,
                Err(_) => {
                    bad(shown, "not UTF-8".into(), errs);
                    return;
                }
            },
            Err(e) => {
                bad(shown, e.to_string(), errs);
                return;
            }
        };
        match Template::parse(&text) {
            Ok(t) => self.templates.entry((owner, page)).or_default().push((lang, t)),
            Err(reason) => bad(shown, reason, errs),
        }
    }

    /// The languages with a template of `page` for `owner` (`""`: all tenants).
    pub fn of(&self, owner: &str, page: Page) -> &[(Option<String>, Template)] {
        // The key is owned: look it up without building one per call
        // only when the map has entries (error path only).
        if self.templates.is_empty() {
            return &[];
        }
        self.templates
            .get(&(owner.to_string(), page))
            .map_or(&[], Vec::as_slice)
    }

    /// Whether no template was configured.
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_know_their_placeholders_and_refuse_others() {
        let t = Template::parse("<b>{{ name }}</b>{{status}}!").expect("valid");
        assert_eq!(
            t.0,
            vec![
                Segment::Text("<b>".into()),
                Segment::Var(Var::Name),
                Segment::Text("</b>".into()),
                Segment::Var(Var::Status),
                Segment::Text("!".into()),
            ]
        );
        assert!(Template::parse("{{ secret_key }}").is_err());
        assert!(Template::parse("<p>{{ name </p>").is_err());
    }
}
