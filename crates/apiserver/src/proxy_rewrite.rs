//! Link rewriting of proxied answers, as upstream's proxy transport does for
//! `pods/{id}/proxy`, `services/{id}/proxy` and `nodes/{id}/proxy`: an HTML page served
//! by a pod links to `/style.css`; seen through the API server it must link to
//! `/api/v1/namespaces/ns/pods/p/proxy/style.css`. The same holds for the `Location`
//! of a redirect.
//!
//! What is rewritten: URL attributes of the HTML elements that carry links (`a href`,
//! `img src`, `form action`, ...), when the URL has an absolute path and either no host
//! or the target's (or the request's) host. Relative URLs and other hosts' URLs are
//! left alone. The page is otherwise returned byte for byte; contents of `script` and
//! `style` elements and comments are not touched. Pure functions, no I/O.

/// The path prefix and hosts of one proxied request.
#[derive(Debug, Clone)]
pub struct Rewriter {
    /// What the API server's path adds in front of the target's path
    /// (`/api/v1/namespaces/ns/pods/p/proxy`).
    pub prefix: String,
    /// `host:port` the request was forwarded to.
    pub target_host: String,
    /// The `Host` the client addressed the API server with.
    pub request_host: String,
}

/// Element → attributes holding URLs (the HTML elements upstream rewrites).
const URL_ATTRIBUTES: &[(&str, &[&str])] = &[
    ("a", &["href"]),
    ("applet", &["codebase"]),
    ("area", &["href"]),
    ("audio", &["src"]),
    ("base", &["href"]),
    ("blockquote", &["cite"]),
    ("body", &["background"]),
    ("button", &["formaction"]),
    ("command", &["icon"]),
    ("del", &["cite"]),
    ("embed", &["src"]),
    ("form", &["action"]),
    ("frame", &["longdesc", "src"]),
    ("head", &["profile"]),
    ("html", &["manifest"]),
    ("iframe", &["longdesc", "src"]),
    ("img", &["longdesc", "src", "usemap"]),
    ("input", &["src", "usemap", "formaction"]),
    ("ins", &["cite"]),
    ("link", &["href"]),
    ("object", &["classid", "codebase", "data", "usemap"]),
    ("q", &["cite"]),
    ("script", &["src"]),
    ("source", &["src"]),
    ("video", &["poster", "src"]),
];

/// The prefix the API server adds: the request path without the part that was
/// forwarded (`request_path` ends with `forwarded_path`, give or take a final `/`).
pub fn path_prefix(request_path: &str, forwarded_path: &str) -> String {
    let mut suffix = forwarded_path.to_string();
    if request_path.ends_with('/') && !suffix.ends_with('/') {
        suffix.push('/');
    }
    request_path
        .strip_suffix(suffix.as_str())
        .unwrap_or(request_path)
        .to_string()
}

/// Whether a response of this `Content-Type` is an HTML page to rewrite.
pub fn is_html(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/html"))
}

/// `path` cleaned as Go's `path.Clean` does (`.`/`..`/repeated slashes; absolute).
fn clean(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

impl Rewriter {
    /// `url` as the client must see it (unchanged when it is not the target's).
    pub fn rewrite_url(&self, url: &str) -> String {
        // Split `scheme://host` / `//host`, the path, and `?query#fragment`.
        let (scheme, after_scheme) = match url.find("://") {
            Some(i)
                if url[..i]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                    && i > 0 =>
            {
                (&url[..i], &url[i + 3..])
            }
            _ => ("", url),
        };
        let (host, rest) = if !scheme.is_empty() {
            let end = after_scheme
                .find(['/', '?', '#'])
                .unwrap_or(after_scheme.len());
            (&after_scheme[..end], &after_scheme[end..])
        } else if let Some(r) = url.strip_prefix("//") {
            let end = r.find(['/', '?', '#']).unwrap_or(r.len());
            (&r[..end], &r[end..])
        } else {
            ("", url)
        };
        let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
        let (path, tail) = (&rest[..path_end], &rest[path_end..]);
        let other_host = !host.is_empty() && host != self.target_host && host != self.request_host;
        if other_host || !path.starts_with('/') {
            return url.to_string();
        }
        // The request's own host keeps its scheme and host; the target's are dropped
        // (the client reaches the page through the API server's path, not the target).
        let origin = if !host.is_empty() && host == self.request_host {
            if scheme.is_empty() {
                format!("//{host}")
            } else {
                format!("{scheme}://{host}")
            }
        } else {
            String::new()
        };
        if path.starts_with(self.prefix.as_str()) && !self.prefix.is_empty() {
            return format!("{origin}{path}{tail}");
        }
        let mut joined = clean(&format!("{}/{}", self.prefix, path));
        if path.ends_with('/') && !joined.ends_with('/') {
            joined.push('/');
        }
        format!("{origin}{joined}{tail}")
    }

    /// The HTML page with its links rewritten (see the module docs).
    pub fn rewrite_html(&self, page: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(page.len() + 256);
        let mut copied = 0; // page[..copied] is in `out`
        let mut i = 0;
        while let Some(off) = page[i..].iter().position(|&b| b == b'<') {
            let start = i + off;
            let rest = &page[start..];
            if rest.starts_with(b"<!--") {
                i = find(page, start + 4, b"-->").map_or(page.len(), |e| e + 3);
                continue;
            }
            if rest.starts_with(b"<!") || rest.starts_with(b"<?") || rest.starts_with(b"</") {
                i = find(page, start + 2, b">").map_or(page.len(), |e| e + 1);
                continue;
            }
            let name_end = start
                + 1
                + rest[1..]
                    .iter()
                    .position(|b| !b.is_ascii_alphanumeric())
                    .unwrap_or(rest.len() - 1);
            if name_end == start + 1 {
                i = start + 1;
                continue;
            }
            let name = String::from_utf8_lossy(&page[start + 1..name_end]).to_ascii_lowercase();
            let attrs = URL_ATTRIBUTES
                .iter()
                .find(|(t, _)| *t == name)
                .map_or(&[][..], |(_, a)| *a);
            // Attributes up to the end of the tag.
            let mut j = name_end;
            loop {
                while j < page.len() && page[j].is_ascii_whitespace() {
                    j += 1;
                }
                if j >= page.len() || page[j] == b'>' {
                    break;
                }
                if page[j] == b'/' {
                    j += 1;
                    continue;
                }
                let an_start = j;
                while j < page.len()
                    && !page[j].is_ascii_whitespace()
                    && !matches!(page[j], b'=' | b'>' | b'/')
                {
                    j += 1;
                }
                let attr = String::from_utf8_lossy(&page[an_start..j]).to_ascii_lowercase();
                let mut k = j;
                while k < page.len() && page[k].is_ascii_whitespace() {
                    k += 1;
                }
                if k >= page.len() || page[k] != b'=' {
                    if j == an_start {
                        j += 1; // a stray character: never loop on it
                    }
                    continue;
                }
                k += 1;
                while k < page.len() && page[k].is_ascii_whitespace() {
                    k += 1;
                }
                let (v_start, v_end, next) = match page.get(k) {
                    Some(&q @ (b'"' | b'\'')) => {
                        let end = page[k + 1..]
                            .iter()
                            .position(|&b| b == q)
                            .map_or(page.len(), |p| k + 1 + p);
                        (k + 1, end, (end + 1).min(page.len()))
                    }
                    _ => {
                        let end = page[k..]
                            .iter()
                            .position(|b| b.is_ascii_whitespace() || *b == b'>')
                            .map_or(page.len(), |p| k + p);
                        (k, end, end)
                    }
                };
                if attrs.contains(&attr.as_str()) {
                    if let Ok(value) = std::str::from_utf8(&page[v_start..v_end]) {
                        let new = self.rewrite_url(value);
                        if new != value {
                            out.extend_from_slice(&page[copied..v_start]);
                            out.extend_from_slice(new.as_bytes());
                            copied = v_end;
                        }
                    }
                }
                j = next;
            }
            i = (j + 1).min(page.len());
            // Raw text elements: their contents are not markup.
            if name == "script" || name == "style" {
                let close = format!("</{name}");
                i = find_ci(page, i, close.as_bytes()).unwrap_or(page.len());
            }
        }
        out.extend_from_slice(&page[copied..]);
        out
    }
}

fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

fn find_ci(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
        .map(|p| from + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Rewriter {
        Rewriter {
            prefix: "/api/v1/namespaces/ns/pods/p/proxy".into(),
            target_host: "10.42.0.5:80".into(),
            request_host: "127.0.0.1:6443".into(),
        }
    }

    #[test]
    fn prefixes_as_upstream_computes_them() {
        let p = "/api/v1/namespaces/ns/pods/p/proxy";
        assert_eq!(path_prefix(&format!("{p}/"), "/"), p);
        assert_eq!(path_prefix(&format!("{p}/a/b"), "/a/b"), p);
        assert_eq!(path_prefix(&format!("{p}/a/"), "/a"), p);
        assert_eq!(path_prefix(p, "/"), p);
    }

    #[test]
    fn urls() {
        let r = pod();
        let p = "/api/v1/namespaces/ns/pods/p/proxy";
        assert_eq!(r.rewrite_url("/rewriteme"), format!("{p}/rewriteme"));
        assert_eq!(r.rewrite_url("/a/b/?x=1#f"), format!("{p}/a/b/?x=1#f"));
        assert_eq!(r.rewrite_url("/"), format!("{p}/"));
        assert_eq!(r.rewrite_url("/x/../y"), format!("{p}/y"));
        assert_eq!(r.rewrite_url("http://10.42.0.5:80/z"), format!("{p}/z"));
        assert_eq!(
            r.rewrite_url("https://127.0.0.1:6443/z"),
            format!("https://127.0.0.1:6443{p}/z")
        );
        assert_eq!(
            r.rewrite_url(&format!("{p}/already")),
            format!("{p}/already")
        );
        for same in [
            "relative/x",
            "http://example.com/x",
            "#top",
            "mailto:a@b",
            "",
        ] {
            assert_eq!(r.rewrite_url(same), same);
        }
    }

    #[test]
    fn html_links_only() {
        let r = pod();
        let p = "/api/v1/namespaces/ns/pods/p/proxy";
        let page = br#"<html><A HREF="/rewriteme">test</A> <img src='/i.png' alt="/no">
<a href=/bare>x</a><!-- <a href="/comment"> --><script>var u = "<a href='/js'>";</script>
<p data-x="/keep">/text</p><form action="/post" method=post></form><a name=x></a></html>"#;
        let out = String::from_utf8(r.rewrite_html(page)).unwrap();
        assert_eq!(
            out,
            format!(
                r#"<html><A HREF="{p}/rewriteme">test</A> <img src='{p}/i.png' alt="/no">
<a href={p}/bare>x</a><!-- <a href="/comment"> --><script>var u = "<a href='/js'>";</script>
<p data-x="/keep">/text</p><form action="{p}/post" method=post></form><a name=x></a></html>"#
            )
        );
    }

    #[test]
    fn broken_markup_never_panics() {
        let r = pod();
        for page in [
            &b"<"[..],
            b"<a",
            b"<a href",
            b"<a href=",
            b"<a href=\"/x",
            b"<a =\"/x\">",
            b"<a/href='/y'",
            b"<!--",
            b"<script>",
            b"<a \xff\xfe href=\"/\xff\">",
            b"<<<>>>",
        ] {
            let _ = r.rewrite_html(page);
        }
        assert_eq!(
            r.rewrite_html(b"<a href=\"/x"),
            b"<a href=\"/api/v1/namespaces/ns/pods/p/proxy/x".to_vec()
        );
    }

    #[test]
    fn content_types() {
        assert!(is_html("text/html"));
        assert!(is_html("text/html; charset=utf-8"));
        assert!(is_html("TEXT/HTML"));
        assert!(!is_html("text/plain"));
        assert!(!is_html("application/json"));
    }
}
