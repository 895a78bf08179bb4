//! A hand-written SVG chart for `atoll-bench kv --plot FILE.svg`: two panels side by side,
//! ops/s and p99 latency against the number of workers, a line per server and workload.
//! Workers are spaced evenly (1, 16, 64 side by side), values from zero.

use std::fmt::Write as _;

/// One line of the chart: (workers, ops/s, p99 ms) per point.
pub struct Series {
    /// The legend's text.
    pub name: String,
    /// An SVG color.
    pub color: &'static str,
    /// A dashed line (the second workload).
    pub dashed: bool,
    /// (workers, ops/s, p99 ms), by workers.
    pub points: Vec<(usize, f64, f64)>,
}

/// Picks a panel's value out of a point.
type Pick = fn(&(usize, f64, f64)) -> f64;

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 460.0;
const PANEL_WIDTH: f64 = 400.0;
const PANEL_HEIGHT: f64 = 300.0;
const GRID_LINES: usize = 5;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A round upper bound of the axis (1, 2 or 5 times a power of ten), at least `max`.
fn axis_top(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|top| *top >= max)
        .unwrap_or(10.0 * magnitude)
}

/// The chart, titled `title`.
pub fn svg(title: &str, series: &[Series]) -> String {
    let mut workers: Vec<usize> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    workers.sort_unstable();
    workers.dedup();
    let mut out = String::new();
    let _ = writeln!(
        out,
        concat!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" "#,
            r#"viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#,
        ),
        WIDTH = WIDTH,
        HEIGHT = HEIGHT
    );
    let _ = writeln!(
        out,
        concat!(
            r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/><text x="{}" y="22" "#,
            r#"text-anchor="middle" font-size="15">{}</text>"#,
        ),
        WIDTH / 2.0,
        escape(title),
        WIDTH = WIDTH,
        HEIGHT = HEIGHT
    );
    let panels: [(&str, Pick); 2] = [
        ("operations per second", |p| p.1),
        ("p99 latency (ms)", |p| p.2),
    ];
    for (panel, (label, value)) in panels.iter().enumerate() {
        let left = 70.0 + panel as f64 * (PANEL_WIDTH + 90.0);
        let top = 50.0;
        let max = series
            .iter()
            .flat_map(|s| s.points.iter().map(value))
            .fold(0.0, f64::max);
        let y_top = axis_top(max);
        let x = |w: usize| {
            let index = workers.iter().position(|x| *x == w).unwrap_or(0);
            let slots = workers.len().max(1) as f64;
            left + PANEL_WIDTH * (index as f64 + 0.5) / slots
        };
        let y = |v: f64| top + PANEL_HEIGHT * (1.0 - v / y_top);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">{label}</text>"#,
            left + PANEL_WIDTH / 2.0,
            top - 8.0
        );
        for line in 0..=GRID_LINES {
            let v = y_top * line as f64 / GRID_LINES as f64;
            let _ = writeln!(
                out,
                concat!(
                    r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text "##,
                    r##"x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                ),
                left + PANEL_WIDTH,
                left - 6.0,
                y(v) + 4.0,
                if y_top >= 10.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.2}")
                },
                y = y(v),
                left = left
            );
        }
        for &w in &workers {
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{w}</text>"#,
                x(w),
                top + PANEL_HEIGHT + 18.0
            );
        }
        let _ = writeln!(
            out,
            concat!(
                r#"<text x="{}" y="{}" text-anchor="middle">workers</text><rect x="{left}" "#,
                r#"y="{top}" width="{PANEL_WIDTH}" height="{PANEL_HEIGHT}" fill="none" "#,
                r#"stroke="black"/>"#,
            ),
            left + PANEL_WIDTH / 2.0,
            top + PANEL_HEIGHT + 36.0,
            left = left,
            top = top,
            PANEL_WIDTH = PANEL_WIDTH,
            PANEL_HEIGHT = PANEL_HEIGHT
        );
        for s in series {
            let points: Vec<String> = s
                .points
                .iter()
                .map(|p| format!("{:.1},{:.1}", x(p.0), y(value(p))))
                .collect();
            let dash = if s.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = writeln!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                points.join(" "),
                s.color
            );
            for p in &s.points {
                let _ = writeln!(
                    out,
                    concat!(
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}"><title>{} "#,
                        r#"workers={}: {:.1}</title></circle>"#,
                    ),
                    x(p.0),
                    y(value(p)),
                    s.color,
                    escape(&s.name),
                    p.0,
                    value(p)
                );
            }
        }
    }
    for (index, s) in series.iter().enumerate() {
        let lx = 70.0 + (index % 4) as f64 * 220.0;
        let ly = HEIGHT - 40.0 + (index / 4) as f64 * 18.0;
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            concat!(
                r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{}" "#,
                r#"stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            ),
            lx + 30.0,
            s.color,
            lx + 36.0,
            ly + 4.0,
            escape(&s.name),
            lx = lx,
            ly = ly,
            dash = dash
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_axis_tops_are_round() {
        assert_eq!(axis_top(0.0), 1.0);
        assert_eq!(axis_top(3060.0), 5000.0);
        assert_eq!(axis_top(85.0), 100.0);
        assert_eq!(axis_top(1.2), 2.0);
        assert_eq!(axis_top(1000.0), 1000.0);
    }

    #[test]
    fn test_svg_has_a_line_and_points_per_series() {
        let series = [
            Series {
                name: "atoll kvwrite".into(),
                color: "#1f77b4",
                dashed: false,
                points: vec![(1, 841.0, 1.5), (16, 3060.0, 9.0), (64, 4187.0, 85.0)],
            },
            Series {
                name: "dqlite <kvwrite>".into(),
                color: "#d62728",
                dashed: true,
                points: vec![(1, 483.0, 3.0), (64, 132.0, 400.0)],
            },
        ];
        let svg = svg("kv & co", &series);
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>\n"));
        // Two panels: a polyline per series in each, a circle per point in each.
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert_eq!(svg.matches("<circle").count(), 10);
        assert!(svg.contains("kv &amp; co") && svg.contains("dqlite &lt;kvwrite&gt;"));
        // 4187 ops/s on an axis topped at 5000 over 300 px from y=50: y = 50 + 300 * 0.1626.
        assert!(svg.contains("<title>atoll kvwrite workers=64: 4187.0</title>"));
        assert!(svg.contains(&format!("{:.1}", 50.0 + 300.0 * (1.0 - 4187.0 / 5000.0))));
        assert!(svg.contains(">workers</text>"));
    }
}
