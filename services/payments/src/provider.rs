//! The payment provider. The reference shop uses a simulated one that
//! honours test card tokens, like real providers' test modes.

/// What the provider said about a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charge {
    /// Captured, with the provider's payment id.
    Approved(String),
    /// Refused, with the provider's reason.
    Declined(String),
    /// No answer in time: the charge may be tried again.
    TimedOut,
}

/// A simulated provider: `tok_visa` approves, `tok_chargeDeclined`
/// declines, `tok_timeout` never answers; any other token is declined as
/// unknown.
#[derive(Debug, Clone, Default)]
pub struct SimulatedProvider;

impl SimulatedProvider {
    /// Charges `amount_cents` to `token`.
    pub fn charge(&self, token: &str, amount_cents: i64) -> Charge {
        if amount_cents <= 0 {
            return Charge::Declined(format!("invalid amount {amount_cents}"));
        }
        match token {
            "tok_visa" => Charge::Approved(format!("pay_{}", uuid::Uuid::now_v7().simple())),
            "tok_chargeDeclined" => Charge::Declined("card declined".into()),
            "tok_timeout" => Charge::TimedOut,
            other => Charge::Declined(format!("unknown payment token {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_tokens_behave_as_documented() {
        let p = SimulatedProvider;
        assert!(
            matches!(p.charge("tok_visa", 100), Charge::Approved(id) if id.starts_with("pay_"))
        );
        assert_eq!(
            p.charge("tok_chargeDeclined", 100),
            Charge::Declined("card declined".into())
        );
        assert_eq!(p.charge("tok_timeout", 100), Charge::TimedOut);
        assert!(matches!(p.charge("tok_visa", 0), Charge::Declined(_)));
        assert!(matches!(p.charge("tok_other", 1), Charge::Declined(r) if r.contains("unknown")));
    }
}
