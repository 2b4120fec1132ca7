//! Supplier stock figures with their age, so the shop counts only what it honestly knows.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};

use crate::port::{Availability, SupplierStock};
use crate::route::{Route, RoutePlan};
use quanyi_core::{ProductCode, SupplierId};

/// How current a cached stock figure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Recorded within the freshness bound.
    Fresh(SupplierStock),
    /// Recorded longer ago than the bound: ask the supplier again before counting it.
    Stale(SupplierStock),
    /// Never recorded.
    Missing,
}

/// The last stock figure of each (supplier, product), with when it was recorded. Pure: the
/// engine fills it from [`Supplier::stock`](crate::Supplier::stock) answers.
///
/// ```
/// use chrono::{Duration, TimeZone, Utc};
/// use quanyi_core::{Currency, Money};
/// use quanyi_supplier::{Availability, ProductCode, Route, RoutePlan, StockCache, SupplierId, SupplierStock};
///
/// let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().ok_or("time")?;
/// let route = Route {
///     supplier: SupplierId::new("acme")?,
///     product: ProductCode::new("JD-E-CARD-100")?,
///     cost: Money::from_minor(9_800, Currency::CNY),
/// };
/// let plan = RoutePlan::new(vec![route.clone()])?;
/// let mut cache = StockCache::default();
/// cache.record(&route, SupplierStock { available: Availability::Limited(12), cost: route.cost }, t0);
/// assert_eq!(cache.available_for(&plan, t0 + Duration::seconds(59)), Availability::Limited(12));
/// assert_eq!(cache.available_for(&plan, t0 + Duration::seconds(61)), Availability::Limited(0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct StockCache {
    fresh_for: Duration,
    entries: HashMap<(SupplierId, ProductCode), (SupplierStock, DateTime<Utc>)>,
}

impl Default for StockCache {
    /// Figures are fresh for 60 seconds.
    fn default() -> Self {
        StockCache::new(Duration::seconds(60))
    }
}

impl StockCache {
    /// An empty cache whose figures are fresh for `fresh_for` after they were recorded.
    pub fn new(fresh_for: Duration) -> Self {
        StockCache {
            fresh_for,
            entries: HashMap::new(),
        }
    }

    /// Records `stock` for `route` as of `now`. An answer older than the one held is ignored,
    /// so answers arriving out of order never roll a figure back.
    pub fn record(&mut self, route: &Route, stock: SupplierStock, now: DateTime<Utc>) {
        let key = (route.supplier.clone(), route.product.clone());
        match self.entries.get(&key) {
            Some((_, at)) if *at > now => {}
            _ => {
                self.entries.insert(key, (stock, now));
            }
        }
    }

    /// The figure for `supplier`'s `product` and how fresh it is at `now`.
    pub fn lookup(
        &self,
        supplier: &SupplierId,
        product: &ProductCode,
        now: DateTime<Utc>,
    ) -> Freshness {
        // A borrowed-key lookup would need a custom key type; ids are short, cloning is cheap.
        match self.entries.get(&(supplier.clone(), product.clone())) {
            None => Freshness::Missing,
            Some((stock, at)) if now - *at <= self.fresh_for => Freshness::Fresh(*stock),
            Some((stock, _)) => Freshness::Stale(*stock),
        }
    }

    /// What the plan's routes can deliver at `now`, counting fresh figures only (stale and
    /// missing figures count as zero; an unlimited fresh figure makes the whole unlimited).
    pub fn available_for(&self, plan: &RoutePlan, now: DateTime<Utc>) -> Availability {
        plan.routes()
            .iter()
            .map(|r| match self.lookup(&r.supplier, &r.product, now) {
                Freshness::Fresh(stock) => stock.available,
                Freshness::Stale(_) | Freshness::Missing => Availability::Limited(0),
            })
            .fold(Availability::Limited(0), Availability::plus)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use quanyi_core::{Currency, Money};

    fn t(seconds: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::seconds(seconds)
    }

    fn route(s: &str) -> Route {
        Route {
            supplier: SupplierId::new(s).unwrap(),
            product: ProductCode::new("P").unwrap(),
            cost: Money::from_minor(100, Currency::CNY),
        }
    }

    fn stock(available: Availability) -> SupplierStock {
        SupplierStock {
            available,
            cost: Money::from_minor(100, Currency::CNY),
        }
    }

    use Availability::{Limited, Unlimited};

    /// Records `(supplier, availability, second)` entries and checks the plan a, b, c at `now`.
    fn check(records: &[(&str, Availability, i64)], now: i64, expected: Availability) {
        let mut cache = StockCache::default();
        for &(s, a, at) in records {
            cache.record(&route(s), stock(a), t(at));
        }
        let plan = RoutePlan::new(vec![route("a"), route("b"), route("c")]).unwrap();
        assert_eq!(
            cache.available_for(&plan, t(now)),
            expected,
            "{records:?} at {now}"
        );
    }

    #[test]
    fn available_for_counts_fresh_figures() {
        check(&[], 0, Limited(0));
        check(&[("a", Limited(5), 0)], 0, Limited(5));
        check(&[("a", Limited(5), 0)], 60, Limited(5));
        check(&[("a", Limited(5), 0)], 61, Limited(0));
        check(
            &[("a", Limited(5), 0), ("b", Limited(7), 30)],
            61,
            Limited(7),
        );
        check(
            &[("a", Limited(5), 0), ("b", Limited(7), 0)],
            10,
            Limited(12),
        );
        check(&[("a", Limited(5), 0), ("b", Unlimited, 0)], 10, Unlimited);
        check(&[("a", Limited(5), 0), ("b", Unlimited, 0)], 70, Limited(0));
        check(
            &[("a", Limited(u64::MAX), 0), ("b", Limited(9), 0)],
            1,
            Limited(u64::MAX),
        );
        // A route outside the plan does not count.
        check(&[("z", Limited(9), 0)], 1, Limited(0));
        // The newest figure wins; an older answer arriving late is ignored.
        check(
            &[("a", Limited(5), 0), ("a", Limited(2), 10)],
            20,
            Limited(2),
        );
        check(
            &[("a", Limited(2), 10), ("a", Limited(5), 0)],
            20,
            Limited(2),
        );
    }

    #[test]
    fn lookup_tells_freshness() {
        let mut cache = StockCache::new(Duration::seconds(10));
        let r = route("a");
        assert_eq!(
            cache.lookup(&r.supplier, &r.product, t(0)),
            Freshness::Missing
        );
        cache.record(&r, stock(Limited(3)), t(0));
        assert_eq!(
            cache.lookup(&r.supplier, &r.product, t(10)),
            Freshness::Fresh(stock(Limited(3)))
        );
        assert_eq!(
            cache.lookup(&r.supplier, &r.product, t(11)),
            Freshness::Stale(stock(Limited(3)))
        );
        let other = ProductCode::new("Q").unwrap();
        assert_eq!(cache.lookup(&r.supplier, &other, t(0)), Freshness::Missing);
    }

    #[test]
    fn availability_covers() {
        assert!(Limited(3).covers(3));
        assert!(!Limited(3).covers(4));
        assert!(Unlimited.covers(u64::MAX));
    }
}
