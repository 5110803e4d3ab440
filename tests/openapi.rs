//! The committed OpenAPI document must match the one generated from the code.
//! `make openapi` (SAMSERVE_WRITE_OPENAPI=1) rewrites it.

#[test]
fn committed_openapi_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    let generated = samserve::http::openapi::openapi_json();
    if std::env::var_os("SAMSERVE_WRITE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `make openapi`", path.display()));
    assert!(
        committed == generated,
        "openapi/openapi.json is out of date with the code; run `make openapi` and commit it"
    );
}

#[test]
fn openapi_lists_every_route() {
    let doc: serde_json::Value =
        serde_json::from_str(&samserve::http::openapi::openapi_json()).unwrap();
    for path in [
        "/v1/images",
        "/v1/images/{image_id}",
        "/v1/images/{image_id}/segment",
        "/v1/segment",
        "/v1/models",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
    let item = &doc["paths"]["/v1/images/{image_id}"];
    for m in ["put", "get", "head", "delete"] {
        assert!(item.get(m).is_some(), "{m} /v1/images/{{image_id}} missing");
    }
}
