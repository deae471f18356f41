//! Parses big config files without building a tree of the whole document.
//!
//! `toml::from_str` first turns the whole text into a document tree and only
//! then deserialises it. For a config of 100,000 tenants (12.8 MB of TOML)
//! that tree makes the heap peak near 300 MB, while the resulting
//! [`File`] needs about 50 MB. Almost all of such a file is `[[tenants]]`
//! blocks, and each block stands on its own, so this module:
//!
//! 1. finds the top-level table headers with `toml_parser`, the lexer and
//!    event parser `toml` itself is built on, so strings, comments and
//!    multi-line arrays cannot fool it. The lexer streams; the event parser
//!    runs on a bounded window of tokens that ends at a newline it accepts
//!    as top-level;
//! 2. deserialises the tenants blocks in batches of [`BATCH`] tenants (fewer
//!    if they are big), each block running from its `[[tenants]]` header up
//!    to the next header that is not a `[tenants.…]` sub-table;
//! 3. deserialises everything else as one document and puts the tenants in.
//!
//! The peak is then the model plus one batch's tree. The result equals
//! `toml::from_str::<File>` of the whole text: whenever this module is not
//! sure that it does (`tenants` defined some other way, a `[tenants.…]`
//! table away from its tenant, …) and on every error, it parses the whole
//! text with `toml::from_str` instead, so that users see toml's usual
//! messages with the right line numbers.

use std::borrow::Cow;

use serde::Deserialize;
use toml_parser::decoder::Encoding;
use toml_parser::lexer::{Token, TokenKind};
use toml_parser::parser::{parse_document, EventReceiver};
use toml_parser::{ErrorSink, ParseError, Raw, Source, Span};

use super::file::{File, TenantSection};

/// Texts shorter than this are parsed in one go.
const SMALL: usize = 256 * 1024;
/// Tokens the event parser looks at in one go (about 1.5 MB of tokens).
const WINDOW_TOKENS: usize = 1 << 16;
/// Tenants deserialised per `toml::from_str` call.
const BATCH: usize = 1000;
/// A batch also ends once it has this much text (tenants with many domains).
const BATCH_BYTES: usize = 512 * 1024;

/// Parses a config file; same result and errors as `toml::from_str`.
pub(super) fn from_str(text: &str) -> Result<File, toml::de::Error> {
    if text.len() >= SMALL {
        if let Some(file) = chunked(text, WINDOW_TOKENS, BATCH) {
            return Ok(file);
        }
    }
    toml::from_str(text)
}

/// The tenants part of a batch of `[[tenants]]` blocks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    tenants: Vec<TenantSection>,
}

/// The chunked parse; `None` when the caller must parse the whole text.
fn chunked(text: &str, window_tokens: usize, batch: usize) -> Option<File> {
    let mut scan = Scan::new(text);
    let mut split = Split::new(text, batch);
    let mut tokens: Vec<Token> = Vec::with_capacity(window_tokens.saturating_add(1));
    let mut next_try = window_tokens;
    for token in Source::new(text).lex() {
        let newline = token.kind() == TokenKind::Newline;
        tokens.push(token);
        if newline && tokens.len() >= next_try {
            if scan.run(&tokens) {
                split.take(&mut scan.items)?;
                tokens.clear();
                next_try = window_tokens;
            } else {
                // Inside a multi-line value, or a broken document: look
                // further. Doubling keeps the retries linear overall.
                next_try = tokens.len().saturating_mul(2);
            }
        }
    }
    if !scan.run(&tokens) {
        return None;
    }
    split.take(&mut scan.items)?;
    drop(tokens);
    split.finish()
}

/// What a top-level table header opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `[[tenants]]`
    Tenant,
    /// `[tenants.…]` or `[[tenants.…]]`: part of the last tenant.
    TenantSub,
    /// `[tenants]`: never valid next to `[[tenants]]`.
    TenantsTable,
    /// Any other table.
    Other,
}

/// What [`Scan`] reports, in document order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    /// A table header starting at this byte.
    Header { start: usize, kind: Kind },
    /// A key-value line whose first key is `tenants`, in whatever table is
    /// open at that point.
    TenantsKey,
}

/// A table header whose closing bracket has not come yet.
struct OpenHeader {
    /// Byte of its first `[`.
    start: usize,
    /// `[[…]]`
    array: bool,
    /// Keys read so far.
    keys: usize,
    /// The first key is `tenants`.
    tenants: bool,
}

/// Receives the event parser's events for a window of tokens.
struct Scan<'s> {
    text: &'s str,
    /// Nesting of arrays and inline tables in the current value.
    depth: usize,
    /// The next key at depth 0 starts a key-value line.
    line_start: bool,
    /// The header being read.
    header: Option<OpenHeader>,
    items: Vec<Item>,
    failed: bool,
}

impl<'s> Scan<'s> {
    fn new(text: &'s str) -> Self {
        Self {
            text,
            depth: 0,
            line_start: true,
            header: None,
            items: Vec::new(),
            failed: false,
        }
    }

    /// Runs the event parser over `tokens`, which start at the start of a
    /// top-level line. True when they parse without error and end outside
    /// any value or header, i.e. at a top-level line end or the text's end.
    /// The lexer needs no context, so these are the tokens the whole text
    /// has there, and the events are those a parse of the whole text gives.
    fn run(&mut self, tokens: &[Token]) -> bool {
        self.depth = 0;
        self.line_start = true;
        self.header = None;
        self.items.clear();
        self.failed = false;
        let mut errors = false;
        parse_document(tokens, self, &mut |_: ParseError| errors = true);
        !errors && !self.failed && self.depth == 0 && self.header.is_none()
    }

    /// Whether the key at `span` is `tenants`; `None` if it does not decode.
    fn is_tenants(&self, span: Span, encoding: Option<Encoding>) -> Option<bool> {
        let raw = self.text.get(span.start()..span.end())?;
        if encoding.is_none() {
            return Some(raw == "tenants");
        }
        let mut key: Cow<'s, str> = Cow::Borrowed("");
        let mut bad = false;
        Raw::new_unchecked(raw, encoding, span).decode_key(&mut key, &mut |_: ParseError| bad = true);
        (!bad).then(|| key == "tenants")
    }

    fn open(&mut self, span: Span, array: bool) {
        if self.header.is_some() || self.depth != 0 {
            self.failed = true;
        }
        self.header = Some(OpenHeader {
            start: span.start(),
            array,
            keys: 0,
            tenants: false,
        });
    }

    fn close(&mut self) {
        let Some(h) = self.header.take() else {
            self.failed = true;
            return;
        };
        let kind = match (h.tenants, h.keys, h.array) {
            (false, _, _) => Kind::Other,
            (true, 1, true) => Kind::Tenant,
            (true, 1, false) => Kind::TenantsTable,
            (true, _, _) => Kind::TenantSub,
        };
        self.items.push(Item::Header { start: h.start, kind });
    }
}

impl EventReceiver for Scan<'_> {
    fn std_table_open(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        self.open(span, false);
    }
    fn std_table_close(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        self.close();
    }
    fn array_table_open(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        self.open(span, true);
    }
    fn array_table_close(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        self.close();
    }
    fn inline_table_open(&mut self, _span: Span, _error: &mut dyn ErrorSink) -> bool {
        self.depth += 1;
        true
    }
    fn inline_table_close(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        self.close_value();
    }
    fn array_open(&mut self, _span: Span, _error: &mut dyn ErrorSink) -> bool {
        self.depth += 1;
        true
    }
    fn array_close(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        self.close_value();
    }
    fn simple_key(&mut self, span: Span, encoding: Option<Encoding>, _error: &mut dyn ErrorSink) {
        if let Some(first) = self.header.as_ref().map(|h| h.keys == 0) {
            let tenants = first
                && self.is_tenants(span, encoding).unwrap_or_else(|| {
                    self.failed = true;
                    false
                });
            if let Some(h) = self.header.as_mut() {
                h.tenants |= tenants;
                h.keys += 1;
            }
        } else if self.depth == 0 && self.line_start {
            self.line_start = false;
            match self.is_tenants(span, encoding) {
                Some(true) => self.items.push(Item::TenantsKey),
                Some(false) => {}
                None => self.failed = true,
            }
        }
    }
    fn newline(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        if self.depth == 0 {
            self.line_start = true;
        }
    }
    fn error(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        self.failed = true;
    }
}

impl Scan<'_> {
    fn close_value(&mut self) {
        match self.depth.checked_sub(1) {
            Some(d) => self.depth = d,
            None => self.failed = true,
        }
    }
}

/// Which part of the text the current segment (header to next header)
/// belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The rest document: text before the first header and non-tenant tables.
    Rest,
    /// A tenant block.
    Tenants,
}

/// Sorts segments into the rest document and batches of tenant blocks,
/// deserialising each batch once it is complete.
struct Split<'s> {
    text: &'s str,
    batch: usize,
    rest: String,
    tenants: Vec<TenantSection>,
    part: Part,
    /// Start of the current segment.
    start: usize,
    seen_header: bool,
    /// Start of the current batch and its tenant count.
    batch_start: usize,
    batch_len: usize,
}

impl<'s> Split<'s> {
    fn new(text: &'s str, batch: usize) -> Self {
        Self {
            text,
            batch: batch.max(1),
            rest: String::new(),
            // Room for every tenant at once (a header in a comment or a
            // string only asks for a little more): a vector of 100,000
            // sections grown by doubling holds the old and the new copy
            // together at each step.
            tenants: Vec::with_capacity(text.matches("[[tenants]]").count()),
            part: Part::Rest,
            start: 0,
            seen_header: false,
            batch_start: 0,
            batch_len: 0,
        }
    }

    /// Takes the items of one accepted window.
    fn take(&mut self, items: &mut Vec<Item>) -> Option<()> {
        for item in items.drain(..) {
            match item {
                // Only at the root does such a key define `tenants`.
                Item::TenantsKey if !self.seen_header => return None,
                Item::TenantsKey => {}
                Item::Header { start, kind } => self.header(start, kind)?,
            }
        }
        Some(())
    }

    fn header(&mut self, at: usize, kind: Kind) -> Option<()> {
        self.seen_header = true;
        match (kind, self.part) {
            (Kind::TenantsTable, _) | (Kind::TenantSub, Part::Rest) => return None,
            (Kind::TenantSub, Part::Tenants) => return Some(()),
            (Kind::Tenant | Kind::Other, _) => {}
        }
        self.end_segment(at)?;
        if kind == Kind::Tenant {
            if self.batch_len >= self.batch || at.saturating_sub(self.batch_start) >= BATCH_BYTES {
                self.flush(at)?;
            }
            if self.batch_len == 0 {
                self.batch_start = at;
            }
            self.batch_len += 1;
            self.part = Part::Tenants;
        } else {
            self.flush(at)?;
            self.part = Part::Rest;
        }
        self.start = at;
        Some(())
    }

    /// Ends the current segment at byte `at`.
    fn end_segment(&mut self, at: usize) -> Option<()> {
        if self.part == Part::Rest {
            self.rest.push_str(self.text.get(self.start..at)?);
        }
        Some(())
    }

    /// Deserialises the current batch, which ends at byte `at`.
    fn flush(&mut self, at: usize) -> Option<()> {
        if self.batch_len == 0 {
            return Some(());
        }
        let text = self.text.get(self.batch_start..at)?;
        let mut batch: Batch = toml::from_str(text).ok()?;
        if batch.tenants.len() != self.batch_len {
            return None;
        }
        self.tenants.append(&mut batch.tenants);
        self.batch_len = 0;
        Some(())
    }

    fn finish(mut self) -> Option<File> {
        let end = self.text.len();
        self.end_segment(end)?;
        self.flush(end)?;
        let mut file: File = toml::from_str(&self.rest).ok()?;
        if !file.tenants.is_empty() {
            return None;
        }
        file.tenants = self.tenants;
        Some(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::generate::{generate, Spec};

    fn spec(tenants: usize) -> Spec {
        Spec {
            tenants,
            domains_per_tenant: 2,
            upstreams: vec!["127.0.0.1:9001".into(), "127.0.0.1:9002".into()],
            http_listen: "127.0.0.1:8080".into(),
            metrics_listen: Some("127.0.0.1:9100".into()),
        }
    }

    fn full(text: &str) -> String {
        format!("{:?}", toml::from_str::<File>(text))
    }

    /// Asserts that the chunked parse takes `text` (with large and with tiny
    /// windows and batches) and gives toml's result.
    fn same_chunked(text: &str) {
        let want = full(text);
        assert!(want.starts_with("Ok("), "test document is invalid: {want}");
        for (window, batch) in [(WINDOW_TOKENS, BATCH), (1, 1), (7, 2), (50, 3), (1000, 1000)] {
            match chunked(text, window, batch) {
                Some(got) => assert_eq!(format!("Ok({got:?})"), want),
                None => panic!("fell back with window {window}, batch {batch}"),
            }
        }
        assert_eq!(format!("{:?}", from_str(text)), want);
    }

    /// Asserts that the chunked parse gives up on `text` and that
    /// [`from_str`] still gives toml's result.
    fn falls_back(text: &str) {
        for (window, batch) in [(WINDOW_TOKENS, BATCH), (1, 1), (7, 2)] {
            assert!(chunked(text, window, batch).is_none(), "window {window}, batch {batch}");
        }
        assert_eq!(format!("{:?}", from_str(text)), full(text));
    }

    /// A valid head (gateway, telemetry, one pool).
    const HEAD: &str = "[gateway]\nhttp_listen = \"127.0.0.1:8080\"\nbase_domains = [\"saas.example\"]\n\n\
                        [telemetry]\naccess_log = false\n\n[pools.shared]\nupstreams = [\"127.0.0.1:9001\"]\n\n";

    fn tenants(from: usize, to: usize) -> String {
        (from..to)
            .map(|i| format!("[[tenants]]\nid = \"t{i}\"\nsubdomain = \"t{i}\"\npool = \"shared\"\n\n"))
            .collect()
    }

    #[test]
    fn generated_config() {
        let text = generate(&spec(3000));
        assert!(text.len() >= SMALL);
        same_chunked(&text);
        let file = chunked(&text, WINDOW_TOKENS, BATCH).map(|f| f.tenants.len());
        assert_eq!(file, Some(3000));
    }

    #[test]
    fn tables_after_and_between_tenants() {
        let text = format!(
            "{HEAD}{}[pools.x]\nupstreams = [\"127.0.0.1:9002\"]\n\n{}[tls]\nissuer = \"internal\"\n\
             [tls.acme]\ndirectory_url = \"https://acme.example/dir\"\n{}[pools.y]\nupstreams = []\n",
            tenants(0, 2500),
            tenants(2500, 2503),
            tenants(2503, 2504),
        );
        same_chunked(&text);
    }

    #[test]
    fn no_tenants_and_no_headers() {
        same_chunked(HEAD);
        same_chunked("gateway = { http_listen = \"127.0.0.1:1\" }\n");
        same_chunked("gateway.http_listen = \"127.0.0.1:1\"\n[[tenants]]\nid = \"a\"\npool = \"p\"\n");
    }

    #[test]
    fn multi_line_strings_and_arrays() {
        let text = format!(
            "[gateway]\nhttp_listen = \"127.0.0.1:8080\"\ntenant_header = \"\"\"\n[[tenants]]\nid = \"x\"\n\"\"\"\n\
             base_domains = [\n  \"a.example\",\n[[tenants]]\n]\n{}\
             [[tenants]]\nid = \"ml\"\nsubdomain = '''\n[[tenants]]\n[pools.z]\n'''\npool = \"shared\"\n\
             domains = [\n  \"a.example\",\n  # [[tenants]]\n  \"b.example\", ]\n\n{}[pools.shared]\nupstreams = [\n\"127.0.0.1:9001\"\n]\n",
            tenants(0, 5),
            tenants(5, 9),
        );
        // The `[[tenants]]` inside `base_domains` makes it invalid.
        assert!(full(&text).starts_with("Err("));
        assert_eq!(format!("{:?}", from_str(&text)), full(&text));
        let text = text.replace(",\n[[tenants]]\n]", ",\n]");
        same_chunked(&text);
    }

    #[test]
    fn comments_and_odd_spelling() {
        let text = format!(
            "\u{feff}# [[tenants]]\n{HEAD}# before\n[[tenants]] # one\nid = \"a\" # [[tenants]]\npool = \"shared\"\n\
             # [pools.q]\n  [[ tenants ]]\nid = \"b\"\npool = \"shared\"\n[[\"tenants\"]]\nid = \"c\"\npool = \"shared\"\n\
             [['tenants']]\r\nid = \"d\"\r\npool = \"shared\"\r\n[[\"\\u0074enants\"]]\nid = \"e\"\npool = \"shared\"\n\
             [\"pools\" . r]\nupstreams = []\n{}# trailing [[tenants]]",
            tenants(0, 3)
        );
        same_chunked(&text);
        let got = chunked(&text, 1, 1).map(|f| f.tenants.len());
        assert_eq!(got, Some(8));
    }

    #[test]
    fn invalid_documents_give_tomls_message() {
        let good = format!("{HEAD}{}", tenants(0, 3000));
        let cases = [
            good.replace("id = \"t1500\"", "id = \"t1500\"\ncolour = \"red\""),
            good.replace("id = \"t1500\"", "id = \"t1500"),
            good.replace("id = \"t1500\"", "id = \"t1500\"\nid = \"again\""),
            good.replace(
                "pool = \"shared\"\n\n[[tenants]]\nid = \"t2999\"",
                "pool = [\n\n[[tenants]]\nid = \"t2999\"",
            ),
            format!("{good}[pools.shared]\nupstreams = []\n"),
            format!("{good}[gateway.extra]\n"),
            format!("{good}[[tenants]]\n"),
            good.replace("[gateway]\n", "[gateway]\nthreads = \"x\"\n"),
            good.replace("[gateway]\n", ""),
            format!("{}\u{feff}{good}", "#\n"),
        ];
        for text in &cases {
            let want = toml::from_str::<File>(text).map(|_| ()).map_err(|e| e.to_string());
            assert!(want.is_err(), "case is valid: {text:.200}");
            let got = from_str(text).map(|_| ()).map_err(|e| e.to_string());
            assert_eq!(got, want);
            assert!(chunked(text, 7, 2).is_none());
        }
    }

    #[test]
    fn tenants_defined_elsewhere_falls_back() {
        let body = tenants(0, 10);
        // Root keys named `tenants`; the full parse rejects these.
        falls_back(&format!("tenants = []\n{HEAD}{body}"));
        falls_back(&format!("\"tenants\" = []\n{HEAD}{body}"));
        falls_back(&format!("tenants.x = 1\n{HEAD}{body}"));
        // `[tenants]` and stray sub-tables.
        falls_back(&format!("{HEAD}{body}[tenants]\n"));
        falls_back(&format!("{HEAD}[tenants.limits]\n{body}"));
        falls_back(&format!("{HEAD}{body}[pools.x]\nupstreams = []\n[tenants.limits]\n"));
        // A `tenants` key inside another table is no concern.
        same_chunked(&format!("{HEAD}{body}"));
    }

    #[test]
    fn sub_tables_stay_with_their_tenant() {
        let text = format!(
            "{HEAD}[[tenants]]\nid = \"a\"\npool = \"shared\"\n[tenants.limits]\nrps = 1\n\
             [[tenants.rules]]\nx = 1\n[tenants . \"more\"]\n[[tenants]]\nid = \"b\"\npool = \"shared\"\n[pools.z]\n"
        );
        let mut scan = Scan::new(&text);
        let mut tokens: Vec<Token> = Source::new(&text).lex().collect();
        assert!(scan.run(&tokens));
        let kinds: Vec<Kind> = scan
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Header { kind, .. } => Some(*kind),
                Item::TenantsKey => None,
            })
            .collect();
        use Kind::*;
        assert_eq!(
            kinds,
            [Other, Other, Other, Tenant, TenantSub, TenantSub, TenantSub, Tenant, Other]
        );
        // `TenantSection` has no sub-tables yet: the error is toml's.
        let want = toml::from_str::<File>(&text).map(|_| ()).map_err(|e| e.to_string());
        assert!(want.is_err());
        assert_eq!(from_str(&text).map(|_| ()).map_err(|e| e.to_string()), want);

        // A window that ends inside a value is refused.
        let text = "a = [\n1,\n]\nb = \"\"\"\nx\n\"\"\"\n";
        tokens = Source::new(text).lex().collect();
        let cut = |n: usize| tokens.iter().filter(|t| t.kind() == TokenKind::Newline).nth(n);
        let mut scan = Scan::new(text);
        for n in [0, 1] {
            let end = cut(n).map(|t| t.span().end());
            let len = tokens.iter().take_while(|t| Some(t.span().end()) != end).count() + 1;
            assert!(!scan.run(&tokens[..len]), "cut after newline {n}");
        }
        let end = cut(2).map(|t| t.span().end());
        let len = tokens.iter().take_while(|t| Some(t.span().end()) != end).count() + 1;
        assert!(scan.run(&tokens[..len]));
    }
}
