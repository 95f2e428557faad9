//! User and organization field definitions: their keys.

use serde_json::json;

use super::{EmulatorApi, error_code};

#[tokio::test]
async fn a_field_key_is_refused_when_malformed_or_taken() {
    let api = EmulatorApi::start().await;
    for (path, wrap) in [
        ("/api/v2/user_fields", "user_field"),
        ("/api/v2/organization_fields", "organization_field"),
    ] {
        let r = api
            .post(
                path,
                json!({wrap: {"type": "text", "title": "Plan name", "key": "planName"}}),
            )
            .await;
        assert_eq!(
            (r.status, r.body[wrap]["key"].as_str()),
            (201, Some("planName"))
        );
        let r = api
            .post(
                path,
                json!({wrap: {"type": "text", "title": "Again", "key": "planName"}}),
            )
            .await;
        assert_eq!(
            (r.status, error_code(&r.body, "key")),
            (422, Some("DuplicateValue"))
        );
        for bad in ["plan-name", "plan name", "123"] {
            let r = api
                .post(
                    path,
                    json!({wrap: {"type": "text", "title": "Bad", "key": bad}}),
                )
                .await;
            assert_eq!(
                (r.status, error_code(&r.body, "key")),
                (422, Some("InvalidValue")),
                "{bad}"
            );
        }
        let list = api.get(path).await;
        let plural = format!("{wrap}s");
        assert_eq!(list.body[plural.as_str()].as_array().map(Vec::len), Some(1));
    }
}
