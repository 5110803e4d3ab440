//! Errors a client can act on: each names what is wrong and, where there is one, the way to
//! recover; none leaks the server's internals. Against the real server on a loopback port.

mod common;

use common::{synthetic_png, TestServer};
use serde_json::{json, Value};

fn code(b: &Value) -> &str {
    b["error"]["code"].as_str().unwrap_or("")
}

fn message(b: &Value) -> &str {
    b["error"]["message"].as_str().unwrap_or("")
}

async fn post_raw(s: &TestServer, ctype: &str, body: Vec<u8>) -> (u16, Value) {
    let r = s
        .client
        .post(s.url("/v1/images"))
        .header("content-type", ctype)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn an_unknown_or_evicted_image_says_how_to_recover() {
    let s = TestServer::default().await;
    let png = synthetic_png(64, 48, 1);
    let id = s.upload(&png).await["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .client
        .delete(s.url(&format!("/v1/images/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // What an annotation tool meets after the idle timeout.
    let (st, b) = s
        .segment(&id, &json!({"prompts": [{"points": [{"x": 10, "y": 10}]}]}))
        .await;
    assert_eq!((st, code(&b)), (404, "not_found"), "{b}");
    let m = message(&b);
    assert!(m.contains(&id) && m.contains("sam-tiny"), "{m}");
    assert!(
        m.contains("upload the same bytes again") && m.contains(&format!("PUT /v1/images/{id}")),
        "no recovery hint: {m}"
    );
    // The hint works: PUT by id, then the same request succeeds.
    let r = s
        .client
        .put(s.url(&format!("/v1/images/{id}")))
        .header("content-type", "image/png")
        .body(png)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (st, b) = s
        .segment(&id, &json!({"prompts": [{"points": [{"x": 10, "y": 10}]}]}))
        .await;
    assert_eq!(st, 200, "{b}");
    // Segment everything and the embedding download name the same way out.
    let other = "ab".repeat(32);
    let r = s
        .client
        .post(s.url(&format!("/v1/images/{other}/everything")))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let b: Value = r.json().await.unwrap();
    assert!(message(&b).contains("upload the same bytes again"), "{b}");
}

#[tokio::test]
async fn a_point_is_an_object_and_the_message_says_so_without_internals() {
    let s = TestServer::default().await;
    let id = s.upload(&synthetic_png(64, 48, 2)).await["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    for (points, why) in [
        (json!([[30]]), "one number"),
        (
            json!([[30, 20]]),
            "the array form, which used to be read silently",
        ),
        (json!([[30, 20, 1]]), "the array form with a label"),
        (json!(["30,20"]), "a string"),
    ] {
        let (st, b) = s
            .segment(&id, &json!({"prompts": [{"points": points}]}))
            .await;
        assert_eq!((st, code(&b)), (400, "bad_request"), "{why}: {b}");
        let m = message(&b);
        assert!(m.contains("prompts[0].points[0]"), "{why}: no path in {m}");
        assert!(
            m.contains(r#"{"x": 230, "y": 256, "label": 1}"#),
            "{why}: the form is not named: {m}"
        );
        for internal in ["struct", "Point", "elements"] {
            assert!(!m.contains(internal), "{why}: '{internal}' leaked: {m}");
        }
    }
    // Other malformed bodies: where, and no type names.
    let (st, b) = s
        .segment(&id, &json!({"prompts": [{"box": [1, 2, 3]}]}))
        .await;
    assert_eq!(st, 400, "{b}");
    assert!(message(&b).contains("prompts[0].box"), "{b}");
    let (st, b) = s.segment(&id, &json!({"prompts": [7]})).await;
    assert_eq!(st, 400, "{b}");
    assert!(
        !message(&b).contains("struct") && !message(&b).contains("Prompt"),
        "{b}"
    );
    // The documented form works, label defaulting to 1.
    let (st, b) = s
        .segment(&id, &json!({"prompts": [{"points": [{"x": 30, "y": 20}]}]}))
        .await;
    assert_eq!(st, 200, "{b}");
}

#[tokio::test]
async fn undecodable_bodies_sent_as_images_are_400_invalid_image() {
    let s = TestServer::default().await;
    let png = synthetic_png(120, 90, 3);
    // Corrupt from the first byte: no format can be recognised, but the client said PNG.
    let mut corrupt = png.clone();
    for b in corrupt.iter_mut().take(16) {
        *b ^= 0x5a;
    }
    for ctype in ["image/png", "image/jpeg", "image/webp"] {
        let (st, b) = post_raw(&s, ctype, corrupt.clone()).await;
        assert_eq!((st, code(&b)), (400, "invalid_image"), "{ctype}: {b}");
        assert!(message(&b).contains(ctype), "{b}");
    }
    // The same through multipart, and a text file picked by mistake.
    let form = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(corrupt.clone())
            .file_name("photo.png")
            .mime_str("image/png")
            .unwrap(),
    );
    let r = s
        .client
        .post(s.url("/v1/images"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let form = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(b"name,score\na,1\n".to_vec())
            .file_name("notes.txt")
            .mime_str("text/plain")
            .unwrap(),
    );
    let r = s
        .client
        .post(s.url("/v1/images"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let b: Value = r.json().await.unwrap();
    assert!(
        message(&b).contains("text/plain") && message(&b).contains("PNG"),
        "{b}"
    );
    // Unlabelled bytes that are no image stay 415 (nothing said they were an image), and a
    // real image passes whatever image type it was labelled with.
    let (st, b) = post_raw(&s, "application/octet-stream", corrupt).await;
    assert_eq!((st, code(&b)), (415, "unsupported_media_type"), "{b}");
    let (st, b) = post_raw(&s, "image/jpeg", png).await;
    assert_eq!(st, 200, "{b}");
}
