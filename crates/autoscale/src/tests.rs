//! The KPA against synthetic load curves (table-driven), and the sampling driver with a fake
//! load source and scaler on paused time.

use super::*;

/// Runs `curve` (concurrency per second) for `seconds`; instances become ready `lag` seconds
/// after they are asked for. Returns the decision of every second.
fn simulate(settings: &ScalingSettings, ready0: u32, curve: &dyn Fn(u64) -> f64, seconds: u64, lag: u64) -> Vec<Decision> {
    let mut kpa = Kpa::new(settings.clone());
    let mut asked: Vec<u32> = Vec::new();
    let mut out = Vec::new();
    for t in 0..seconds {
        let ready = if t >= lag && !asked.is_empty() { asked[(t - lag) as usize] } else { ready0 };
        kpa.record(t, curve(t));
        let d = kpa.decide(t, ready);
        asked.push(d.desired);
        out.push(d);
    }
    out
}

struct Case {
    name: &'static str,
    settings: ScalingSettings,
    ready0: u32,
    curve: fn(u64) -> f64,
    seconds: u64,
    /// (second, lowest desired, highest desired, panicking?)
    expect: &'static [(u64, u32, u32, Option<bool>)],
}

fn with_min(min_size: u32) -> ScalingSettings {
    ScalingSettings { min_size, ..ScalingSettings::default() }
}

#[test]
fn load_curves() {
    // Target per instance: 100 × 0.7 = 70 concurrent requests.
    let cases = [
        Case {
            name: "steady load holds its size",
            settings: with_min(1),
            ready0: 2,
            curve: |_| 140.0,
            seconds: 180,
            expect: &[(10, 2, 2, Some(false)), (179, 2, 2, Some(false))],
        },
        Case {
            name: "a spike panics within seconds and follows the panic window",
            settings: with_min(1),
            ready0: 1,
            curve: |t| if t < 120 { 35.0 } else { 700.0 },
            seconds: 140,
            expect: &[(119, 1, 1, Some(false)), (120, 3, 10, Some(true)), (126, 10, 10, Some(true))],
        },
        Case {
            name: "no scale-down while panicking, then a gradual one",
            settings: with_min(1),
            ready0: 1,
            curve: |t| if (60..90).contains(&t) { 700.0 } else { 35.0 },
            seconds: 400,
            expect: &[(95, 10, 10, Some(true)), (140, 10, 10, None), (399, 1, 1, Some(false))],
        },
        Case {
            name: "scale-down waits for the delay",
            settings: with_min(1),
            ready0: 4,
            curve: |t| if t < 120 { 280.0 } else { 70.0 },
            seconds: 260,
            expect: &[(119, 4, 4, Some(false)), (150, 3, 4, None), (259, 1, 1, Some(false))],
        },
        Case {
            name: "idle with min_size 0 scales to zero after the grace",
            settings: with_min(0),
            ready0: 1,
            curve: |t| if t < 30 { 10.0 } else { 0.0 },
            seconds: 200,
            expect: &[(29, 1, 1, None), (110, 1, 1, None), (125, 0, 0, None), (199, 0, 0, None)],
        },
        Case {
            name: "idle with min_size 1 keeps one",
            settings: with_min(1),
            ready0: 1,
            curve: |t| if t < 30 { 10.0 } else { 0.0 },
            seconds: 200,
            expect: &[(199, 1, 1, Some(false))],
        },
        Case {
            name: "never above max_size",
            settings: ScalingSettings { max_size: 5, ..ScalingSettings::default() },
            ready0: 1,
            curve: |_| 10_000.0,
            seconds: 30,
            expect: &[(1, 5, 5, None), (29, 5, 5, None)],
        },
        Case {
            name: "min_size is kept even when idle",
            settings: with_min(3),
            ready0: 3,
            curve: |_| 0.0,
            seconds: 200,
            expect: &[(0, 3, 3, None), (199, 3, 3, None)],
        },
    ];
    for c in &cases {
        let decisions = simulate(&c.settings, c.ready0, &c.curve, c.seconds, 2);
        for (t, lo, hi, panic) in c.expect {
            let d = decisions[*t as usize];
            assert!(
                (*lo..=*hi).contains(&d.desired) && panic.is_none_or(|p| p == d.panicking),
                "{}: at {t} s expected {lo}..={hi} (panicking {panic:?}), got {d:?}",
                c.name
            );
        }
    }
}

#[test]
fn a_held_request_wakes_a_sleeping_service() {
    let mut kpa = Kpa::new(with_min(0));
    for t in 0..200 {
        kpa.record(t, 0.0);
    }
    assert_eq!(kpa.decide(199, 0).desired, 0);
    kpa.record(200, 1.0);
    assert_eq!(kpa.decide(200, 0).desired, 1);
}

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<(String, u32)>>,
}

impl Scaler for Recorder {
    fn scale(&self, service: &str, desired: u32, _why: &str) {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).push((service.to_owned(), desired));
    }
}

/// A service whose instances follow the scaler's decisions at once.
struct Following {
    concurrency: Mutex<usize>,
    recorder: Arc<Recorder>,
}

impl LoadSource for Following {
    fn load(&self) -> Vec<Load> {
        let ready = self.recorder.calls.lock().unwrap_or_else(|p| p.into_inner()).last().map(|c| c.1).unwrap_or(1);
        vec![Load { service: "web".into(), concurrency: *self.concurrency.lock().unwrap_or_else(|p| p.into_inner()), ready }]
    }
}

#[tokio::test(start_paused = true)]
async fn the_driver_scales_up_down_to_zero_and_wakes_on_poke() {
    let recorder = Arc::new(Recorder::default());
    let scaler = Autoscaler::new(recorder.clone());
    let settings = ScalingSettings {
        max_concurrency: 10,
        target_utilization: 1.0,
        min_size: 0,
        stable_window: Duration::from_secs(6),
        panic_window: Duration::from_secs(2),
        scale_down_delay: Duration::from_secs(2),
        idle_grace: Duration::from_secs(5),
        ..ScalingSettings::default()
    };
    scaler.configure("web", settings, 1);
    let source = Arc::new(Following { concurrency: Mutex::new(25), recorder: recorder.clone() });
    let task = tokio::spawn(scaler.clone().run(source.clone()));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(scaler.desired("web"), Some(3), "25 concurrent requests at 10 per instance");
    *source.concurrency.lock().unwrap_or_else(|p| p.into_inner()) = 0;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(scaler.desired("web"), Some(0));
    scaler.poke("web");
    assert_eq!(scaler.desired("web"), Some(1));
    task.abort();
    let calls = recorder.calls.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(calls.first(), Some(&("web".to_owned(), 3)), "{calls:?}");
    assert_eq!(calls.last(), Some(&("web".to_owned(), 1)), "{calls:?}");
    assert!(calls.contains(&("web".to_owned(), 0)), "{calls:?}");
    // Unknown services are ignored.
    scaler.poke("other");
    scaler.remove("web");
    assert_eq!(scaler.desired("web"), None);
}

#[test]
fn decisions_say_why() {
    let settings = ScalingSettings { max_concurrency: 100, max_size: 10, ..with_min(1) };
    let d =
        |desired, stable, panicking| Decision { desired, panicking, stable_concurrency: stable, panic_concurrency: stable, target: 70.0 };
    let cases = [
        (d(5, 300.0, false), 2, "2 → 5: concurrency 300 over 60 s > target 70 × 2 = 140"),
        (d(2, 100.0, false), 4, "4 → 2: concurrency 100 over 60 s < target 70 × 4 = 280"),
        (d(1, 3.0, false), 3, "3 → 1: concurrency 3 over 60 s; down to min size 1"),
        (d(10, 2000.0, true), 4, "4 → 10: concurrency 2000 over 6 s > target 70 × 4; capped at max size 10 (panic mode: load rose faster than the stable window sees)"),
    ];
    for (decision, from, want) in cases {
        assert_eq!(decision.explain(from, &settings), want);
    }
    let zero = ScalingSettings { idle_grace: Duration::from_secs(60), ..with_min(0) };
    assert_eq!(d(0, 0.0, false).explain(1, &zero), "1 → 0: no request for 60 s (min size 0)");
}
