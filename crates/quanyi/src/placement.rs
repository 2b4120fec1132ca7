//! The placement request: who buys what, from where, under which idempotency key.

use std::collections::BTreeMap;

use quanyi_core::{MemberId, OrderId};
use quanyi_order::{Order, OrderContext};
use quanyi_storage::Claim;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{CartLine, Error, Result, Shop};

/// The claim scope of placement idempotency keys.
pub const PLACEMENT_CLAIM_SCOPE: &str = "placement";

/// The longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

/// A request to place an order: the member, the cart, an optional idempotency key and the
/// order's context.
///
/// With a key, placing is idempotent per shop tenant: the same key with the same request
/// answers the order the first placement made (also when retries race, in one process or many);
/// the same key with a different request is [`Error::IdempotencyConflict`]. The request's
/// fingerprint covers the member, every cart line (SKU, quantity, account) and the whole
/// context; [`unfingerprinted`](PlaceOrder::unfingerprinted) values (a step-up proof a retry
/// may carry anew) are left out. A placement that is refused (out of stock, say) keeps no
/// record of its key: a retry is decided afresh. The events of a placement with a key carry
/// the correlation id `placement:<key>`, so a feed reader can tie them to the client's request.
///
/// ```
/// # use quanyi::{Channel, MemberId, OrderContext, PlaceOrder, CartLine, SkuId};
/// # fn demo(sku: SkuId) -> Result<(), Box<dyn std::error::Error>> {
/// let request = PlaceOrder::new(MemberId::new("alice")?, vec![CartLine::new(sku, 1)])
///     .idempotency_key("3f1c9e70-checkout-1")
///     .context(
///         OrderContext::new(Channel::MiniProgram)
///             .client_ip("203.0.113.7".parse()?)
///             .attribute("campaign", "double-12"),
///     );
/// # let _ = request; Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceOrder {
    member: MemberId,
    cart: Vec<CartLine>,
    key: Option<String>,
    context: OrderContext,
    unfingerprinted: BTreeMap<String, String>,
    codes: Vec<String>,
    member_facts: Option<quanyi_pricing::MemberFacts>,
}

/// The most promotion codes one placement carries.
pub const MAX_PROMOTION_CODES: usize = 4;
/// The longest promotion code, in characters.
pub const MAX_PROMOTION_CODE_CHARS: usize = 64;

impl PlaceOrder {
    /// A request for `member` to buy `cart`, from the web channel, without a key.
    pub fn new(member: MemberId, cart: Vec<CartLine>) -> Self {
        PlaceOrder {
            member,
            cart,
            key: None,
            context: OrderContext::default(),
            unfingerprinted: BTreeMap::new(),
            codes: Vec::new(),
            member_facts: None,
        }
    }

    /// A promotion code the buyer entered (a coupon, a share poster's referral code); part of
    /// the fingerprint. A placement is refused when a code is unknown
    /// (`unknown_promotion_code`) or its promotion did not apply (`promotion_not_applied`).
    #[must_use]
    pub fn promotion_code(mut self, code: impl Into<String>) -> Self {
        self.codes.push(code.into());
        self
    }

    /// What the host knows of the member (level, tags, registration, purchases, memberships)
    /// for the price stage's conditions, until the membership domain keeps members. Outside
    /// the fingerprint and not stored; without it the buyer is priced as a guest (promotions
    /// with member conditions do not apply).
    #[must_use]
    pub fn member_facts(mut self, facts: quanyi_pricing::MemberFacts) -> Self {
        self.member_facts = Some(facts);
        self
    }

    /// The price stage's inputs of this request.
    pub(crate) fn price_inputs(&self) -> crate::price_stage::PriceInputs<'_> {
        crate::price_stage::PriceInputs {
            buyer: &self.member,
            codes: &self.codes,
            member: self.member_facts.as_ref(),
            channel: self.context.channel.as_str(),
        }
    }

    /// The idempotency key: 1 to [`MAX_IDEMPOTENCY_KEY`] printable ASCII characters, chosen by
    /// the client once per purchase and sent again with every retry of it.
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The order's context (channel, client, referral, attributes), stored with the order.
    #[must_use]
    pub fn context(mut self, context: OrderContext) -> Self {
        self.context = context;
        self
    }

    /// A value a retry may legitimately change (a step-up proof), outside the fingerprint and
    /// not stored with the order; later checkout stages (risk) read it.
    #[must_use]
    pub fn unfingerprinted(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.unfingerprinted.insert(name.into(), value.into());
        self
    }

    /// The buyer.
    pub fn member(&self) -> &MemberId {
        &self.member
    }

    /// The cart.
    pub fn cart(&self) -> &[CartLine] {
        &self.cart
    }

    /// The idempotency key, if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The order's context.
    pub fn order_context(&self) -> &OrderContext {
        &self.context
    }

    /// The values outside the fingerprint.
    pub fn unfingerprinted_values(&self) -> &BTreeMap<String, String> {
        &self.unfingerprinted
    }

    /// Checks the key and the context.
    pub(crate) fn check(&self) -> Result<()> {
        if let Some(key) = &self.key {
            if key.is_empty()
                || key.len() > MAX_IDEMPOTENCY_KEY
                || !key.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(Error::InvalidInput(format!(
                    "an idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII \
                     characters"
                )));
            }
        }
        self.context.check()?;
        if self.codes.len() > MAX_PROMOTION_CODES
            || self.codes.iter().any(|c| {
                c.trim().is_empty()
                    || c.chars().count() > MAX_PROMOTION_CODE_CHARS
                    || c.chars().any(char::is_control)
            })
        {
            return Err(Error::InvalidInput(format!(
                "at most {MAX_PROMOTION_CODES} promotion codes of 1 to \
                 {MAX_PROMOTION_CODE_CHARS} printable characters"
            )));
        }
        Ok(())
    }

    /// SHA-256 over the member, the cart and the context, each part tagged and length-prefixed,
    /// as lowercase hex.
    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        put(&mut h, "member", self.member.as_str().as_bytes());
        for line in &self.cart {
            put(&mut h, "sku", line.sku.as_uuid().as_bytes());
            put(&mut h, "quantity", &line.quantity.to_be_bytes());
            put(
                &mut h,
                "account",
                line.account.as_deref().unwrap_or_default().as_bytes(),
            );
        }
        let c = &self.context;
        put(&mut h, "channel", c.channel.as_str().as_bytes());
        let ip = c.client_ip.map(|ip| ip.to_string()).unwrap_or_default();
        put(&mut h, "ip", ip.as_bytes());
        for (tag, text) in [
            ("device", &c.device_id),
            ("agent", &c.user_agent),
            ("referral", &c.referral),
        ] {
            put(&mut h, tag, text.as_deref().unwrap_or_default().as_bytes());
        }
        for (name, value) in &c.attributes {
            put(&mut h, "attribute", name.as_bytes());
            put(&mut h, "value", value.as_bytes());
        }
        for code in &self.codes {
            put(&mut h, "code", code.trim().to_ascii_uppercase().as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// One tagged, length-prefixed part of a fingerprint.
fn put(h: &mut Sha256, tag: &str, value: &[u8]) {
    h.update((tag.len() as u64).to_be_bytes());
    h.update(tag.as_bytes());
    h.update((value.len() as u64).to_be_bytes());
    h.update(value);
}

/// What a placement's idempotency claim keeps.
#[derive(Serialize, Deserialize)]
struct Placed {
    fingerprint: String,
    order: OrderId,
}

/// An idempotent placement in flight: its key's claim, or the order it placed before.
pub(crate) struct Idempotency {
    key: String,
    fingerprint: String,
}

impl Idempotency {
    /// The correlation id of the events the placement writes: `placement:<key>`.
    pub(crate) fn correlation(&self) -> std::sync::Arc<str> {
        std::sync::Arc::from(format!("{PLACEMENT_CLAIM_SCOPE}:{}", self.key))
    }

    /// The claim the placement of `order` takes.
    pub(crate) fn claim(&self, order: OrderId) -> Result<Claim> {
        let value = serde_json::to_string(&Placed {
            fingerprint: self.fingerprint.clone(),
            order,
        })
        .map_err(|e| Error::InvalidInput(format!("idempotency record: {e}")))?;
        Ok(Claim {
            scope: PLACEMENT_CLAIM_SCOPE.to_owned(),
            key: self.key.clone(),
            value,
        })
    }
}

impl Shop {
    /// Places an order from a request: as [`place_order`](Shop::place_order), with the
    /// request's context stored on the order and, with an idempotency key, at most one order
    /// per key (see [`PlaceOrder`]).
    ///
    /// # Errors
    /// As [`place_order`](Shop::place_order); [`Error::IdempotencyConflict`] when the key
    /// placed an order for a different request; [`Error::InvalidInput`] for a malformed key;
    /// [`Error::Order`] (`invalid_context`) for a malformed context.
    pub async fn place(&self, request: PlaceOrder) -> Result<Order> {
        request.check()?;
        let idempotency = request.key.as_ref().map(|key| Idempotency {
            key: key.clone(),
            fingerprint: request.fingerprint(),
        });
        if let Some(i) = &idempotency {
            if let Some(claim) = self
                .store_ref()
                .claim(&self.tenant, PLACEMENT_CLAIM_SCOPE, &i.key)
                .await?
            {
                return self.placed_before(&claim, i).await;
            }
        }
        match self
            .place_checked(
                &request.member,
                &request.cart,
                &request.context,
                &request.unfingerprinted,
                &request.price_inputs(),
                idempotency.as_ref(),
            )
            .await
        {
            Err(Error::Storage(quanyi_storage::Error::Claimed { claim })) => match &idempotency {
                Some(i) if claim.scope == PLACEMENT_CLAIM_SCOPE => {
                    self.placed_before(&claim, i).await
                }
                _ => Err(Error::Storage(quanyi_storage::Error::Claimed { claim })),
            },
            other => other,
        }
    }

    /// The order a key placed before, when the request is the same.
    async fn placed_before(&self, claim: &Claim, i: &Idempotency) -> Result<Order> {
        let placed: Placed = serde_json::from_str(&claim.value).map_err(|e| {
            Error::Storage(quanyi_storage::Error::Corrupt(format!(
                "stored idempotency record: {e}"
            )))
        })?;
        if placed.fingerprint != i.fingerprint {
            return Err(Error::IdempotencyConflict {
                order: placed.order,
            });
        }
        tracing::info!(order = %placed.order, "placement repeated with its idempotency key");
        self.order(placed.order).await
    }
}
