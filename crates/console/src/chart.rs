//! Charts as inline SVG, drawn on the server: a few polylines over a time axis, with the service's
//! events as vertical markers (each with its message as a tooltip). No script, no fonts fetched.

use maud::{html, Markup, PreEscaped};

/// The drawing area, in SVG units.
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 160.0;
const LEFT: f64 = 52.0;
const BOTTOM: f64 = 20.0;

/// One line of a chart: its name, CSS class and points `(t, value)`.
pub struct Series<'a> {
    pub name: &'a str,
    pub class: &'a str,
    pub points: Vec<(u64, f64)>,
}

/// A marker: when, what kind (its CSS class) and what happened.
pub struct Mark<'a> {
    pub t: i64,
    pub kind: &'a str,
    pub message: &'a str,
}

/// A chart of `series` from `from` to `to` (seconds), its y axis in `unit`.
pub fn chart(title: &str, unit: &str, from: u64, to: u64, series: &[Series<'_>], marks: &[Mark<'_>]) -> Markup {
    let span = (to.saturating_sub(from)).max(1) as f64;
    let top = series.iter().flat_map(|s| s.points.iter().map(|(_, v)| *v)).fold(0.0_f64, f64::max);
    let top = nice_ceiling(top);
    let x = |t: u64| LEFT + (t.saturating_sub(from)) as f64 / span * (WIDTH - LEFT);
    let y = |v: f64| (HEIGHT - BOTTOM) - v / top * (HEIGHT - BOTTOM - 6.0);
    let description = series
        .iter()
        .map(|s| match s.points.iter().map(|(_, v)| *v).reduce(f64::max) {
            Some(peak) => format!("{}: peak {} {unit}", s.name, short(peak)),
            None => format!("{}: no data", s.name),
        })
        .collect::<Vec<_>>()
        .join("; ");
    html! {
        figure.chart {
            figcaption { (title) " (" (unit) ")" }
            svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(format!("{title}: {description}")) {
                title { (title) ": " (description) }
                @for frac in [0.0, 0.5, 1.0] {
                    line.grid x1=(LEFT) x2=(WIDTH) y1=(y(top * frac)) y2=(y(top * frac)) {}
                    text.axis x=(LEFT - 4.0) y=(y(top * frac) + 4.0) text-anchor="end" { (short(top * frac)) }
                }
                text.axis x=(LEFT) y=(HEIGHT - 4.0) { (clock(from)) }
                text.axis x=(WIDTH) y=(HEIGHT - 4.0) text-anchor="end" { (clock(to)) }
                @for m in marks {
                    @let mx = x(u64::try_from(m.t).unwrap_or(0));
                    line class=(format!("mark {}", m.kind)) x1=(mx) x2=(mx) y1="0" y2=(HEIGHT - BOTTOM) {
                        title { (clock(u64::try_from(m.t).unwrap_or(0))) " " (m.kind) ": " (m.message) }
                    }
                }
                @for s in series {
                    @if s.points.len() > 1 {
                        polyline class=(s.class) points=(PreEscaped(path(&s.points, &x, &y))) {
                            title { (s.name) }
                        }
                    }
                    // Each slot as a dot too: a lone slot (or one between gaps) shows.
                    @for (t, v) in &s.points {
                        circle class=(format!("dot {}", s.class)) cx=(format!("{:.1}", x(*t))) cy=(format!("{:.1}", y(*v))) r="2.5" {}
                    }
                }
            }
            ul.legend {
                @for s in series { li class=(s.class) { (s.name) } }
            }
        }
    }
}

fn path(points: &[(u64, f64)], x: &dyn Fn(u64) -> f64, y: &dyn Fn(f64) -> f64) -> String {
    points.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect::<Vec<_>>().join(" ")
}

/// The round number at or above `v` the axis goes to (1, 2 or 5 times a power of ten).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * magnitude).find(|c| *c >= v).unwrap_or(10.0 * magnitude)
}

/// A value in a few characters: `0.25`, `12`, `1.5k`.
fn short(v: f64) -> String {
    match v {
        v if v >= 10_000.0 => format!("{:.0}k", v / 1000.0),
        v if v >= 1000.0 => format!("{:.1}k", v / 1000.0),
        v if v >= 10.0 || v == 0.0 => format!("{v:.0}"),
        v => format!("{v:.2}"),
    }
}

/// Seconds since the Unix epoch as the UTC time of day, `14:05`.
pub fn clock(t: u64) -> String {
    format!("{:02}:{:02}", t % 86_400 / 3600, t % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_at_round_numbers() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.3), 10.0);
        assert_eq!(nice_ceiling(130.0), 200.0);
        assert_eq!(nice_ceiling(0.04), 0.05);
        assert_eq!(short(1500.0), "1.5k");
        assert_eq!(short(0.25), "0.25");
    }

    #[test]
    fn a_chart_draws_its_lines_and_marks_with_text_for_screen_readers() {
        let s = [Series { name: "requests/s", class: "ok", points: vec![(100, 1.0), (160, 4.0)] }];
        let m = [Mark { t: 130, kind: "deployed", message: "revision web-0002 serves" }];
        let svg = chart("Requests", "per second", 100, 160, &s, &m).into_string();
        assert!(svg.contains(r#"role="img""#) && svg.contains("requests/s: peak 4.00 per second"), "{svg}");
        assert!(svg.contains("<polyline class=\"ok\" points=\"52.0,"), "{svg}");
        assert!(svg.contains("deployed: revision web-0002 serves"), "{svg}");
    }
}
