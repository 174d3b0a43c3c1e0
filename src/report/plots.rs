//! The report's plots, drawn with plotters' SVG backend into strings that the HTML inlines.
//!
//! Text is drawn as SVG `<text>` elements (plotters without its `ttf` feature lays text out
//! with a fixed-width estimate and leaves the glyphs to the browser), so no font file ships
//! with the report and nothing is fetched when it opens.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::data::{PretrainCurves, RowValue, TaskResult};
use super::reference::task_display_name;
use crate::error::{Error, Result};

/// Pixel size of every chart.
pub const CHART_SIZE: (u32, u32) = (560, 340);

/// Line colours, in series order (Okabe–Ito, readable by colour-blind readers).
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Draw a marker at each point (evaluation rows, which are sparse).
    pub markers: bool,
}

/// A line chart: a title, axis descriptions and its curves.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub curves: Vec<Curve>,
}

impl LineChart {
    fn new(title: &str, x_label: &str, y_label: &str) -> Self {
        LineChart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            curves: Vec::new(),
        }
    }

    /// Adds a curve when it has points; empty series are left out of the legend.
    fn curve(mut self, label: &str, points: Vec<(f64, f64)>, markers: bool) -> Self {
        if !points.is_empty() {
            self.curves.push(Curve {
                label: label.into(),
                points,
                markers,
            });
        }
        self
    }

    /// No curve has a point: the renderer prints "missing" instead.
    pub fn is_empty(&self) -> bool {
        self.curves.is_empty()
    }
}

/// The pre-training charts: losses, accuracies, learning rate, loss and accuracy against
/// tokens seen, held-out perplexity and throughput. Charts without data stay in the list, empty.
pub fn pretrain_charts(curves: &PretrainCurves) -> Vec<LineChart> {
    let step: RowValue = |r| Some(r.step as f64);
    let tokens: RowValue = |r| r.tokens_seen.map(|t| t as f64);
    let t = |y: RowValue| curves.train_series(step, y);
    let e = |y: RowValue| curves.eval_series(step, y);
    vec![
        LineChart::new("Pre-training loss", "step", "loss")
            .curve("total (MLM + NSP)", t(|r| r.loss), false)
            .curve("MLM", t(|r| r.mlm_loss), false)
            .curve("NSP", t(|r| r.nsp_loss), false)
            .curve("held-out total", e(|r| r.loss), true),
        LineChart::new("Pre-training accuracy", "step", "accuracy")
            .curve("MLM", t(|r| r.mlm_accuracy), false)
            .curve("NSP", t(|r| r.nsp_accuracy), false)
            .curve("held-out MLM", e(|r| r.mlm_accuracy), true)
            .curve("held-out NSP", e(|r| r.nsp_accuracy), true),
        LineChart::new("Learning rate", "step", "learning rate").curve(
            "learning rate",
            t(|r| r.learning_rate),
            false,
        ),
        LineChart::new("Loss against tokens seen", "tokens seen", "loss")
            .curve(
                "total (MLM + NSP)",
                curves.train_series(tokens, |r| r.loss),
                false,
            )
            .curve("MLM", curves.train_series(tokens, |r| r.mlm_loss), false),
        LineChart::new("Accuracy against tokens seen", "tokens seen", "accuracy")
            .curve(
                "MLM",
                curves.train_series(tokens, |r| r.mlm_accuracy),
                false,
            )
            .curve(
                "NSP",
                curves.train_series(tokens, |r| r.nsp_accuracy),
                false,
            ),
        LineChart::new("Held-out MLM perplexity", "step", "perplexity")
            .curve("held-out documents", e(|r| r.mlm_perplexity), true)
            .curve(
                "held-out text",
                curves.heldout_series(step, |r| r.mlm_perplexity),
                true,
            ),
        LineChart::new("Throughput", "step", "tokens / s").curve(
            "tokens per second",
            t(|r| r.tokens_per_s),
            false,
        ),
    ]
}

/// Draws `chart` as an SVG document string.
pub fn render_line_chart(chart: &LineChart) -> Result<String> {
    let mut svg = String::new();
    draw_line_chart(chart, &mut svg).map_err(|e| {
        Error::Stage(format!(
            "report: cannot draw the chart `{}`: {e}",
            chart.title
        ))
    })?;
    Ok(svg)
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw_line_chart(chart: &LineChart, svg: &mut String) -> DrawResult {
    let points = chart.curves.iter().flat_map(|c| c.points.iter());
    let (x_range, y_range) = padded_ranges(points);
    let root = SVGBackend::with_string(svg, CHART_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let area = root.titled(&chart.title, ("sans-serif", 20))?;
    // A single curve is named by the title and the axis; more get a legend row.
    let legend: Vec<LegendItem> = if chart.curves.len() > 1 {
        chart
            .curves
            .iter()
            .enumerate()
            .map(|(i, c)| LegendItem {
                label: c.label.clone(),
                color: PALETTE[i % PALETTE.len()],
                marker: c.markers,
                bar: false,
            })
            .collect()
    } else {
        Vec::new()
    };
    let area = draw_legend(&area, &legend)?;
    let mut plot = ChartBuilder::on(&area)
        .margin(12)
        .margin_top(4)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range.clone(), y_range.clone())?;
    let x_span = x_range.end - x_range.start;
    let y_span = y_range.end - y_range.start;
    plot.configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&|v| tick_label(*v, x_span))
        .y_label_formatter(&|v| tick_label(*v, y_span))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 15))
        .light_line_style(RGBColor(238, 238, 238))
        .draw()?;
    for (i, curve) in chart.curves.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let size = if curve.markers { 3 } else { 0 };
        plot.draw_series(
            LineSeries::new(curve.points.iter().copied(), color.stroke_width(2)).point_size(size),
        )?;
    }
    root.present()?;
    Ok(())
}

/// One entry of a legend row.
struct LegendItem {
    label: String,
    color: RGBColor,
    /// Draw a dot on the line (series with markers).
    marker: bool,
    /// Draw a filled square instead of a line (bar charts).
    bar: bool,
}

/// Height of one legend row in pixels.
const LEGEND_ROW: i32 = 22;

/// Estimated width of a legend entry: swatch, gap, label (about 7 px a character), spacing.
fn legend_item_width(label: &str) -> i32 {
    24 + 7 * label.chars().count() as i32 + 20
}

/// Lays the entries out in centred rows no wider than `width`: the left x of each entry
/// and its row.
fn legend_layout(labels: &[&str], width: i32) -> Vec<(i32, i32)> {
    let mut rows: Vec<Vec<usize>> = Vec::new();
    let mut used = 0;
    for (i, label) in labels.iter().enumerate() {
        let w = legend_item_width(label);
        match rows.last_mut() {
            Some(row) if used + w <= width => row.push(i),
            _ => {
                rows.push(vec![i]);
                used = 0;
            }
        }
        used += w;
    }
    let mut out = vec![(0, 0); labels.len()];
    for (r, row) in rows.iter().enumerate() {
        let total: i32 = row.iter().map(|&i| legend_item_width(labels[i])).sum();
        let mut x = ((width - total) / 2).max(0);
        for &i in row {
            out[i] = (x, r as i32);
            x += legend_item_width(labels[i]);
        }
    }
    out
}

/// Draws the legend as rows above the plot (so it never covers a curve) and returns the
/// area left for the plot.
fn draw_legend<'a>(
    area: &DrawingArea<SVGBackend<'a>, Shift>,
    items: &[LegendItem],
) -> std::result::Result<DrawingArea<SVGBackend<'a>, Shift>, Box<dyn std::error::Error>> {
    if items.is_empty() {
        return Ok(area.clone());
    }
    let width = area.dim_in_pixel().0 as i32;
    let labels: Vec<&str> = items.iter().map(|i| i.label.as_str()).collect();
    let layout = legend_layout(&labels, width - 24);
    let rows = layout.iter().map(|(_, r)| r + 1).max().unwrap_or(0);
    let (legend, plot) = area.split_vertically(rows * LEGEND_ROW + 6);
    let font =
        TextStyle::from(("sans-serif", 15).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (item, (x, row)) in items.iter().zip(layout) {
        let (x, y) = (x + 12, row * LEGEND_ROW + LEGEND_ROW / 2);
        if item.bar {
            legend.draw(&Rectangle::new(
                [(x + 4, y - 6), (x + 16, y + 6)],
                item.color.filled(),
            ))?;
        } else {
            legend.draw(&PathElement::new(
                vec![(x, y), (x + 20, y)],
                item.color.stroke_width(3),
            ))?;
        }
        if item.marker {
            legend.draw(&Circle::new((x + 10, y), 3, item.color.filled()))?;
        }
        legend.draw(&Text::new(item.label.clone(), (x + 24, y), font.clone()))?;
    }
    Ok(plot)
}

/// The GLUE chart: headline dev score (percent) per task, pre-trained beside scratch, as
/// bars. Tasks without a score get no bar.
pub fn render_finetune_chart(tasks: &[TaskResult]) -> Result<Option<String>> {
    let bars: Vec<(String, Option<f64>, Option<f64>)> = tasks
        .iter()
        .map(|t| {
            let score = |arm: &Option<super::data::ArmResult>| {
                arm.as_ref()
                    .and_then(|a| a.mean)
                    .map(super::format::as_percent)
            };
            (
                task_display_name(&t.task),
                score(&t.pretrained),
                score(&t.scratch),
            )
        })
        .filter(|(_, p, s)| p.is_some() || s.is_some())
        .collect();
    if bars.is_empty() {
        return Ok(None);
    }
    let mut svg = String::new();
    draw_finetune_chart(&bars, &mut svg)
        .map_err(|e| Error::Stage(format!("report: cannot draw the GLUE chart: {e}")))?;
    Ok(Some(svg))
}

fn draw_finetune_chart(
    bars: &[(String, Option<f64>, Option<f64>)],
    svg: &mut String,
) -> DrawResult {
    let width = (180 + 90 * bars.len() as u32).clamp(CHART_SIZE.0, 1100);
    let lowest = bars
        .iter()
        .flat_map(|(_, p, s)| [*p, *s])
        .flatten()
        .fold(0.0f64, f64::min);
    let root = SVGBackend::with_string(svg, (width, CHART_SIZE.1)).into_drawing_area();
    root.fill(&WHITE)?;
    let area = root.titled(
        "Fine-tuning: dev score by task (mean over seeds)",
        ("sans-serif", 20),
    )?;
    let arms = [
        ("pre-trained", PALETTE[0], -0.36),
        ("scratch", PALETTE[1], 0.02),
    ];
    let legend: Vec<LegendItem> = arms
        .iter()
        .map(|(label, color, _)| LegendItem {
            label: label.to_string(),
            color: *color,
            marker: false,
            bar: true,
        })
        .collect();
    let area = draw_legend(&area, &legend)?;
    let n = bars.len() as f64;
    let mut plot = ChartBuilder::on(&area)
        .margin(12)
        .margin_top(4)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..n - 0.5, lowest.min(0.0)..100.0)?;
    let names: Vec<String> = bars.iter().map(|(name, _, _)| name.clone()).collect();
    plot.configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len() + 1)
        .x_label_formatter(&|v| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_labels(6)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("score (%)")
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 15))
        .light_line_style(RGBColor(238, 238, 238))
        .draw()?;
    for (arm, (_, color, offset)) in arms.iter().enumerate() {
        let rects = bars.iter().enumerate().filter_map(|(i, (_, p, s))| {
            let v = if arm == 0 { *p } else { *s }?;
            let x0 = i as f64 + offset;
            Some(Rectangle::new([(x0, 0.0), (x0 + 0.34, v)], color.filled()))
        });
        plot.draw_series(rects)?;
    }
    root.present()?;
    Ok(())
}

/// Axis ranges covering every point, padded by 5%; a single value gets a unit-wide range.
fn padded_ranges<'a>(
    points: impl Iterator<Item = &'a (f64, f64)>,
) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    (pad(x0, x1, false), pad(y0, y1, true))
}

fn pad(lo: f64, hi: f64, both_sides: bool) -> std::ops::Range<f64> {
    if lo > hi {
        return 0.0..1.0;
    }
    if hi - lo < f64::EPSILON * hi.abs().max(1.0) {
        let half = if lo == 0.0 { 0.5 } else { lo.abs() * 0.1 };
        return lo - half..hi + half;
    }
    let margin = (hi - lo) * 0.05;
    if both_sides {
        lo - margin..hi + margin
    } else {
        lo..hi + margin
    }
}

/// A tick label precise enough for an axis spanning `span`: `1.2e-4` for tiny values,
/// `12k`/`3.4M` for large ones.
pub fn tick_label(v: f64, span: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a < 1e-2 && span < 1e-1 {
        format!("{v:.1e}")
    } else {
        let decimals = (-(span / 5.0).log10().floor()).clamp(0.0, 4.0) as usize;
        format!("{v:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_fit_the_scale() {
        assert_eq!(tick_label(0.0, 1.0), "0");
        assert_eq!(tick_label(1.5e-4, 1e-4), "1.5e-4");
        assert_eq!(tick_label(2_500_000.0, 1e7), "2.5M");
        assert_eq!(tick_label(25_000.0, 1e5), "25k");
        assert_eq!(tick_label(7.25, 4.0), "7.2");
        assert_eq!(tick_label(0.53, 0.4), "0.53");
    }

    #[test]
    fn legend_rows_wrap_and_centre() {
        // 44 + 7 * 3 = 65 px per three-letter label.
        assert_eq!(legend_layout(&["abc", "def"], 200), vec![(35, 0), (100, 0)]);
        assert_eq!(legend_layout(&["abc", "def"], 100), vec![(17, 0), (17, 1)]);
    }

    #[test]
    fn ranges_pad_and_survive_single_points() {
        let (x, y) = padded_ranges([(10.0, 2.0)].iter());
        assert!(x.start < 10.0 && x.end > 10.0);
        assert!(y.start < 2.0 && y.end > 2.0);
        let (x, _) = padded_ranges([].iter());
        assert_eq!(x, 0.0..1.0);
    }

    #[test]
    fn line_chart_is_an_svg_with_its_labels() {
        let chart = LineChart::new("Loss", "step", "loss")
            .curve("train", vec![(0.0, 8.0), (10.0, 6.0), (20.0, 5.5)], false)
            .curve("empty", Vec::new(), false);
        assert_eq!(chart.curves.len(), 1);
        let svg = render_line_chart(&chart).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.contains(">\nLoss\n</text>"));
        // One curve: the title names it, no legend.
        assert!(!svg.contains(">\ntrain\n</text>"));
        let two = LineChart::new("Accuracy", "step", "accuracy")
            .curve("MLM", vec![(0.0, 0.1), (10.0, 0.2)], false)
            .curve("held-out MLM", vec![(10.0, 0.15)], true);
        let svg = render_line_chart(&two).unwrap();
        assert!(svg.contains(">\nMLM\n</text>"));
        assert!(svg.contains(">\nheld-out MLM\n</text>"));
        assert!(svg.contains("<polyline"));
    }
}
