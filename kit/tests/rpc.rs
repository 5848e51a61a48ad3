//! Request/reply through the kit on every backend: a typed answer with
//! correlation, an error carried back, a timeout when nobody answers in time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use sluice_kit::HandlerError;
use sluice_kit::Shutdown;
use sluice_kit::rpc::{RequestError, Requester, serve};
use sluice_kit::testing::{BrokerBackend, TestBroker};
use sluice_proto::Envelope;
use sluice_proto::shop::accounts::v1::{Login, LoginResult};

async fn login(_: Arc<()>, envelope: Envelope, req: Login) -> Result<LoginResult, HandlerError> {
    match req.password.as_str() {
        "right" => Ok(LoginResult {
            access_token: format!(
                "token-for-{}-{}",
                req.email,
                envelope.correlation_id.unwrap_or_default()
            ),
            ..Default::default()
        }),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(LoginResult::default())
        }
        _ => Err(HandlerError::Permanent("wrong email or password".into())),
    }
}

async fn request_reply(backend: BrokerBackend) {
    let tb = TestBroker::start(backend).await;
    let subject = tb.subject("cmd.login");
    let shutdown = Shutdown::new();
    let server = serve(
        tb.broker.clone(),
        "accounts",
        &subject,
        "accounts",
        Arc::new(()),
        login,
        shutdown.listener(),
    )
    .await
    .unwrap();
    let requester = Requester::new(tb.broker.clone(), "edge", Duration::from_secs(1));
    let ask = |password: &str| Login {
        email: "a@example.com".into(),
        password: password.into(),
    };

    let ok: LoginResult = requester
        .request(&subject, &ask("right"), Some("req-1"))
        .await
        .unwrap();
    assert_eq!(ok.access_token, "token-for-a@example.com-req-1");

    let err = requester
        .request::<_, LoginResult>(&subject, &ask("wrong"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RequestError::Remote { message, permanent: true, .. } if message == "wrong email or password"),
        "{err:?}"
    );

    let err = requester
        .request::<_, LoginResult>(&subject, &ask("slow"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::Timeout { .. }), "{err:?}");

    shutdown.trigger();
    server.await.unwrap();
    let nobody = requester
        .request::<_, LoginResult>(&tb.subject("cmd.nobody"), &ask("right"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            nobody,
            RequestError::Timeout { .. } | RequestError::NoResponders(_)
        ),
        "{nobody:?}"
    );
    tb.cleanup().await;
}

#[tokio::test]
async fn embedded() {
    request_reply(BrokerBackend::Embedded).await;
}

#[tokio::test]
async fn nats() {
    request_reply(BrokerBackend::Nats).await;
}

#[tokio::test]
async fn amqp() {
    request_reply(BrokerBackend::Amqp).await;
}
