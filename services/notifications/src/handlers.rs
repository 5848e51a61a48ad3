//! The consumers' handlers: the address book (a projection) and the order
//! events that become e-mails (a reactor, which records them; the sender
//! delivers them after commit).

use minijinja::Value;
use sea_orm::sea_query::OnConflict;
use sea_orm::{EntityTrait, IntoActiveModel};
use sluice_kit::db::now_micros;
use sluice_kit::{Ctx, HandlerError, ProjectionCtx};
use sluice_proto::shop::accounts::v1::AccountRegistered;
use sluice_proto::shop::orders::v1::{OrderCancelled, OrderConfirmed};

use crate::tables::{addresses, notifications};
use crate::templates::{Template, format_amount};
use crate::{Notifications, notification_id, status};

/// On `accounts.account.registered`: remembers the customer's address (a
/// later registration of the same account replaces it).
pub(crate) async fn account_registered(
    ctx: ProjectionCtx<()>,
    e: AccountRegistered,
) -> Result<(), HandlerError> {
    if e.account_id.is_empty() {
        return Err(HandlerError::Permanent(
            "account registered without an account id".into(),
        ));
    }
    let row = addresses::Model {
        customer_id: e.account_id,
        email: e.email.trim().to_owned(),
        updated_at: now_micros(),
    };
    addresses::Entity::insert(row.into_active_model())
        .on_conflict(
            OnConflict::column(addresses::Column::CustomerId)
                .update_columns([addresses::Column::Email, addresses::Column::UpdatedAt])
                .to_owned(),
        )
        .exec_without_returning(ctx.db())
        .await?;
    Ok(())
}

/// On `orders.order.confirmed`: the confirmation with the amount paid.
pub(crate) async fn order_confirmed(
    ctx: Ctx<Notifications>,
    e: OrderConfirmed,
) -> Result<(), HandlerError> {
    require(&e.order_id, &e.customer_id)?;
    let vars = minijinja::context! {
        order_id => e.order_id.clone(),
        amount => format_amount(e.total_cents, &e.currency),
    };
    record(
        &ctx,
        Template::OrderConfirmed,
        &e.order_id,
        &e.customer_id,
        &vars,
    )
    .await
}

/// On `orders.order.cancelled`: the cancellation with its reason.
pub(crate) async fn order_cancelled(
    ctx: Ctx<Notifications>,
    e: OrderCancelled,
) -> Result<(), HandlerError> {
    require(&e.order_id, &e.customer_id)?;
    let reason = if e.reason.trim().is_empty() {
        "not given".to_owned()
    } else {
        e.reason.clone()
    };
    let vars = minijinja::context! { order_id => e.order_id.clone(), reason => reason };
    record(
        &ctx,
        Template::OrderCancelled,
        &e.order_id,
        &e.customer_id,
        &vars,
    )
    .await
}

/// An order event without an order or customer can never be answered.
fn require(order_id: &str, customer_id: &str) -> Result<(), HandlerError> {
    if order_id.is_empty() {
        return Err(HandlerError::Permanent(
            "order event without an order id".into(),
        ));
    }
    if customer_id.is_empty() {
        return Err(HandlerError::Permanent(format!(
            "order {order_id} has no customer id"
        )));
    }
    Ok(())
}

/// Records the e-mail for the event being handled as `pending` (or as
/// `skipped` when the customer's address never came), once per event.
async fn record(
    ctx: &Ctx<Notifications>,
    template: Template,
    order_id: &str,
    customer_id: &str,
    vars: &Value,
) -> Result<(), HandlerError> {
    let state = ctx.state();
    let envelope = ctx.envelope();
    let id = notification_id(&envelope.id);
    if notifications::Entity::find_by_id(id.clone())
        .one(ctx.db())
        .await?
        .is_some()
    {
        // Handled before (the inbox entry was pruned, or this is a copy
        // with the same id on another subject): never twice.
        return Ok(());
    }
    let now = now_micros();
    let mut row = notifications::Model {
        id,
        event_id: envelope.id.clone(),
        correlation_id: envelope
            .correlation_id
            .clone()
            .unwrap_or_else(|| envelope.id.clone()),
        order_id: order_id.to_owned(),
        customer_id: customer_id.to_owned(),
        template: template.name().to_owned(),
        recipient: String::new(),
        subject: String::new(),
        body_text: String::new(),
        body_html: None,
        status: status::PENDING.to_owned(),
        reason: String::new(),
        attempts: 0,
        next_attempt_at: now,
        created_at: now,
        sent_at: None,
        trace_parent: sluice_kit::trace::traceparent(),
    };
    let address = addresses::Entity::find_by_id(customer_id.to_owned())
        .one(ctx.db())
        .await?
        .map(|a| a.email)
        .filter(|e| !e.is_empty());
    match address {
        Some(email) => {
            let rendered = state
                .templates
                .render(template, vars)
                .map_err(HandlerError::permanent)?;
            row.recipient = email;
            row.subject = rendered.subject;
            row.body_text = rendered.text;
            row.body_html = rendered.html;
        }
        // The registration may still be on its way: try again later.
        None if ctx.delivered() < state.max_attempts => {
            return Err(HandlerError::Transient(format!(
                "no e-mail address for customer {customer_id} yet"
            )));
        }
        None => {
            let reason = format!(
                "no e-mail address for customer {customer_id} after {} deliveries",
                ctx.delivered()
            );
            tracing::warn!(
                order = order_id,
                customer = customer_id,
                template = template.name(),
                "notification skipped: {reason}"
            );
            row.status = status::SKIPPED.to_owned();
            row.reason = reason;
        }
    }
    notifications::Entity::insert(row.clone().into_active_model())
        .on_conflict(
            OnConflict::column(notifications::Column::Id)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(ctx.db())
        .await?;
    if row.status == status::PENDING {
        tracing::info!(
            notification = %row.id,
            order = order_id,
            template = template.name(),
            "notification recorded"
        );
    }
    Ok(())
}
