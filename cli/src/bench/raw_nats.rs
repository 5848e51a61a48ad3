//! The same load through the raw async-nats JetStream client.

use std::time::Instant;

use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use sluice_broker::testing::unique;

use super::{Figure, Load};

/// Publishes then consumes `load` with async-nats directly.
pub(crate) async fn run(url: &str, load: &Load) -> anyhow::Result<Vec<Figure>> {
    let client = async_nats::connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let js = jetstream::new(client.clone());
    let domain = unique("rawbench");
    let name = domain.to_uppercase();
    let subject = format!("{domain}.order.placed");
    js.get_or_create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{domain}.>")],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .context("creating the stream")?;

    let started = Instant::now();
    let mut sent = 0;
    while sent < load.messages {
        let n = load.batch.min(load.messages - sent);
        let mut acks = Vec::with_capacity(n);
        for _ in 0..n {
            let mut headers = async_nats::HeaderMap::new();
            let h = load.headers();
            for (k, v) in h.iter() {
                headers.insert(k, v);
            }
            if let Some(id) = h.get("ce-id") {
                headers.insert("Nats-Msg-Id", id);
            }
            acks.push(
                js.publish_with_headers(subject.clone(), headers, load.payload.clone())
                    .await
                    .context("publish")?,
            );
        }
        for ack in acks {
            ack.await.context("publish ack")?;
        }
        sent += n;
    }
    let publish = Figure {
        backend: "nats",
        path: "raw",
        operation: "publish",
        messages: load.messages,
        elapsed: started.elapsed(),
    };

    let started = Instant::now();
    let stream = js.get_stream(&name).await.context("stream")?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("bench".into()),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: i64::try_from(load.prefetch).unwrap_or(i64::MAX),
            ..Default::default()
        })
        .await
        .context("consumer")?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(load.prefetch)
        .messages()
        .await
        .context("pull stream")?;
    let mut received = 0;
    while received < load.messages {
        let m = super::next_or_stall(messages.next())
            .await?
            .context("stream ended")?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        received += 1;
    }
    let consume = Figure {
        backend: "nats",
        path: "raw",
        operation: "consume",
        messages: received,
        elapsed: started.elapsed(),
    };
    drop(messages);
    js.delete_stream(&name)
        .await
        .context("deleting the stream")?;
    client.flush().await.context("flush")?;
    Ok(vec![publish, consume])
}
