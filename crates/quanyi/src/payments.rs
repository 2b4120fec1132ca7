//! The payment gateway port: how the shop pays money back.

use std::fmt;

use async_trait::async_trait;
use quanyi_core::{ErrorKind, Money, OrderId};

/// A refund the shop asks the payment provider for. `refund_id` is stable for the same refund,
/// so repeating the call after a timeout must not pay twice: the gateway passes it to the
/// provider as its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// Stable per refund: `<order>-L<line>` for one line, `<order>-all` for the rest of an order.
    pub refund_id: String,
    /// The order.
    pub order: OrderId,
    /// The provider that took the payment.
    pub provider: String,
    /// The provider's transaction id of the payment.
    pub transaction_id: String,
    /// How much to pay back.
    pub amount: Money,
    /// Why, for the provider's records and the buyer.
    pub reason: String,
}

/// The provider's answer to a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundReceipt {
    /// The provider's id of the refund.
    pub provider_refund_id: String,
}

/// Why a refund did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The provider refused the refund; retrying will not help and a person must look.
    #[error("refund declined: {reason}")]
    Declined {
        /// The provider's reason.
        reason: String,
    },
    /// The provider could not be reached or did not answer; the same refund may be retried.
    #[error("payment provider unavailable: {reason}")]
    Unavailable {
        /// What happened.
        reason: String,
    },
}

impl GatewayError {
    /// The driver-neutral kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            GatewayError::Declined { .. } => ErrorKind::Forbidden,
            GatewayError::Unavailable { .. } => ErrorKind::Unavailable,
        }
    }
}

/// The host's payment provider, for refunds. Implement it with your provider's refund API and
/// hand it to [`ShopBuilder::payment_gateway`](crate::ShopBuilder::payment_gateway).
#[async_trait]
pub trait PaymentGateway: Send + Sync + fmt::Debug {
    /// Pays `request.amount` back on the payment `request.transaction_id`, once per
    /// `request.refund_id`.
    ///
    /// # Errors
    /// [`GatewayError::Declined`] or [`GatewayError::Unavailable`].
    async fn refund(&self, request: &RefundRequest) -> Result<RefundReceipt, GatewayError>;
}
