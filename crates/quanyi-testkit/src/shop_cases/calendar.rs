//! Shop case of the shop's calendar: daily and monthly sweeps in its time zone.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use parking_lot::Mutex;
use quanyi::{Clock, Store, SweepPeriod, Worker};

use super::{Rig, Tally};

fn utc(text: &str) -> DateTime<Utc> {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// A shop in Asia/Shanghai runs a daily sweep once per local day, starting at local midnight
/// (16:00 UTC), and a monthly one once per local month; two workers still run each period
/// once; a time zone that is not an IANA name is refused when the shop is built.
pub async fn sweeps_follow_the_shops_calendar(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let daily = Arc::new(Tally {
        name: "daily_grants",
        period: SweepPeriod::Daily,
        periods: Mutex::new(Vec::new()),
    });
    let monthly = Arc::new(Tally {
        name: "monthly_report",
        period: SweepPeriod::Monthly,
        periods: Mutex::new(Vec::new()),
    });
    let process = |name: &str| {
        rig.builder(rig.store.clone())
            .worker_name(name)
            .time_zone("Asia/Shanghai")
            .sweep(daily.clone())
            .sweep(monthly.clone())
            .build()
            .unwrap()
    };
    let (a, b) = (process("worker-a"), process("worker-b"));
    assert_eq!(a.calendar().name(), "Asia/Shanghai");
    let (wa, wb) = (Worker::new(a), Worker::new(b));
    let pass = || async {
        let (ra, rb) = tokio::join!(wa.run_once(), wb.run_once());
        assert_eq!(ra.unwrap().dead + rb.unwrap().dead, 0);
    };

    // 23:59 on Nov 30 in Shanghai.
    rig.clock.set(utc("2026-11-30T15:59:00Z"));
    pass().await;
    pass().await;
    assert_eq!(*daily.periods.lock(), vec![utc("2026-11-29T16:00:00Z")]);
    assert_eq!(*monthly.periods.lock(), vec![utc("2026-10-31T16:00:00Z")]);
    // Local midnight: a new day and a new month.
    rig.clock.advance(Duration::minutes(1));
    pass().await;
    pass().await;
    assert_eq!(
        *daily.periods.lock(),
        vec![utc("2026-11-29T16:00:00Z"), utc("2026-11-30T16:00:00Z")]
    );
    assert_eq!(
        *monthly.periods.lock(),
        vec![utc("2026-10-31T16:00:00Z"), utc("2026-11-30T16:00:00Z")]
    );
    // Midnight UTC is 08:00 in Shanghai: nothing new.
    rig.clock.set(utc("2026-12-01T00:00:00Z"));
    pass().await;
    assert_eq!(daily.periods.lock().len(), 2);
    assert_eq!(monthly.periods.lock().len(), 2);
    assert!(rig.clock.now() > utc("2026-11-30T16:00:00Z"));

    for name in ["Mars/Olympus", "", "UTC+8"] {
        let err = rig
            .builder(rig.store.clone())
            .time_zone(name)
            .build()
            .unwrap_err();
        assert_eq!(err.code(), "invalid_input", "{name:?}");
    }
}
