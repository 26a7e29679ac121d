//! `GET /connect/{provider}` opened from another site: a confirmation page on our origin
//! that starts nothing, whose CSRF-protected Continue starts the flow; same-origin and
//! non-browser requests start it at once, as before; and the `reauth_required` link agents
//! show their users, opened cross-site, reaching the provider through that page.

use axum::http::StatusCode;
use strongbox::oauth::form_encode;

use crate::oauth::{Acme, Browser, acme};
use crate::support::{Site, count};

const PUBLIC: &str = "http://127.0.0.1:8080";

async fn flows(site: &Site) -> i64 {
    count(&site.url, "SELECT COUNT(*) FROM oauth_flow").await
}

/// Undoes the page's HTML escaping of an attribute value (the templates write numeric
/// character references).
fn unescape(s: &str) -> String {
    s.replace("&#60;", "<")
        .replace("&#62;", ">")
        .replace("&#34;", "\"")
        .replace("&#39;", "'")
        .replace("&#38;", "&")
}

/// The confirmation form of `html`: where it posts, and its hidden fields urlencoded, as
/// a browser would submit them.
fn confirm_form(html: &str) -> (String, String) {
    let attr = |tag: &str, name: &str| {
        tag.split(&format!("{name}=\""))
            .nth(1)
            .and_then(|v| v.split('"').next())
            .map(unescape)
            .unwrap_or_else(|| panic!("no {name} in {tag}"))
    };
    let form = html
        .split("<form method=\"post\" ")
        .nth(1)
        .unwrap_or_else(|| panic!("no form in {html}"));
    let action = attr(form, "action");
    let fields: Vec<String> = form
        .split("<input type=\"hidden\" ")
        .skip(1)
        .map(|input| {
            let tag = input.split('>').next().unwrap();
            format!(
                "{}={}",
                form_encode(&attr(tag, "name")),
                form_encode(&attr(tag, "value"))
            )
        })
        .collect();
    (action, fields.join("&"))
}

/// Opens `path` as a navigation from another site; asserts the confirmation page came
/// back and returns it.
async fn confirmation(b: &Browser, path: &str, cookie: &str) -> String {
    let (status, ctype, html) = b
        .raw(
            "GET",
            path,
            Some(cookie),
            &[
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "navigate"),
            ],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(ctype.starts_with("text/html"), "{ctype}");
    html
}

async fn cross_site_connect(site: Site) {
    let Acme { b, base, vault, .. } = acme(&site).await;
    let alice = b.sign_in().await;
    let me = b.send("GET", "/api/me", Some(&alice), &[]).await;
    let user_id = me.body["user"]["id"].as_str().unwrap().to_owned();
    let csrf = me.body["csrf_token"].as_str().unwrap().to_owned();
    let before = flows(&site).await;

    // Another site's link, a sibling subdomain, a foreign or opaque Origin: the page, with
    // everything it shows escaped, and no flow written.
    let marked = "/connect/acme?scopes=calendar,%3Cb%3Efiles%3C%2Fb%3E&return_to=/x%22%3E";
    for header in [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
        ("origin", "https://evil.example"),
        ("origin", "null"),
    ] {
        let (status, ctype, html) = b.raw("GET", marked, Some(&alice), &[header], "").await;
        assert_eq!(status, StatusCode::OK, "{header:?}: {html}");
        assert!(ctype.starts_with("text/html"), "{header:?}");
        for shown in [
            "Connect acme",
            "<code>openid</code>",
            "<code>calendar</code>",
            "<code>&#60;b&#62;files&#60;/b&#62;</code>",
            "<form method=\"post\" action=\"/connect/acme\">",
            &format!("name=\"csrf_token\" value=\"{csrf}\""),
            "value=\"/x&#34;&#62;\"",
            "<a class=\"button\" href=\"/\">Cancel</a>",
        ] {
            assert!(html.contains(shown), "{header:?}: {shown} not in {html}");
        }
        assert!(
            !html.contains("<b>") && !html.contains("<script"),
            "{header:?}"
        );
        assert_eq!(flows(&site).await, before, "{header:?}: a flow was written");
    }

    // Continue: the form posted back from our page starts the flow, at the provider.
    let html = confirmation(
        &b,
        "/connect/acme?scopes=calendar,contacts&return_to=/account",
        &alice,
    )
    .await;
    let (action, form) = confirm_form(&html);
    assert_eq!(action, "/connect/acme");
    // A cross-site post, with the token or without; a same-origin post without it or with
    // another session's: refused, nothing started.
    let bob = b.sign_in().await;
    let bob_csrf = b.send("GET", "/api/me", Some(&bob), &[]).await.body["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();
    for (headers, body) in [
        (vec![("origin", "https://evil.example")], form.clone()),
        (
            vec![("origin", "null"), ("sec-fetch-site", "cross-site")],
            form.clone(),
        ),
        (vec![("sec-fetch-site", "same-site")], form.clone()),
        (
            vec![("origin", PUBLIC)],
            "scopes=calendar%2Ccontacts".to_owned(),
        ),
        (
            vec![("origin", PUBLIC)],
            form.replace(&csrf, &form_encode(&bob_csrf)),
        ),
    ] {
        let r = b.post_form(&action, Some(&alice), &headers, &body).await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("csrf_failed")),
            "{headers:?} {body}"
        );
        assert_eq!(
            flows(&site).await,
            before,
            "{headers:?}: a flow was written"
        );
    }
    // From a no-referrer page a browser sends `Origin: null` with `Sec-Fetch-Site`.
    let r = b
        .post_form(
            &action,
            Some(&alice),
            &[("origin", "null"), ("sec-fetch-site", "same-origin")],
            &form,
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{:?}", r.body);
    let url = r.location.unwrap();
    assert!(
        url.starts_with(&format!("{base}/authorize?")) && url.contains("calendar+contacts"),
        "{url}"
    );
    assert_eq!(flows(&site).await, before + 1);
    let callback = b.authorize(&url).await;
    let done = b.send("GET", &callback, Some(&alice), &[]).await;
    assert_eq!(
        done.location.as_deref(),
        Some("/account"),
        "{:?}",
        done.body
    );
    let sealed = vault.load(&user_id, "acme").await.unwrap().unwrap();
    assert_eq!(sealed.scopes(), ["openid", "email", "calendar", "contacts"]);

    // Same-origin navigations (the account page's form), typed or bookmarked ones and
    // clients without fetch metadata start the flow at once, as before.
    let before = flows(&site).await;
    for headers in [
        vec![("sec-fetch-site", "same-origin")],
        vec![("sec-fetch-site", "none")],
        vec![("origin", PUBLIC)],
        vec![],
    ] {
        let r = b
            .send("GET", "/connect/acme?scopes=drive", Some(&alice), &headers)
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{headers:?}: {:?}", r.body);
        assert!(
            r.location
                .unwrap()
                .starts_with(&format!("{base}/authorize?")),
            "{headers:?}"
        );
    }
    assert_eq!(flows(&site).await, before + 4);

    // An unknown provider is still a 404, also cross-site; signed out is still a 401.
    let (status, _, _) = b
        .raw(
            "GET",
            "/connect/nope",
            Some(&alice),
            &[("sec-fetch-site", "cross-site")],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let r = b
        .send(
            "GET",
            "/connect/acme",
            None,
            &[("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

/// The `url` of a `reauth_required` (or `not_connected`, `insufficient_scope`) problem,
/// which a user opens from wherever the agent showed it: cross-site.
async fn reauth_link(site: Site) {
    let Acme {
        b,
        base,
        vault,
        state,
        ..
    } = acme(&site).await;
    let alice = b.sign_in().await;
    let me = b.send("GET", "/api/me", Some(&alice), &[]).await;
    let user_id = me.body["user"]["id"].as_str().unwrap().to_owned();
    let link = state.oauth.connect_url("acme", &["calendar".into()]);
    let path = link.strip_prefix(PUBLIC).unwrap();

    let html = confirmation(&b, path, &alice).await;
    assert!(html.contains("<code>calendar</code>"), "{html}");
    let (action, form) = confirm_form(&html);
    let r = b
        .post_form(
            &action,
            Some(&alice),
            &[("origin", "null"), ("sec-fetch-site", "same-origin")],
            &form,
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{:?}", r.body);
    let url = r.location.unwrap();
    assert!(url.starts_with(&format!("{base}/authorize?")), "{url}");
    let callback = b.authorize(&url).await;
    let done = b.send("GET", &callback, Some(&alice), &[]).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{:?}", done.body);
    let sealed = vault.load(&user_id, "acme").await.unwrap().unwrap();
    assert!(
        sealed.scopes().contains(&"calendar"),
        "{:?}",
        sealed.scopes()
    );
}

mod cross_site_connect_is_confirmed {
    use crate::support::{Engine, Site};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::cross_site_connect(Site::new(Engine::Sqlite).await.unwrap()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        if let Some(site) = Site::new(Engine::Postgres).await {
            super::cross_site_connect(site).await;
        }
    }
}

mod reauth_link_opened_cross_site {
    use crate::support::{Engine, Site};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::reauth_link(Site::new(Engine::Sqlite).await.unwrap()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        if let Some(site) = Site::new(Engine::Postgres).await {
            super::reauth_link(site).await;
        }
    }
}
