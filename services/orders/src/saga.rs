//! The order saga: one handler per command or event that moves an order.
//!
//! Each handler loads the order, decides from its state, updates the row and
//! emits what follows, all in the kit's transaction: a redelivered event
//! finds the order already moved and does nothing (and the kit's inbox
//! usually stops it before that).

use std::collections::BTreeMap;

use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter,
};
use sluice_kit::db::now_micros;
use sluice_kit::{Ctx, HandlerError};
use sluice_proto::shop::inventory::v1::{StockRejected, StockReserved};
use sluice_proto::shop::orders::v1::{
    CancelOrder, OrderCancellationRequested, OrderCancelled, OrderConfirmed, OrderLine,
    OrderPlaced, PlaceOrder,
};
use sluice_proto::shop::payments::v1::{
    ChargePayment, PaymentCaptured, PaymentDeclined, PaymentRefunded, RefundPayment,
};

use crate::status::{CANCELLED, CONFIRMED, PENDING};
use crate::tables::{catalogue, order_lines, orders};
use crate::{Orders, PRICE_ATTEMPTS};

/// Most lines an order may have.
pub(crate) const MAX_LINES: usize = 100;
/// Most units of one product an order may ask for.
pub(crate) const MAX_QUANTITY: i64 = 10_000;

const STEP_PLACED: &str = "placed";
const STEP_CHARGING: &str = "charging";
const STEP_CONFIRMED: &str = "confirmed";
const STEP_CANCELLED: &str = "cancelled";

const PAYMENT_NONE: &str = "none";
const PAYMENT_CAPTURED: &str = "captured";
const PAYMENT_DECLINED: &str = "declined";
const PAYMENT_REFUNDED: &str = "refunded";

/// Why the customer's own cancellation ended an order.
const BY_CUSTOMER: &str = "cancelled by the customer";

/// The lines of `cmd`, one per product (quantities of a repeated product
/// added up), or why the order cannot be taken.
fn requested_lines(cmd: &PlaceOrder) -> Result<BTreeMap<String, i64>, String> {
    if cmd.lines.is_empty() {
        return Err("the order has no lines".into());
    }
    if cmd.lines.len() > MAX_LINES {
        return Err(format!("the order has more than {MAX_LINES} lines"));
    }
    let mut out = BTreeMap::new();
    for (i, line) in cmd.lines.iter().enumerate() {
        if line.product_id.is_empty() {
            return Err(format!("line {i} has no product id"));
        }
        if line.quantity < 1 || line.quantity > MAX_QUANTITY {
            return Err(format!(
                "line {i}: quantity {} of {} is not between 1 and {MAX_QUANTITY}",
                line.quantity, line.product_id
            ));
        }
        let q: &mut i64 = out.entry(line.product_id.clone()).or_insert(0);
        *q += line.quantity;
        if *q > MAX_QUANTITY {
            return Err(format!(
                "more than {MAX_QUANTITY} units of {}",
                line.product_id
            ));
        }
    }
    Ok(out)
}

/// A priced order, or why it cannot be priced.
enum Priced {
    /// Every line has a price in one currency.
    Ok {
        lines: Vec<OrderLine>,
        total: i64,
        currency: String,
    },
    /// The order can never be taken.
    Refused(String),
    /// A product is not in the price list (yet).
    Unknown(String),
}

async fn price(ctx: &Ctx<Orders>, wanted: &BTreeMap<String, i64>) -> Result<Priced, HandlerError> {
    let known: BTreeMap<String, catalogue::Model> = catalogue::Entity::find()
        .filter(catalogue::Column::ProductId.is_in(wanted.keys().map(String::as_str)))
        .all(ctx.db())
        .await?
        .into_iter()
        .map(|p| (p.product_id.clone(), p))
        .collect();
    let mut lines = Vec::with_capacity(wanted.len());
    let mut total: i64 = 0;
    let mut currency: Option<&str> = None;
    for (product, quantity) in wanted {
        let Some(p) = known.get(product) else {
            return Ok(Priced::Unknown(product.clone()));
        };
        if p.deleted {
            return Ok(Priced::Refused(format!(
                "product {product} is no longer sold"
            )));
        }
        match currency {
            None => currency = Some(&p.currency),
            Some(c) if c != p.currency => {
                return Ok(Priced::Refused(format!(
                    "the products are priced in different currencies ({c}, {})",
                    p.currency
                )));
            }
            Some(_) => {}
        }
        let Some(sum) = p
            .price_cents
            .checked_mul(*quantity)
            .and_then(|l| l.checked_add(total))
        else {
            return Ok(Priced::Refused("the order's total is too large".into()));
        };
        total = sum;
        lines.push(OrderLine {
            product_id: product.clone(),
            // At most MAX_QUANTITY, checked above.
            quantity: u32::try_from(*quantity).unwrap_or(u32::MAX),
            price_cents: p.price_cents,
        });
    }
    Ok(Priced::Ok {
        lines,
        total,
        currency: currency.unwrap_or_default().to_owned(),
    })
}

fn new_order(cmd: &PlaceOrder, status: &str, step: &str) -> orders::Model {
    let now = now_micros();
    orders::Model {
        id: cmd.order_id.clone(),
        customer_id: cmd.customer_id.clone(),
        status: status.to_owned(),
        step: step.to_owned(),
        total_cents: 0,
        currency: String::new(),
        payment_token: cmd.payment_token.clone(),
        reason: String::new(),
        cancel_requested: false,
        stock_reserved: false,
        payment: PAYMENT_NONE.to_owned(),
        created_at: now,
        updated_at: now,
    }
}

/// On `orders.cmd.place`: prices the order from the catalogue and starts the
/// saga (`OrderPlaced`), or records it as cancelled with the reason
/// (`OrderCancelled`) when it cannot be taken.
pub(crate) async fn place(ctx: Ctx<Orders>, cmd: PlaceOrder) -> Result<(), HandlerError> {
    if cmd.order_id.is_empty() || cmd.customer_id.is_empty() {
        return Err(HandlerError::Permanent(
            "place order needs an order id and a customer id".into(),
        ));
    }
    if orders::Entity::find_by_id(cmd.order_id.clone())
        .one(ctx.db())
        .await?
        .is_some()
    {
        // The same order asked for again (a retried request): it is under way.
        return Ok(());
    }
    let priced = match requested_lines(&cmd) {
        Err(reason) => Priced::Refused(format!("invalid order: {reason}")),
        Ok(wanted) => price(&ctx, &wanted).await?,
    };
    let (lines, total, currency) = match priced {
        Priced::Ok {
            lines,
            total,
            currency,
        } => (lines, total, currency),
        Priced::Unknown(product) if ctx.delivered() < PRICE_ATTEMPTS => {
            return Err(HandlerError::Transient(format!(
                "product {product} is not in the price list (yet)"
            )));
        }
        Priced::Unknown(product) => {
            return refuse(&ctx, &cmd, format!("unknown product {product}")).await;
        }
        Priced::Refused(reason) => return refuse(&ctx, &cmd, reason).await,
    };
    let mut order = new_order(&cmd, PENDING, STEP_PLACED);
    order.total_cents = total;
    order.currency.clone_from(&currency);
    orders::Entity::insert(order.into_active_model())
        .exec_without_returning(ctx.db())
        .await?;
    order_lines::Entity::insert_many(lines.iter().map(|l| order_lines::ActiveModel {
        order_id: Set(cmd.order_id.clone()),
        product_id: Set(l.product_id.clone()),
        quantity: Set(i64::from(l.quantity)),
        price_cents: Set(l.price_cents),
    }))
    .exec_without_returning(ctx.db())
    .await?;
    ctx.emit(
        &ctx.state().subjects.order_placed,
        &cmd.order_id,
        &OrderPlaced {
            order_id: cmd.order_id.clone(),
            customer_id: cmd.customer_id.clone(),
            lines,
            total_cents: total,
            currency,
            payment_token: cmd.payment_token.clone(),
        },
    );
    Ok(())
}

/// Records an order that cannot be taken as cancelled, with the reason.
async fn refuse(ctx: &Ctx<Orders>, cmd: &PlaceOrder, reason: String) -> Result<(), HandlerError> {
    tracing::info!(order = %cmd.order_id, %reason, "order refused");
    let mut order = new_order(cmd, CANCELLED, STEP_CANCELLED);
    order.reason.clone_from(&reason);
    orders::Entity::insert(order.into_active_model())
        .exec_without_returning(ctx.db())
        .await?;
    ctx.emit(
        &ctx.state().subjects.order_cancelled,
        &cmd.order_id,
        &OrderCancelled {
            order_id: cmd.order_id.clone(),
            customer_id: cmd.customer_id.clone(),
            reason,
        },
    );
    Ok(())
}

/// The order an event is about, or `None` (logged) when this service never
/// took it, e.g. an `OrderPlaced` published by hand.
async fn load(ctx: &Ctx<Orders>, order_id: &str) -> Result<Option<orders::Model>, HandlerError> {
    let order = orders::Entity::find_by_id(order_id.to_owned())
        .one(ctx.db())
        .await?;
    if order.is_none() {
        tracing::warn!(order = %order_id, subject = %ctx.subject(), "event for an unknown order, ignored");
    }
    Ok(order)
}

/// Saves `order`'s new state.
async fn save(ctx: &Ctx<Orders>, order: orders::ActiveModel) -> Result<(), HandlerError> {
    let mut order = order;
    order.updated_at = Set(now_micros());
    order.update(ctx.db()).await?;
    Ok(())
}

/// Ends `order` as cancelled with `reason` and says so; the inventory
/// releases whatever it reserved when it sees `OrderCancelled`.
fn cancelled(ctx: &Ctx<Orders>, order: &orders::Model, reason: &str) -> orders::ActiveModel {
    ctx.emit(
        &ctx.state().subjects.order_cancelled,
        &order.id,
        &OrderCancelled {
            order_id: order.id.clone(),
            customer_id: order.customer_id.clone(),
            reason: reason.to_owned(),
        },
    );
    let mut row = order.clone().into_active_model();
    row.status = Set(CANCELLED.to_owned());
    row.step = Set(STEP_CANCELLED.to_owned());
    row.reason = Set(reason.to_owned());
    row
}

/// Asks payments to give back `order`'s captured payment.
fn refund(ctx: &Ctx<Orders>, order: &orders::Model, reason: &str) {
    ctx.emit(
        &ctx.state().subjects.refund,
        &order.id,
        &RefundPayment {
            order_id: order.id.clone(),
            reason: reason.to_owned(),
        },
    );
}

/// On `StockReserved`: charge the order, or, if the customer asked to
/// cancel meanwhile, cancel it (the inventory releases the stock).
pub(crate) async fn stock_reserved(
    ctx: Ctx<Orders>,
    ev: StockReserved,
) -> Result<(), HandlerError> {
    let Some(order) = load(&ctx, &ev.order_id).await? else {
        return Ok(());
    };
    if order.status != PENDING || order.step != STEP_PLACED {
        return Ok(());
    }
    if order.cancel_requested {
        let mut row = cancelled(&ctx, &order, BY_CUSTOMER);
        row.stock_reserved = Set(true);
        return save(&ctx, row).await;
    }
    ctx.emit(
        &ctx.state().subjects.charge,
        &order.id,
        &ChargePayment {
            order_id: order.id.clone(),
            amount_cents: order.total_cents,
            currency: order.currency.clone(),
            payment_token: order.payment_token.clone(),
        },
    );
    let mut row = order.into_active_model();
    row.stock_reserved = Set(true);
    row.step = Set(STEP_CHARGING.to_owned());
    save(&ctx, row).await
}

/// On `StockRejected`: nothing was reserved or charged; cancel with the
/// inventory's reason.
pub(crate) async fn stock_rejected(
    ctx: Ctx<Orders>,
    ev: StockRejected,
) -> Result<(), HandlerError> {
    let Some(order) = load(&ctx, &ev.order_id).await? else {
        return Ok(());
    };
    if order.status != PENDING || order.step != STEP_PLACED {
        return Ok(());
    }
    let reason = format!("out of stock: {}", ev.reason);
    let row = cancelled(&ctx, &order, &reason);
    save(&ctx, row).await
}

/// On `PaymentCaptured`: confirm, or, if the customer asked to cancel
/// meanwhile (or the order is already over), refund and cancel.
pub(crate) async fn payment_captured(
    ctx: Ctx<Orders>,
    ev: PaymentCaptured,
) -> Result<(), HandlerError> {
    let Some(order) = load(&ctx, &ev.order_id).await? else {
        return Ok(());
    };
    if order.payment != PAYMENT_NONE {
        // Already settled: a repeated answer to a repeated charge.
        return Ok(());
    }
    if order.status == PENDING && order.step == STEP_CHARGING && !order.cancel_requested {
        ctx.emit(
            &ctx.state().subjects.order_confirmed,
            &order.id,
            &OrderConfirmed {
                order_id: order.id.clone(),
                customer_id: order.customer_id.clone(),
                total_cents: order.total_cents,
                currency: order.currency.clone(),
            },
        );
        let mut row = order.into_active_model();
        row.status = Set(CONFIRMED.to_owned());
        row.step = Set(STEP_CONFIRMED.to_owned());
        row.payment = Set(PAYMENT_CAPTURED.to_owned());
        return save(&ctx, row).await;
    }
    // A capture the order no longer wants: give the money back.
    refund(&ctx, &order, BY_CUSTOMER);
    let mut row = if order.status == PENDING {
        cancelled(&ctx, &order, BY_CUSTOMER)
    } else {
        order.clone().into_active_model()
    };
    row.payment = Set(PAYMENT_CAPTURED.to_owned());
    save(&ctx, row).await
}

/// On `PaymentDeclined`: cancel (the inventory releases the stock).
pub(crate) async fn payment_declined(
    ctx: Ctx<Orders>,
    ev: PaymentDeclined,
) -> Result<(), HandlerError> {
    let Some(order) = load(&ctx, &ev.order_id).await? else {
        return Ok(());
    };
    if order.payment != PAYMENT_NONE {
        return Ok(());
    }
    let mut row = if order.status == PENDING {
        let reason = if order.cancel_requested {
            BY_CUSTOMER.to_owned()
        } else {
            format!("payment declined: {}", ev.reason)
        };
        cancelled(&ctx, &order, &reason)
    } else {
        order.clone().into_active_model()
    };
    row.payment = Set(PAYMENT_DECLINED.to_owned());
    save(&ctx, row).await
}

/// On `PaymentRefunded`: note it.
pub(crate) async fn payment_refunded(
    ctx: Ctx<Orders>,
    ev: PaymentRefunded,
) -> Result<(), HandlerError> {
    let Some(order) = load(&ctx, &ev.order_id).await? else {
        return Ok(());
    };
    if order.payment == PAYMENT_REFUNDED {
        return Ok(());
    }
    let mut row = order.into_active_model();
    row.payment = Set(PAYMENT_REFUNDED.to_owned());
    save(&ctx, row).await
}

/// On `orders.cmd.cancel`: a confirmed order is cancelled at once (refund,
/// release); a pending one is marked and cancelled at the saga's next step;
/// a cancelled one stays so. Only the order's customer may cancel it.
pub(crate) async fn cancel(ctx: Ctx<Orders>, cmd: CancelOrder) -> Result<(), HandlerError> {
    if cmd.order_id.is_empty() {
        return Err(HandlerError::Permanent("cancel without an order id".into()));
    }
    let Some(order) = orders::Entity::find_by_id(cmd.order_id.clone())
        .one(ctx.db())
        .await?
    else {
        // The order's own command may still be on its way (or retrying).
        if ctx.delivered() < PRICE_ATTEMPTS + 1 {
            return Err(HandlerError::Transient(format!(
                "order {} is not known (yet)",
                cmd.order_id
            )));
        }
        tracing::warn!(order = %cmd.order_id, "cancel for an unknown order, ignored");
        return Ok(());
    };
    if order.customer_id != cmd.customer_id {
        tracing::warn!(order = %order.id, "cancel by another customer, ignored");
        return Ok(());
    }
    match order.status.as_str() {
        CONFIRMED => {
            refund(&ctx, &order, BY_CUSTOMER);
            let row = cancelled(&ctx, &order, BY_CUSTOMER);
            save(&ctx, row).await
        }
        PENDING if !order.cancel_requested => {
            ctx.emit(
                &ctx.state().subjects.cancellation_requested,
                &order.id,
                &OrderCancellationRequested {
                    order_id: order.id.clone(),
                    customer_id: order.customer_id.clone(),
                },
            );
            let mut row = order.into_active_model();
            row.cancel_requested = Set(true);
            save(&ctx, row).await
        }
        _ => Ok(()),
    }
}
