//! CORS for browser applications on other origins, by tower-http's layer, plus a filter
//! that keeps every CORS header from origins that are not allowed.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The origins allowed by `--cors-allow-origin`, checked at start.
#[derive(Debug, Clone, Default)]
pub struct CorsPolicy {
    /// `*`: any origin.
    any: bool,
    /// Explicit origins (without a trailing `/`).
    origins: Vec<HeaderValue>,
}

impl CorsPolicy {
    /// The policy of the configured origins. Refuses `*` beside explicit origins (which
    /// would silently allow every origin) and origins that cannot be a header value.
    pub fn new(origins: &[String]) -> anyhow::Result<Self> {
        let any = origins.iter().any(|o| o.trim() == "*");
        if any && origins.len() > 1 {
            anyhow::bail!(
                "--cors-allow-origin: '*' allows every origin; give it alone, or list origins without it"
            );
        }
        let origins = if any {
            Vec::new()
        } else {
            origins
                .iter()
                .map(|o| {
                    let o = o.trim().trim_end_matches('/');
                    if o.is_empty() {
                        anyhow::bail!("--cors-allow-origin: an empty origin");
                    }
                    HeaderValue::from_str(o).map_err(|_| {
                        anyhow::anyhow!("--cors-allow-origin: '{o}' is not a valid origin")
                    })
                })
                .collect::<anyhow::Result<_>>()?
        };
        Ok(CorsPolicy { any, origins })
    }

    /// Whether CORS is on.
    pub fn is_on(&self) -> bool {
        self.any || !self.origins.is_empty()
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        self.any || self.origins.contains(origin)
    }
}

/// The CORS layer of `policy`; with no origins, a layer that adds nothing.
///
/// Preflights are answered for every route (methods, and the headers clients send:
/// `Authorization`, `X-API-Key`, `Content-Type`, `Accept`, `X-Request-Id`); `Retry-After`
/// and `X-Request-Id` are readable by scripts. Credentials (cookies) are not allowed: keys
/// travel in headers.
pub fn layer(policy: &CorsPolicy) -> CorsLayer {
    if !policy.is_on() {
        return CorsLayer::new();
    }
    let allow = if policy.any {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(policy.origins.clone())
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([header::RETRY_AFTER, HeaderName::from_static("x-request-id")])
        .max_age(std::time::Duration::from_secs(600))
}

/// Middleware outside the CORS layer: a request from an origin that is not allowed gets no
/// `Access-Control-*` header at all (tower-http's layer leaves out only the allowed origin,
/// but still answers with the allowed methods, headers and exposed headers).
pub async fn only_allowed(
    State(policy): State<Arc<CorsPolicy>>,
    req: Request,
    next: Next,
) -> Response {
    let refused = req
        .headers()
        .get(header::ORIGIN)
        .is_some_and(|o| !policy.allows(o));
    let mut resp = next.run(req).await;
    if refused {
        let names: Vec<HeaderName> = resp
            .headers()
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for n in names {
            resp.headers_mut().remove(n);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_alone_or_explicit_origins() {
        let err = |o: &[&str]| {
            CorsPolicy::new(&o.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .err()
                .map(|e| e.to_string())
        };
        assert!(err(&["*", "https://a.example"]).unwrap().contains("alone"));
        assert!(err(&["https://a.example", "*"]).unwrap().contains("alone"));
        assert!(err(&["https://a.example", ""]).unwrap().contains("empty"));
        assert!(err(&["bad\norigin"]).is_some());
        let p = CorsPolicy::new(&["https://a.example/".into()]).unwrap();
        assert!(p.allows(&HeaderValue::from_static("https://a.example")));
        assert!(!p.allows(&HeaderValue::from_static("https://b.example")));
        let any = CorsPolicy::new(&["*".into()]).unwrap();
        assert!(any.allows(&HeaderValue::from_static("https://b.example")));
        assert!(!CorsPolicy::new(&[]).unwrap().is_on());
    }
}
