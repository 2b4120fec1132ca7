//! The checkout's stages. A placement runs, in order: **price** (list prices today; the
//! pricing engine replaces it), **check** (shelf, quantities, limits, accounts, fulfilment,
//! supplier stock), **decide** (a [`DecideStage`]: allow-all unless the host registers one; the
//! risk engine replaces it), then **reserve and write** (one atomic store call with the order,
//! its events, reservations, member limits and claims). What the stages concluded is kept on
//! the order: every line's [`PriceSource`](crate::PriceSource) and the [`Decision`].

use std::collections::BTreeMap;

use async_trait::async_trait;
use quanyi_order::{Decision, Order, Verdict};

use crate::{Error, Result, Shop};

/// The checkout's decide stage: sees the priced, checked order before anything is reserved or
/// written, with the request's values outside its fingerprint (a step-up proof), and allows it
/// or denies it. A placement may run it more than once (when goods changed under it and the
/// order is priced again), so it must not count a call as a purchase.
#[async_trait]
pub trait DecideStage: Send + Sync {
    /// The stage's name, kept in its decisions (see [`Decision::stage`]).
    fn name(&self) -> &str;

    /// Decides on `order` (not stored yet). `extras` are the request's unfingerprinted values.
    ///
    /// # Errors
    /// Any [`Error`]: the placement fails with it and writes nothing.
    async fn decide(
        &self,
        shop: &Shop,
        order: &Order,
        extras: &BTreeMap<String, String>,
    ) -> Result<Decision>;
}

impl Shop {
    /// Runs the decide stage on a priced and checked order: its decision when allowed, `None`
    /// when the shop has no stage (every order is allowed with the default decision, which is
    /// not stored).
    pub(crate) async fn decide(
        &self,
        order: &Order,
        extras: &BTreeMap<String, String>,
    ) -> Result<Option<Decision>> {
        // Without a stage every order is allowed: the default decision, which is not stored.
        let Some(stage) = &self.inner.decide else {
            return Ok(None);
        };
        let decision = stage.decide(self, order, extras).await?;
        if decision.stage != stage.name() {
            return Err(Error::InvalidInput(format!(
                "decide stage {} answered as {}",
                quanyi_core::text::clip(stage.name()),
                quanyi_core::text::clip(&decision.stage)
            )));
        }
        decision.check()?;
        match decision.verdict {
            Verdict::Allow => Ok(Some(decision)),
            _ => {
                tracing::info!(stage = %decision.stage, reasons = ?decision.reasons, "checkout denied");
                Err(Error::CheckoutDenied {
                    stage: decision.stage,
                    reasons: decision.reasons,
                })
            }
        }
    }
}
