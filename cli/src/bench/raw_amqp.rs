//! The same load through the raw lapin client: a topic exchange, a quorum
//! queue and a stream queue, publisher confirms with a window, manual acks
//! overlapped (not awaited one by one).

use std::time::Instant;

use anyhow::Context;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use sluice_broker::testing::unique;

use super::{Figure, Load};

/// Publishes then consumes `load` with lapin directly.
pub(crate) async fn run(url: &str, load: &Load) -> anyhow::Result<Vec<Figure>> {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let publisher = conn.create_channel().await.context("channel")?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("confirm.select")?;
    // The same topology as the Sluice backend: a topic exchange routing each
    // message to the consumer group's quorum queue and to the domain's
    // stream queue (kept for replay).
    let exchange = unique("sluice-rawbench-");
    let queue = format!("{exchange}.group");
    let stream = format!("{exchange}.stream");
    publisher
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .context("exchange.declare")?;
    for (name, kind) in [(&queue, "quorum"), (&stream, "stream")] {
        let mut args = FieldTable::default();
        args.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString(LongString::from(kind)),
        );
        publisher
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .context("queue.declare")?;
        publisher
            .queue_bind(
                name.as_str().into(),
                exchange.as_str().into(),
                "bench.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("queue.bind")?;
    }

    let started = Instant::now();
    let mut sent = 0;
    while sent < load.messages {
        let n = load.batch.min(load.messages - sent);
        let mut confirms = Vec::with_capacity(n);
        for _ in 0..n {
            let mut headers = FieldTable::default();
            let h = load.headers();
            for (k, v) in h.iter() {
                let name = k
                    .strip_prefix("ce-")
                    .map_or_else(|| k.to_owned(), |rest| format!("cloudEvents:{rest}"));
                headers.insert(
                    ShortString::from(name),
                    AMQPValue::LongString(LongString::from(v)),
                );
            }
            let props = BasicProperties::default()
                .with_headers(headers)
                .with_delivery_mode(2)
                .with_content_type(ShortString::from("application/protobuf"));
            confirms.push(
                publisher
                    .basic_publish(
                        exchange.as_str().into(),
                        "bench.order.placed".into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &load.payload,
                        props,
                    )
                    .await
                    .context("basic.publish")?,
            );
        }
        for c in confirms {
            let confirm = c.await.context("confirm")?;
            anyhow::ensure!(confirm.is_ack(), "publish was nacked");
        }
        sent += n;
    }
    let publish = Figure {
        backend: "amqp",
        path: "raw",
        operation: "publish",
        messages: load.messages,
        elapsed: started.elapsed(),
    };

    let started = Instant::now();
    let consumer_channel = conn.create_channel().await.context("channel")?;
    consumer_channel
        .basic_qos(
            u16::try_from(load.prefetch).unwrap_or(u16::MAX),
            BasicQosOptions::default(),
        )
        .await
        .context("basic.qos")?;
    let mut consumer = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("basic.consume")?;
    let mut received = 0;
    let mut acks = futures::stream::FuturesUnordered::new();
    while received < load.messages {
        let d = super::next_or_stall(consumer.next())
            .await?
            .context("consumer ended")?
            .context("delivery")?;
        let acker = d.acker.clone();
        acks.push(async move { acker.ack(BasicAckOptions::default()).await });
        // Keep acks overlapping but bounded (below the prefetch window, or
        // the broker stops sending while acks wait to be driven).
        while acks.len() >= (load.prefetch / 2).clamp(1, 256) {
            if let Some(r) = acks.next().await {
                r.context("basic.ack")?;
            }
        }
        received += 1;
    }
    while let Some(r) = acks.next().await {
        r.context("basic.ack")?;
    }
    let consume = Figure {
        backend: "amqp",
        path: "raw",
        operation: "consume",
        messages: received,
        elapsed: started.elapsed(),
    };
    for name in [&queue, &stream] {
        publisher
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await
            .context("queue.delete")?;
    }
    publisher
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .context("exchange.delete")?;
    let _ = conn.close(200, "bench done".into()).await;
    Ok(vec![publish, consume])
}
