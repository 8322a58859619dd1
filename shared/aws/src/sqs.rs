//! Amazon SQS adapter. The run message is the JSON body; `run_id` and `replay` also travel as
//! message attributes so operators can filter without parsing bodies. A body that is not a run
//! message is left on the queue: SQS redrives it to the dead-letter queue after `maxReceiveCount`
//! receives.

use std::sync::Arc;

use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName};
use aws_sdk_sqs::Client;

use tokenops::error::StoreError;
use tokenops::model::RunMessage;
use tokenops::ports::{Delivery, QueueStats, RunQueue};

#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    url: Arc<str>,
    dlq_url: Option<Arc<str>>,
}

fn sqs_err<E: std::error::Error + 'static, R: std::fmt::Debug>(
    e: aws_sdk_sqs::error::SdkError<E, R>,
) -> StoreError {
    StoreError::Unavailable(format!("{}", aws_sdk_sqs::error::DisplayErrorContext(&e)))
}

fn attr(value: String, data_type: &str) -> Result<MessageAttributeValue, StoreError> {
    MessageAttributeValue::builder()
        .data_type(data_type)
        .string_value(value)
        .build()
        .map_err(|e| StoreError::Unavailable(format!("message attribute: {e}")))
}

impl SqsQueue {
    pub fn new(client: Client, url: &str, dlq_url: Option<&str>) -> Self {
        SqsQueue {
            client,
            url: url.into(),
            dlq_url: dlq_url.map(Into::into),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    async fn attributes(
        &self,
        url: &str,
    ) -> Result<std::collections::HashMap<QueueAttributeName, String>, StoreError> {
        Ok(self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .map_err(sqs_err)?
            .attributes
            .unwrap_or_default())
    }
}

fn num(
    attrs: &std::collections::HashMap<QueueAttributeName, String>,
    name: QueueAttributeName,
) -> i64 {
    attrs.get(&name).and_then(|v| v.parse().ok()).unwrap_or(0)
}

impl RunQueue for SqsQueue {
    async fn send(&self, msg: &RunMessage) -> Result<String, StoreError> {
        let body = serde_json::to_string(msg).map_err(|e| StoreError::Corrupt {
            key: msg.run_id.clone(),
            reason: e.to_string(),
        })?;
        let out = self
            .client
            .send_message()
            .queue_url(&*self.url)
            .message_body(body)
            .message_attributes("run_id", attr(msg.run_id.clone(), "String")?)
            .message_attributes("replay", attr(msg.replay.to_string(), "Number")?)
            .send()
            .await
            .map_err(sqs_err)?;
        Ok(out.message_id.unwrap_or_default())
    }

    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, StoreError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&*self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .wait_time_seconds(1)
            .send()
            .await
            .map_err(sqs_err)?;
        let mut deliveries = Vec::new();
        for m in out.messages.unwrap_or_default() {
            let sys = m.attributes.unwrap_or_default();
            let get = |n: MessageSystemAttributeName| {
                sys.get(&n).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0)
            };
            let message_id = m.message_id.unwrap_or_default();
            match serde_json::from_str::<RunMessage>(m.body.as_deref().unwrap_or("")) {
                Ok(body) => deliveries.push(Delivery {
                    receipt: m.receipt_handle.unwrap_or_default(),
                    body,
                    receive_count: get(MessageSystemAttributeName::ApproximateReceiveCount),
                    sent_at: get(MessageSystemAttributeName::SentTimestamp),
                    message_id,
                }),
                Err(e) => {
                    tracing::warn!(%message_id, error = %e, "not a run message; left for the dead-letter queue")
                }
            }
        }
        Ok(deliveries)
    }

    async fn ack(&self, d: &Delivery) -> Result<(), StoreError> {
        self.client
            .delete_message()
            .queue_url(&*self.url)
            .receipt_handle(&d.receipt)
            .send()
            .await
            .map_err(sqs_err)?;
        Ok(())
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let a = self.attributes(&self.url).await?;
        let max_receives = a
            .get(&QueueAttributeName::RedrivePolicy)
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .and_then(|p| match &p["maxReceiveCount"] {
                serde_json::Value::Number(n) => n.as_i64(),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            })
            .unwrap_or(0);
        let dead_letter_depth = match &self.dlq_url {
            Some(u) => num(
                &self.attributes(u).await?,
                QueueAttributeName::ApproximateNumberOfMessages,
            ),
            None => 0,
        };
        Ok(QueueStats {
            queue: self.url.rsplit('/').next().unwrap_or_default().to_string(),
            depth: num(&a, QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: num(
                &a,
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            ),
            // SQS has no such attribute; `GET /queue` takes it from the table's pending index.
            oldest_age_seconds: 0,
            dead_letter_depth,
            max_receives,
            visibility_timeout_seconds: num(&a, QueueAttributeName::VisibilityTimeout),
        })
    }
}
