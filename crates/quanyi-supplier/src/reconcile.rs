//! Reconciliation (对账): our records against a supplier's statement, keyed by request id.

use std::collections::HashMap;

use quanyi_core::Money;
use serde::{Deserialize, Serialize};

use crate::port::{StatementRecord, StatementStatus};
use quanyi_core::{ProductCode, RequestId};

/// What we recorded for one settled supplier request. Resolve pending requests with
/// [`Supplier::query`](crate::Supplier::query) before reconciling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OurRecord {
    /// Our request id.
    pub request: RequestId,
    /// The supplier's product.
    pub product: ProductCode,
    /// How many units.
    pub quantity: u32,
    /// What we expect to be charged.
    pub amount: Money,
    /// How it ended, as we know it.
    pub status: StatementStatus,
}

/// The outcome of [`reconcile`]: every input record lands in exactly one place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Pairs that agree (both failed, or the same product, quantity, amount and success).
    pub matched: usize,
    /// Ours with no statement line: the supplier has no record (or it falls in another window).
    pub missing: Vec<OurRecord>,
    /// Statement lines with no record of ours, including a second line for one request id
    /// (a possible double charge).
    pub extra: Vec<StatementRecord>,
    /// One side succeeded, the other failed. Checked first: these decide deliveries and refunds.
    pub status_mismatch: Vec<(OurRecord, StatementRecord)>,
    /// Both succeeded at different amounts (or currencies).
    pub amount_mismatch: Vec<(OurRecord, StatementRecord)>,
    /// Both succeeded at the same amount for another product or quantity.
    pub item_mismatch: Vec<(OurRecord, StatementRecord)>,
}

impl Reconciliation {
    /// True when everything matched.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.extra.is_empty()
            && self.status_mismatch.is_empty()
            && self.amount_mismatch.is_empty()
            && self.item_mismatch.is_empty()
    }
}

/// Pairs our records with a statement's by request id (in order of appearance when an id
/// repeats) and sorts each pair or leftover into one bucket of [`Reconciliation`].
///
/// ```
/// use chrono::{TimeZone, Utc};
/// use quanyi_core::{Currency, Money};
/// use quanyi_supplier::{reconcile, OurRecord, ProductCode, RequestId, StatementRecord, StatementStatus};
///
/// let ours = OurRecord {
///     request: RequestId::new("r-1")?,
///     product: ProductCode::new("P")?,
///     quantity: 1,
///     amount: Money::from_minor(1_000, Currency::CNY),
///     status: StatementStatus::Succeeded,
/// };
/// let theirs = StatementRecord {
///     request: ours.request.clone(),
///     product: ours.product.clone(),
///     quantity: 1,
///     amount: Money::from_minor(1_200, Currency::CNY),
///     status: StatementStatus::Succeeded,
///     at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().ok_or("time")?,
/// };
/// let report = reconcile(&[ours], &[theirs]);
/// assert_eq!(report.amount_mismatch.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn reconcile(ours: &[OurRecord], theirs: &[StatementRecord]) -> Reconciliation {
    // Statement positions per request id, last first, so `pop` takes them in order.
    let mut by_request: HashMap<&RequestId, Vec<usize>> = HashMap::new();
    for (n, record) in theirs.iter().enumerate().rev() {
        by_request.entry(&record.request).or_default().push(n);
    }
    let mut report = Reconciliation::default();
    for our in ours {
        let Some(their) = by_request
            .get_mut(&our.request)
            .and_then(Vec::pop)
            .map(|n| &theirs[n])
        else {
            report.missing.push(our.clone());
            continue;
        };
        let pair = || (our.clone(), their.clone());
        match (our.status, their.status) {
            (StatementStatus::Failed, StatementStatus::Failed) => report.matched += 1,
            (a, b) if a != b => report.status_mismatch.push(pair()),
            _ if our.amount != their.amount => report.amount_mismatch.push(pair()),
            _ if our.product != their.product || our.quantity != their.quantity => {
                report.item_mismatch.push(pair());
            }
            _ => report.matched += 1,
        }
    }
    // What is left over, in statement order.
    let mut left: Vec<usize> = by_request.into_values().flatten().collect();
    left.sort_unstable();
    report.extra = left.into_iter().map(|n| theirs[n].clone()).collect();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use StatementStatus::{Failed, Succeeded};
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;
    use quanyi_core::Currency;

    fn ours(
        id: &str,
        product: &str,
        quantity: u32,
        fen: i64,
        status: StatementStatus,
    ) -> OurRecord {
        OurRecord {
            request: RequestId::new(id).unwrap(),
            product: ProductCode::new(product).unwrap(),
            quantity,
            amount: Money::from_minor(fen, Currency::CNY),
            status,
        }
    }

    fn theirs(
        id: &str,
        product: &str,
        quantity: u32,
        fen: i64,
        status: StatementStatus,
    ) -> StatementRecord {
        StatementRecord {
            request: RequestId::new(id).unwrap(),
            product: ProductCode::new(product).unwrap(),
            quantity,
            amount: Money::from_minor(fen, Currency::CNY),
            status,
            at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        }
    }

    /// Expected bucket sizes: matched, missing, extra, status, amount, item.
    fn check(o: &[OurRecord], t: &[StatementRecord], expected: [usize; 6]) {
        let r = reconcile(o, t);
        let got = [
            r.matched,
            r.missing.len(),
            r.extra.len(),
            r.status_mismatch.len(),
            r.amount_mismatch.len(),
            r.item_mismatch.len(),
        ];
        assert_eq!(got, expected, "ours {o:?}\ntheirs {t:?}");
        assert_eq!(r.is_clean(), got[1..].iter().all(|n| *n == 0));
    }

    #[test]
    fn reconcile_table() {
        let a = ours("r1", "P", 1, 100, Succeeded);
        check(&[], &[], [0, 0, 0, 0, 0, 0]);
        check(
            std::slice::from_ref(&a),
            &[theirs("r1", "P", 1, 100, Succeeded)],
            [1, 0, 0, 0, 0, 0],
        );
        check(std::slice::from_ref(&a), &[], [0, 1, 0, 0, 0, 0]);
        check(
            &[],
            &[theirs("r1", "P", 1, 100, Succeeded)],
            [0, 0, 1, 0, 0, 0],
        );
        check(
            std::slice::from_ref(&a),
            &[theirs("r2", "P", 1, 100, Succeeded)],
            [0, 1, 1, 0, 0, 0],
        );
        check(
            std::slice::from_ref(&a),
            &[theirs("r1", "P", 1, 100, Failed)],
            [0, 0, 0, 1, 0, 0],
        );
        check(
            &[ours("r1", "P", 1, 100, Failed)],
            &[theirs("r1", "P", 1, 100, Succeeded)],
            [0, 0, 0, 1, 0, 0],
        );
        check(
            std::slice::from_ref(&a),
            &[theirs("r1", "P", 1, 120, Succeeded)],
            [0, 0, 0, 0, 1, 0],
        );
        check(
            std::slice::from_ref(&a),
            &[theirs("r1", "Q", 1, 100, Succeeded)],
            [0, 0, 0, 0, 0, 1],
        );
        check(
            std::slice::from_ref(&a),
            &[theirs("r1", "P", 2, 100, Succeeded)],
            [0, 0, 0, 0, 0, 1],
        );
        // Status outranks amount, amount outranks item.
        check(
            std::slice::from_ref(&a),
            &[theirs("r1", "Q", 2, 999, Failed)],
            [0, 0, 0, 1, 0, 0],
        );
        check(
            std::slice::from_ref(&a),
            &[theirs("r1", "Q", 2, 999, Succeeded)],
            [0, 0, 0, 0, 1, 0],
        );
        // Both failed: nothing moved, amounts do not matter.
        check(
            &[ours("r1", "P", 1, 100, Failed)],
            &[theirs("r1", "Q", 1, 0, Failed)],
            [1, 0, 0, 0, 0, 0],
        );
        // A request charged twice: the second line is extra.
        check(
            std::slice::from_ref(&a),
            &[
                theirs("r1", "P", 1, 100, Succeeded),
                theirs("r1", "P", 1, 100, Succeeded),
            ],
            [1, 0, 1, 0, 0, 0],
        );
    }

    #[test]
    fn repeated_ids_pair_in_order_and_extras_keep_statement_order() {
        let o = [ours("r1", "P", 1, 100, Succeeded)];
        let t = [
            theirs("r3", "P", 1, 1, Succeeded),
            theirs("r1", "P", 1, 100, Succeeded),
            theirs("r1", "P", 1, 200, Succeeded),
            theirs("r2", "P", 1, 2, Succeeded),
        ];
        let r = reconcile(&o, &t);
        assert_eq!(r.matched, 1);
        let extra: Vec<i64> = r.extra.iter().map(|e| e.amount.minor()).collect();
        assert_eq!(extra, vec![1, 200, 2]);
    }

    fn arb_status() -> impl Strategy<Value = StatementStatus> {
        prop_oneof![Just(Succeeded), Just(Failed)]
    }

    proptest! {
        #[test]
        fn every_record_lands_exactly_once(
            o in prop::collection::vec((0u8..6, 0u8..2, 1u32..3, 0i64..3, arb_status()), 0..12),
            t in prop::collection::vec((0u8..6, 0u8..2, 1u32..3, 0i64..3, arb_status()), 0..12),
        ) {
            let p = |n: u8| if n == 0 { "P" } else { "Q" };
            let o: Vec<OurRecord> =
                o.iter().map(|&(id, pr, q, a, s)| ours(&format!("r{id}"), p(pr), q, a, s)).collect();
            let t: Vec<StatementRecord> =
                t.iter().map(|&(id, pr, q, a, s)| theirs(&format!("r{id}"), p(pr), q, a, s)).collect();
            let r = reconcile(&o, &t);
            let pairs = r.status_mismatch.len() + r.amount_mismatch.len() + r.item_mismatch.len();
            prop_assert_eq!(r.matched + pairs + r.missing.len(), o.len());
            prop_assert_eq!(r.matched + pairs + r.extra.len(), t.len());
            // Extras and missing are really unpaired: count per id.
            for id in 0u8..6 {
                let id = RequestId::new(format!("r{id}")).unwrap();
                let no = o.iter().filter(|x| x.request == id).count();
                let nt = t.iter().filter(|x| x.request == id).count();
                prop_assert_eq!(r.missing.iter().filter(|x| x.request == id).count(), no.saturating_sub(nt));
                prop_assert_eq!(r.extra.iter().filter(|x| x.request == id).count(), nt.saturating_sub(no));
            }
        }
    }
}
