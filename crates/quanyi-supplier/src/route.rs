//! Routes, route plans and the failover planner.

use chrono::{DateTime, Utc};
use quanyi_core::{Currency, Money};
use serde::{Deserialize, Serialize};

use crate::breaker::Breakers;
use crate::error::{FailureOutcome, Result, SupplierError};
use crate::port::{RequestStatus, TopUpOutcome};
use quanyi_core::{ProductCode, SupplierId};

/// The most routes a plan may hold.
pub const MAX_ROUTES: usize = 10;

/// One way to fulfil a line: a supplier, its product code and what a unit costs us there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The supplier.
    pub supplier: SupplierId,
    /// The supplier's product code.
    pub product: ProductCode,
    /// What one unit costs us through this route.
    pub cost: Money,
}

/// The routes of a line in the order to try them: 1 to [`MAX_ROUTES`] routes, each supplier at
/// most once, all costs in one currency.
///
/// ```
/// use quanyi_core::{Currency, Money};
/// use quanyi_supplier::{ProductCode, Route, RoutePlan, SupplierId};
///
/// let route = |s: &str, fen| -> Result<Route, quanyi_supplier::SupplierError> {
///     Ok(Route {
///         supplier: SupplierId::new(s)?,
///         product: ProductCode::new("QQ-VIP-30D")?,
///         cost: Money::from_minor(fen, Currency::CNY),
///     })
/// };
/// let plan = RoutePlan::new(vec![route("acme", 1_450)?, route("bravo", 1_480)?])?;
/// assert_eq!(plan.routes().len(), 2);
/// assert!(RoutePlan::new(vec![route("acme", 1)?, route("acme", 2)?]).is_err());
/// # Ok::<(), quanyi_supplier::SupplierError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Route>", into = "Vec<Route>")]
pub struct RoutePlan {
    routes: Vec<Route>,
}

impl RoutePlan {
    /// Validates a plan.
    ///
    /// # Errors
    /// [`SupplierError::Invalid`] when there are no routes or more than [`MAX_ROUTES`], a
    /// supplier appears twice, or the costs are in different currencies.
    pub fn new(routes: Vec<Route>) -> Result<Self> {
        const WHAT: &str = "route plan";
        if routes.is_empty() {
            return Err(SupplierError::invalid(WHAT, "no routes"));
        }
        if routes.len() > MAX_ROUTES {
            return Err(SupplierError::invalid(WHAT, "more than 10 routes"));
        }
        let currency = routes[0].cost.currency();
        for (n, route) in routes.iter().enumerate() {
            if routes[..n].iter().any(|r| r.supplier == route.supplier) {
                return Err(SupplierError::invalid(
                    WHAT,
                    &format!("supplier {} appears twice", route.supplier),
                ));
            }
            if route.cost.currency() != currency {
                return Err(SupplierError::invalid(
                    WHAT,
                    "costs in different currencies",
                ));
            }
        }
        Ok(RoutePlan { routes })
    }

    /// The routes, in the order to try them.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The currency of every cost.
    pub fn currency(&self) -> Currency {
        self.routes[0].cost.currency()
    }

    /// The route through `supplier`, if the plan has one.
    pub fn route(&self, supplier: &SupplierId) -> Option<&Route> {
        self.routes.iter().find(|r| &r.supplier == supplier)
    }
}

impl TryFrom<Vec<Route>> for RoutePlan {
    type Error = SupplierError;
    fn try_from(routes: Vec<Route>) -> Result<Self> {
        RoutePlan::new(routes)
    }
}

impl From<RoutePlan> for Vec<Route> {
    fn from(plan: RoutePlan) -> Vec<Route> {
        plan.routes
    }
}

/// How one call (or query) to a supplier for a line ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptResult {
    /// The supplier did the work.
    Succeeded,
    /// The supplier certainly did not and will not do it: the line may fail over.
    Definite {
        /// Why, for people.
        reason: String,
    },
    /// The request may have been received: ask the same supplier before anything else.
    Unknown {
        /// Why, for people.
        reason: String,
    },
    /// The supplier has it and is still working.
    Pending,
}

impl AttemptResult {
    /// The result of a failed call: definite or unknown as [`SupplierError::outcome`] says.
    pub fn from_error(error: &SupplierError) -> AttemptResult {
        let reason = error.to_string();
        match error.outcome() {
            FailureOutcome::Definite => AttemptResult::Definite { reason },
            FailureOutcome::Unknown => AttemptResult::Unknown { reason },
        }
    }

    /// The result of a query. [`RequestStatus::NotFound`] is definite: the supplier never got
    /// the request, so the line may fail over.
    pub fn from_status(status: &RequestStatus) -> AttemptResult {
        match status {
            RequestStatus::NotFound => AttemptResult::Definite {
                reason: "supplier never received the request".to_owned(),
            },
            RequestStatus::Pending => AttemptResult::Pending,
            RequestStatus::Succeeded { .. } => AttemptResult::Succeeded,
            RequestStatus::Failed { reason } => AttemptResult::Definite {
                reason: reason.clone(),
            },
        }
    }

    /// The result of a top-up submission.
    pub fn from_top_up(outcome: &TopUpOutcome) -> AttemptResult {
        match outcome {
            TopUpOutcome::Accepted => AttemptResult::Pending,
            TopUpOutcome::Succeeded { .. } => AttemptResult::Succeeded,
        }
    }
}

/// One recorded call or query for a line. A query's answer is a new attempt for the same
/// supplier; a supplier's latest attempt is its standing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Who was asked.
    pub supplier: SupplierId,
    /// What came of it.
    pub result: AttemptResult,
}

/// What the engine should do next for a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Call this route (take its breaker with [`Breakers::try_acquire`] first; if refused, plan
    /// again).
    Call(Route),
    /// A call's outcome is unknown or pending: ask this same supplier, with the same request id,
    /// before anything else (pace the queries with a [`Backoff`](crate::Backoff)).
    Query(Route),
    /// Every route failed definitively: the line cannot be fulfilled (refund it).
    Exhausted,
    /// Untried routes remain but no breaker admits a call before `until`.
    Wait {
        /// When to plan again.
        until: DateTime<Utc>,
    },
    /// A supplier did the work.
    Done,
}

/// Plans the next step of one line from its route plan and its attempts so far.
///
/// The rules, in order:
/// 1. any success: [`Step::Done`] (nothing is ever bought twice);
/// 2. a supplier whose latest attempt is unknown or pending: [`Step::Query`] it, whatever its
///    breaker says, so no two suppliers ever work on one line;
/// 3. the first route never tried whose breaker admits a call: [`Step::Call`]; a route that
///    failed definitively is not tried again (its request id would only repeat the failure);
/// 4. untried routes whose breakers are all shut: [`Step::Wait`] until the earliest may admit;
/// 5. otherwise [`Step::Exhausted`].
///
/// Pure apart from reading `breakers`; it does not take a breaker.
///
/// # Errors
/// [`SupplierError::Invalid`] when an attempt names a supplier that is not in the plan (the
/// engine must plan a line with the plan its attempts were made under).
pub fn next_step(
    plan: &RoutePlan,
    history: &[Attempt],
    breakers: &Breakers,
    now: DateTime<Utc>,
) -> Result<Step> {
    if let Some(stray) = history.iter().find(|a| plan.route(&a.supplier).is_none()) {
        return Err(SupplierError::invalid(
            "attempt history",
            &format!("supplier {} is not in the plan", stray.supplier),
        ));
    }
    if history.iter().any(|a| a.result == AttemptResult::Succeeded) {
        return Ok(Step::Done);
    }
    let latest = |route: &Route| {
        history
            .iter()
            .rev()
            .find(|a| a.supplier == route.supplier)
            .map(|a| &a.result)
    };
    if let Some(route) = plan.routes().iter().find(|r| {
        matches!(
            latest(r),
            Some(AttemptResult::Unknown { .. } | AttemptResult::Pending)
        )
    }) {
        return Ok(Step::Query(route.clone()));
    }
    let mut earliest: Option<DateTime<Utc>> = None;
    for route in plan.routes().iter().filter(|r| latest(r).is_none()) {
        let ready = breakers.ready_at(&route.supplier, now);
        if ready <= now {
            return Ok(Step::Call(route.clone()));
        }
        earliest = Some(earliest.map_or(ready, |e| e.min(ready)));
    }
    Ok(match earliest {
        Some(until) => Step::Wait { until },
        None => Step::Exhausted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::BreakerConfig;
    use chrono::{Duration, TimeZone};

    fn t(seconds: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::seconds(seconds)
    }

    fn route(supplier: &str) -> Route {
        Route {
            supplier: SupplierId::new(supplier).unwrap(),
            product: ProductCode::new("P-1").unwrap(),
            cost: Money::from_minor(100, Currency::CNY),
        }
    }

    fn plan() -> RoutePlan {
        RoutePlan::new(vec![route("a"), route("b"), route("c")]).unwrap()
    }

    fn ok(s: &str) -> Attempt {
        attempt(s, AttemptResult::Succeeded)
    }
    fn def(s: &str) -> Attempt {
        attempt(
            s,
            AttemptResult::Definite {
                reason: "no".into(),
            },
        )
    }
    fn unk(s: &str) -> Attempt {
        attempt(
            s,
            AttemptResult::Unknown {
                reason: "timeout".into(),
            },
        )
    }
    fn pend(s: &str) -> Attempt {
        attempt(s, AttemptResult::Pending)
    }
    fn attempt(s: &str, result: AttemptResult) -> Attempt {
        Attempt {
            supplier: SupplierId::new(s).unwrap(),
            result,
        }
    }

    /// Breakers where the named suppliers are open until second 30.
    fn breakers(open: &[&str]) -> Breakers {
        let breakers = Breakers::new(BreakerConfig {
            failure_threshold: 1,
            open_for: Duration::seconds(30),
            half_open_probes: 1,
        });
        for s in open {
            breakers.record_failure(&SupplierId::new(*s).unwrap(), t(0));
        }
        breakers
    }

    fn check_with(open: &[&str], history: &[Attempt], expected: Step) {
        let step = next_step(&plan(), history, &breakers(open), t(10)).unwrap();
        assert_eq!(step, expected, "open {open:?}, history {history:?}");
    }

    fn check(history: &[Attempt], expected: Step) {
        check_with(&[], history, expected);
    }

    #[test]
    fn planner_table() {
        let call = |s| Step::Call(route(s));
        let query = |s| Step::Query(route(s));
        check(&[], call("a"));
        check(&[ok("a")], Step::Done);
        check(&[def("a")], call("b"));
        check(&[def("a"), def("b")], call("c"));
        check(&[def("a"), def("b"), def("c")], Step::Exhausted);
        check(&[unk("a")], query("a"));
        check(&[pend("a")], query("a"));
        check(&[unk("a"), pend("a")], query("a"));
        check(&[unk("a"), pend("a"), ok("a")], Step::Done);
        // A query answering NotFound is recorded as definite: fail over.
        check(&[unk("a"), def("a")], call("b"));
        check(&[def("a"), unk("b")], query("b"));
        check(&[def("a"), unk("b"), def("b")], call("c"));
        check(&[def("a"), unk("b"), def("b"), pend("c")], query("c"));
        check(
            &[def("a"), unk("b"), def("b"), pend("c"), def("c")],
            Step::Exhausted,
        );
        // Success anywhere ends the line, even if the history then says otherwise.
        check(&[pend("a"), ok("a"), unk("a")], Step::Done);
        // An unresolved supplier blocks failover even when it is not the last entry.
        check(&[def("a"), unk("b"), def("c")], query("b"));
    }

    #[test]
    fn breakers_skip_and_wait() {
        let call = |s| Step::Call(route(s));
        let query = |s| Step::Query(route(s));
        check_with(&["a"], &[], call("b"));
        check_with(&["a", "b"], &[], call("c"));
        check_with(&["a", "b", "c"], &[], Step::Wait { until: t(30) });
        check_with(&["b", "c"], &[def("a")], Step::Wait { until: t(30) });
        check_with(&["c"], &[def("a"), def("b")], Step::Wait { until: t(30) });
        // Definite failures leave nothing to wait for.
        check_with(&["c"], &[def("a"), def("b"), def("c")], Step::Exhausted);
        // Queries ignore breakers: the outcome must be learned from that supplier.
        check_with(&["a", "b", "c"], &[unk("a")], query("a"));
    }

    #[test]
    fn wait_picks_the_earliest_breaker() {
        let breakers = breakers(&["a"]);
        let b = SupplierId::new("b").unwrap();
        let c = SupplierId::new("c").unwrap();
        breakers.record_failure(&b, t(5));
        breakers.record_failure(&c, t(8));
        let step = next_step(&plan(), &[], &breakers, t(10)).unwrap();
        assert_eq!(step, Step::Wait { until: t(30) });
        let step = next_step(&plan(), &[], &breakers, t(31)).unwrap();
        assert_eq!(step, Step::Call(route("a")));
    }

    #[test]
    fn history_outside_the_plan_is_an_error() {
        let err = next_step(&plan(), &[def("z")], &breakers(&[]), t(0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid attempt history: supplier z is not in the plan"
        );
    }

    fn check_plan(routes: Vec<Route>, ok: bool) {
        let n = routes.len();
        assert_eq!(RoutePlan::new(routes).is_ok(), ok, "{n} routes");
    }

    #[test]
    fn plan_validation() {
        let many: Vec<Route> = (0..11).map(|n| route(&format!("s{n}"))).collect();
        let mut usd = route("b");
        usd.cost = Money::from_minor(100, Currency::USD);
        check_plan(vec![], false);
        check_plan(vec![route("a")], true);
        check_plan(many[..10].to_vec(), true);
        check_plan(many, false);
        check_plan(vec![route("a"), route("a")], false);
        check_plan(vec![route("a"), usd], false);
    }

    #[test]
    fn plan_serde_validates() {
        let json = serde_json::to_string(&plan()).unwrap();
        let back: RoutePlan = serde_json::from_str(&json).unwrap();
        assert_eq!(back, plan());
        assert!(serde_json::from_str::<RoutePlan>("[]").is_err());
    }

    #[test]
    fn attempt_results_from_answers() {
        use crate::port::RequestStatus;
        for (status, expected) in [
            (RequestStatus::NotFound, "definite"),
            (RequestStatus::Pending, "pending"),
            (RequestStatus::Failed { reason: "x".into() }, "definite"),
            (
                RequestStatus::Succeeded {
                    receipt: "r".into(),
                    cards: vec![],
                },
                "succeeded",
            ),
        ] {
            let got = match AttemptResult::from_status(&status) {
                AttemptResult::Succeeded => "succeeded",
                AttemptResult::Definite { .. } => "definite",
                AttemptResult::Unknown { .. } => "unknown",
                AttemptResult::Pending => "pending",
            };
            assert_eq!(got, expected, "{status:?}");
        }
        assert!(matches!(
            AttemptResult::from_error(&SupplierError::timeout("t")),
            AttemptResult::Unknown { .. }
        ));
        assert!(matches!(
            AttemptResult::from_error(&SupplierError::unreachable("refused")),
            AttemptResult::Definite { .. }
        ));
        assert_eq!(
            AttemptResult::from_top_up(&TopUpOutcome::Accepted),
            AttemptResult::Pending
        );
    }
}
