//! x402 over MCP (coinbase/x402 `specs/transports-v2/mcp.md`), so an x402-capable MCP client pays
//! a tool without TokenOps-specific code. The API's 402 becomes the payment-required tool result;
//! the client's `_meta["x402/payment"]` becomes the `PAYMENT-SIGNATURE` the API checks; the API's
//! `PAYMENT-RESPONSE` comes back as the result's `_meta["x402/payment-response"]`. The money rules
//! (verify before writing, one payment funds once) stay where they are: in the API.

use rmcp::model::{CallToolResult, ContentBlock, JsonObject, MetaObject};
use serde_json::{json, Value};
use tokenops::x402;

use crate::api::Reply;
use crate::tools::BadArgument;

/// Where the client puts its payment, and where the settlement comes back.
pub const PAYMENT: &str = "x402/payment";
pub const PAYMENT_RESPONSE: &str = "x402/payment-response";

/// What the API calls the payment (a header) and what an MCP client sent instead.
const HEADER_NAME: &str = "PAYMENT-SIGNATURE";
const META_NAME: &str = "_meta[\"x402/payment\"]";

/// The payment in a call's `_meta`, encoded as the `PAYMENT-SIGNATURE` header the API reads.
pub fn signature(meta: &JsonObject) -> Result<Option<String>, BadArgument> {
    match meta.get(PAYMENT) {
        None | Some(Value::Null) => Ok(None),
        Some(p @ Value::Object(_)) => Ok(Some(x402::encode_header(p))),
        Some(_) => Err(BadArgument {
            field: format!("_meta.{PAYMENT}"),
            detail: "must be an x402 v2 PaymentPayload object".into(),
        }),
    }
}

/// A 402 that names what to pay, as the payment-required tool result: `structuredContent` is the
/// x402 `PaymentRequired` (with the failed settlement, if one failed, and the API's problem for a
/// model to read), `content[0]` the same in the spec's `x402/error` wrapper. `None` for any
/// other answer.
pub fn required(reply: &Reply, tool: &str) -> Option<CallToolResult> {
    if reply.status != 402 {
        return None;
    }
    let mut pr = reply
        .payment_required
        .as_deref()
        .and_then(x402::decode_header)?;
    // The API names the payment's header; on MCP the payment was `_meta`.
    let mut problem = reply.body.clone();
    for k in ["detail", "field"] {
        if let Some(s) = problem[k].as_str() {
            problem[k] = json!(s.replace(HEADER_NAME, META_NAME));
        }
    }
    let message = match (pr["error"].as_str(), problem["field"].as_str()) {
        // A refusal: what was wrong, and where in the payment.
        (Some(refusal), Some(field)) if !refusal.contains(HEADER_NAME) => {
            format!("{field}: {refusal}")
        }
        (Some(refusal), _) => refusal.replace(HEADER_NAME, META_NAME),
        (None, _) => format!(
            "payment required: call {tool} again with the same arguments and {META_NAME} set to an \
             x402 v2 PaymentPayload that answers one of accepts"
        ),
    };
    let obj = pr.as_object_mut()?;
    obj.insert("error".into(), json!(message));
    if let Some(settled) = reply
        .payment_response
        .as_deref()
        .and_then(x402::decode_header)
    {
        obj.insert(PAYMENT_RESPONSE.into(), settled);
    }
    obj.insert("problem".into(), problem);
    let wrapped = json!({"x402/error": {"code": 402, "message": message, "data": pr}});
    let mut result = CallToolResult::structured_error(pr);
    result.content = vec![ContentBlock::text(wrapped.to_string())];
    Some(result)
}

/// The settlement of a paid call, for the result's `_meta`.
pub fn settlement(reply: &Reply) -> Option<MetaObject> {
    let settled = reply
        .payment_response
        .as_deref()
        .and_then(x402::decode_header)?;
    let mut meta = JsonObject::new();
    meta.insert(PAYMENT_RESPONSE.into(), settled);
    Some(MetaObject(meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, required: Option<Value>, response: Option<Value>) -> Reply {
        Reply {
            status,
            body: json!({"type": "about:blank", "status": status, "detail": "resend with a PAYMENT-SIGNATURE header", "field": "PAYMENT-SIGNATURE"}),
            payment_required: required.map(|v| x402::encode_header(&v)),
            payment_response: response.map(|v| x402::encode_header(&v)),
        }
    }

    fn accepts() -> Value {
        json!({"x402Version": 2, "error": null, "resource": {"url": "http://h/runs"}, "accepts": [{"scheme": "exact", "amount": "10"}]})
    }

    #[test]
    fn a_402_is_the_payment_required_result_in_both_places_the_spec_names() {
        let r = required(&reply(402, Some(accepts()), None), "submit_run").unwrap();
        assert_eq!(r.is_error, Some(true));
        let sc = r.structured_content.unwrap();
        assert_eq!(sc["x402Version"], 2);
        assert_eq!(sc["accepts"][0]["amount"], "10");
        assert!(sc["error"]
            .as_str()
            .unwrap()
            .contains("call submit_run again"));
        assert_eq!(sc["problem"]["field"], META_NAME);
        let text = match &r.content[0] {
            ContentBlock::Text(t) => t.text.clone(),
            other => panic!("{other:?}"),
        };
        let wrapped: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(wrapped["x402/error"]["code"], 402);
        assert_eq!(wrapped["x402/error"]["data"]["accepts"], sc["accepts"]);
    }

    #[test]
    fn a_refused_payment_keeps_the_reason_and_the_failed_settlement() {
        let mut pr = accepts();
        pr["error"] = json!("PAYMENT-SIGNATURE.accepted.amount: 1 is not 10");
        let failed =
            json!({"success": false, "errorReason": "invalid_exact_evm_payload_signature"});
        let r = required(&reply(402, Some(pr), Some(failed.clone())), "fund").unwrap();
        let sc = r.structured_content.unwrap();
        assert_eq!(
            sc["error"],
            "_meta[\"x402/payment\"].accepted.amount: 1 is not 10"
        );
        assert_eq!(sc[PAYMENT_RESPONSE], failed);
    }

    #[test]
    fn a_refusal_names_where_in_the_payment_it_is_wrong() {
        let mut pr = accepts();
        pr["error"] = json!("underpaid: 1 < 10 atomic units");
        let mut answer = reply(402, Some(pr), None);
        answer.body["field"] = json!("PAYMENT-SIGNATURE.accepted.amount");
        let sc = required(&answer, "submit_run")
            .unwrap()
            .structured_content
            .unwrap();
        assert_eq!(
            sc["error"],
            "_meta[\"x402/payment\"].accepted.amount: underpaid: 1 < 10 atomic units"
        );
        assert_eq!(
            sc["problem"]["field"],
            "_meta[\"x402/payment\"].accepted.amount"
        );
    }

    #[test]
    fn other_answers_are_not_payment_results() {
        assert!(required(&reply(402, None, None), "fund").is_none());
        assert!(required(&reply(404, Some(accepts()), None), "fund").is_none());
        let settled = json!({"success": true, "transaction": "0xab"});
        let meta = settlement(&reply(201, None, Some(settled.clone()))).unwrap();
        assert_eq!(meta.0[PAYMENT_RESPONSE], settled);
        assert!(settlement(&reply(201, None, None)).is_none());
    }

    #[test]
    fn the_payment_is_sent_as_the_header_only_when_it_is_an_object() {
        let mut meta = JsonObject::new();
        assert_eq!(signature(&meta), Ok(None));
        let p = json!({"x402Version": 2, "payload": {}});
        meta.insert(PAYMENT.into(), p.clone());
        let header = signature(&meta).unwrap().unwrap();
        assert_eq!(x402::decode_header(&header), Some(p));
        meta.insert(PAYMENT.into(), json!("not an object"));
        assert_eq!(signature(&meta).unwrap_err().field, "_meta.x402/payment");
    }
}
