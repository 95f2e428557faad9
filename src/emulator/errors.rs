//! Replies and Zendesk's error envelopes (docs/zendesk.md, "Error bodies"). Zendesk uses several
//! incompatible shapes. Each constructor here produces one of them, so handlers never write error
//! JSON by hand:
//!
//! - `{"error":"RecordInvalid","description":"Record validation errors","details":{field:[{description,error}]}}` (422)
//! - `{"error":"RecordNotFound","description":"Not found"}` / `InvalidEndpoint` (404)
//! - `{"error":"Couldn't authenticate you"}` (401)
//! - `{"error":{"title":..,"message":..}}` (400 bad parameter, 403)
//! - `{"errors":[{"code":..,"title":..}]}` (Sunshine events, newer endpoints)
//! - `{"error":"Forbidden","description":..}` (403: an OAuth token whose scopes do not cover the
//!   request)
//! - `{"error":"invalid_grant","error_description":..}` (the OAuth endpoints, `/oauth/...`)

use serde_json::{Value, json};

/// What a handler answers: a status, extra headers and a body.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: ReplyBody,
}

#[derive(Debug, Clone)]
pub(crate) enum ReplyBody {
    Json(Value),
    /// A non-JSON body with its content type (Zendesk answers some 429s in HTML/text).
    Text(&'static str, String),
    Empty,
}

impl Reply {
    pub(crate) fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: ReplyBody::Json(body),
        }
    }

    pub(crate) fn ok(body: Value) -> Reply {
        Reply::json(200, body)
    }

    pub(crate) fn no_content() -> Reply {
        Reply {
            status: 204,
            headers: Vec::new(),
            body: ReplyBody::Empty,
        }
    }

    pub(crate) fn header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// The JSON body, if there is one (the request log and idempotency replay use it).
    pub(crate) fn body_json(&self) -> Value {
        match &self.body {
            ReplyBody::Json(v) => v.clone(),
            ReplyBody::Text(_, t) => Value::String(t.clone()),
            ReplyBody::Empty => Value::Null,
        }
    }
}

/// An error answer. Handlers return `Result<Reply, ApiError>` and use `?` freely.
#[derive(Debug, Clone)]
pub(crate) struct ApiError(pub Reply);

pub(crate) type ApiResult = Result<Reply, ApiError>;

impl ApiError {
    /// 422 `RecordInvalid` with one detail entry.
    pub(crate) fn invalid(field: &str, error: &str, description: impl Into<String>) -> ApiError {
        Invalid::new().add(field, error, description).into()
    }

    /// 404 `RecordNotFound`.
    pub(crate) fn not_found() -> ApiError {
        ApiError(Reply::json(
            404,
            json!({"error": "RecordNotFound", "description": "Not found"}),
        ))
    }

    /// 404 `InvalidEndpoint`: unknown path or method.
    pub(crate) fn invalid_endpoint() -> ApiError {
        ApiError(Reply::json(
            404,
            json!({"error": "InvalidEndpoint", "description": "Not found"}),
        ))
    }

    /// 401 with Zendesk's bare-string body.
    pub(crate) fn unauthorized() -> ApiError {
        ApiError(Reply::json(
            401,
            json!({"error": "Couldn't authenticate you"}),
        ))
    }

    /// 403 with the object envelope.
    pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError(Reply::json(
            403,
            json!({"error": {"title": "Forbidden", "message": message.into()}}),
        ))
    }

    /// 403 for a request an OAuth token's scopes do not cover.
    pub(crate) fn out_of_scope() -> ApiError {
        ApiError(Reply::json(
            403,
            json!({"error": "Forbidden", "description": "You do not have access to this page. Please contact the account owner of this help desk for further help."}),
        ))
    }

    /// The OAuth envelope of `/oauth/tokens` and `/oauth/authorizations/new`.
    pub(crate) fn oauth(status: u16, error: &str, description: impl Into<String>) -> ApiError {
        ApiError(Reply::json(
            status,
            json!({"error": error, "error_description": description.into()}),
        ))
    }

    /// 400 for a bad parameter or an unreadable body, with the object envelope.
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError(Reply::json(
            400,
            json!({"error": {"title": "Invalid attribute", "message": message.into()}}),
        ))
    }

    /// 400 in the Sunshine / newer-endpoint envelope `{"errors":[{code,title,id}]}`.
    pub(crate) fn errors(
        status: u16,
        code: &str,
        title: impl Into<String>,
        id: String,
    ) -> ApiError {
        ApiError(Reply::json(
            status,
            json!({"errors": [{"code": code, "title": title.into(), "id": id}]}),
        ))
    }

    /// 429 for the account-wide per-minute budget.
    pub(crate) fn account_rate_limited(retry_after: u64) -> ApiError {
        ApiError(
            Reply::json(
                429,
                json!({"error": "APIRateLimitExceeded", "description": "Number of allowed API requests per minute exceeded"}),
            )
            .header("Retry-After", retry_after.to_string()),
        )
    }

    /// 429 for an endpoint-specific limit, in the `errors` envelope.
    pub(crate) fn endpoint_rate_limited(retry_after: u64, title: &str) -> ApiError {
        ApiError(
            Reply::json(
                429,
                json!({"errors": [{"code": "TooManyRequests", "title": title}]}),
            )
            .header("Retry-After", retry_after.to_string()),
        )
    }

    /// 500 / 503 and other injected faults.
    pub(crate) fn fault(status: u16) -> ApiError {
        let body = match status {
            500 => {
                json!({"error": "InternalServerError", "description": "Something went wrong (emulated fault)"})
            }
            503 => {
                json!({"error": "ServiceUnavailable", "description": "Service temporarily unavailable (emulated fault)"})
            }
            _ => {
                json!({"error": "EmulatedFault", "description": format!("Emulated status {status}")})
            }
        };
        ApiError(Reply::json(status, body))
    }
}

/// Builder for a 422 `RecordInvalid` with several detail entries.
#[derive(Debug, Default)]
pub(crate) struct Invalid {
    details: serde_json::Map<String, Value>,
}

impl Invalid {
    pub(crate) fn new() -> Invalid {
        Invalid::default()
    }

    pub(crate) fn add(
        mut self,
        field: &str,
        error: &str,
        description: impl Into<String>,
    ) -> Invalid {
        self.push(
            field,
            json!({"description": description.into(), "error": error}),
        );
        self
    }

    /// A custom-field value problem: under `base`, with the field's id as `field_key`.
    pub(crate) fn add_field_value(
        mut self,
        field_id: u64,
        description: impl Into<String>,
    ) -> Invalid {
        self.push(
            "base",
            json!({"description": description.into(), "error": "InvalidValue", "field_key": field_id}),
        );
        self
    }

    fn push(&mut self, field: &str, entry: Value) {
        if let Value::Array(list) = self
            .details
            .entry(field.to_string())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            list.push(entry);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.details.is_empty()
    }

    /// `Ok(())` when nothing was added, else the 422.
    pub(crate) fn into_result(self) -> Result<(), ApiError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.into())
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(inv: Invalid) -> ApiError {
        ApiError(Reply::json(
            422,
            json!({"error": "RecordInvalid", "description": "Record validation errors", "details": Value::Object(inv.details)}),
        ))
    }
}
