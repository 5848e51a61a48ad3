//! Charging orders (once each) and refunding captured payments.

use sea_orm::{ActiveModelTrait, EntityTrait, IntoActiveModel, Set};
use sluice_kit::db::now_micros;
use sluice_kit::{Ctx, HandlerError};
use sluice_proto::shop::payments::v1::{
    ChargePayment, PaymentCaptured, PaymentDeclined, PaymentRefunded, RefundPayment,
};

use crate::Payments;
use crate::provider::Charge;
use crate::tables::payments;

const CAPTURED: &str = "captured";
const DECLINED: &str = "declined";
const REFUNDED: &str = "refunded";

/// On `payments.cmd.charge`: one capture per order. A command for an order
/// already settled charges nothing and repeats the outcome, so a saga that
/// asks twice gets the same answer twice.
pub(crate) async fn charge(ctx: Ctx<Payments>, cmd: ChargePayment) -> Result<(), HandlerError> {
    if cmd.order_id.is_empty() {
        return Err(HandlerError::Permanent("charge without an order id".into()));
    }
    if let Some(p) = payments::Entity::find_by_id(cmd.order_id.clone())
        .one(ctx.db())
        .await?
    {
        announce(&ctx, &p);
        return Ok(());
    }
    let state = ctx.state();
    let (status, payment_id, reason) =
        match state.provider.charge(&cmd.payment_token, cmd.amount_cents) {
            Charge::Approved(id) => (CAPTURED, id, String::new()),
            Charge::Declined(reason) => (DECLINED, String::new(), reason),
            Charge::TimedOut if ctx.delivered() < state.max_attempts => {
                return Err(HandlerError::Transient("payment provider timed out".into()));
            }
            Charge::TimedOut => (
                DECLINED,
                String::new(),
                format!("payment provider timed out {} times", ctx.delivered()),
            ),
        };
    let row = payments::Model {
        order_id: cmd.order_id.clone(),
        payment_id,
        amount_cents: cmd.amount_cents,
        currency: cmd.currency.clone(),
        status: status.to_owned(),
        reason,
        updated_at: now_micros(),
    };
    payments::Entity::insert(row.clone().into_active_model())
        .exec_without_returning(ctx.db())
        .await?;
    tracing::info!(order = %row.order_id, status, reason = %row.reason, "charge settled");
    announce(&ctx, &row);
    Ok(())
}

/// Emits the event that says how an order's charge ended.
fn announce(ctx: &Ctx<Payments>, p: &payments::Model) {
    let subjects = &ctx.state().subjects;
    match p.status.as_str() {
        CAPTURED | REFUNDED => {
            ctx.emit(
                &subjects.payment_captured,
                &p.order_id,
                &PaymentCaptured {
                    order_id: p.order_id.clone(),
                    payment_id: p.payment_id.clone(),
                    amount_cents: p.amount_cents,
                    currency: p.currency.clone(),
                },
            );
        }
        _ => {
            ctx.emit(
                &subjects.payment_declined,
                &p.order_id,
                &PaymentDeclined {
                    order_id: p.order_id.clone(),
                    reason: p.reason.clone(),
                },
            );
        }
    }
}

/// On `payments.cmd.refund`: gives back a captured payment, once. An order
/// with no captured payment (declined, never charged, already refunded)
/// needs nothing.
pub(crate) async fn refund(ctx: Ctx<Payments>, cmd: RefundPayment) -> Result<(), HandlerError> {
    let Some(p) = payments::Entity::find_by_id(cmd.order_id.clone())
        .one(ctx.db())
        .await?
    else {
        return Ok(());
    };
    if p.status != CAPTURED {
        return Ok(());
    }
    let mut row = p.clone().into_active_model();
    row.status = Set(REFUNDED.to_owned());
    row.reason = Set(cmd.reason.clone());
    row.updated_at = Set(now_micros());
    row.update(ctx.db()).await?;
    ctx.emit(
        &ctx.state().subjects.payment_refunded,
        &p.order_id,
        &PaymentRefunded {
            order_id: p.order_id.clone(),
            payment_id: p.payment_id.clone(),
            amount_cents: p.amount_cents,
            currency: p.currency.clone(),
        },
    );
    Ok(())
}
