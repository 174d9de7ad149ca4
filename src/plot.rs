//! PNG charts with `plotters`: the confusion matrix. Text uses the bundled DejaVu Sans Mono,
//! so nothing depends on the fonts a machine has.

use crate::display::clip;
use crate::train::history::{EpochRow, LogPoint};
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
const FAMILY: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

/// Renders through a temporary PNG beside `path`, then renames it into place.
fn render_atomic(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<()>,
) -> Result<()> {
    register_font();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "plot.png".into());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp.png", std::process::id()));
    {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
        draw(&root)?;
        root.present().map_err(|e| anyhow!("writing {}: {e}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| anyhow!("renaming {} to {}: {e}", tmp.display(), path.display()))?;
    Ok(())
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing: {e}")
}

/// The legend of `chart`'s labelled series, in one style for every chart.
fn draw_legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
    at: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .label_font((FAMILY, 13))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .position(at)
        .draw()
        .map_err(err)
}

/// The confusion matrix as a heat map: cells shaded by the row-normalised rate (recall per
/// gold label), each showing the rate and the count.
pub fn confusion_matrix_png(path: &Path, labels: &[String], counts: &[Vec<usize>], title: &str) -> Result<()> {
    let k = labels.len();
    let cell = 90i32;
    let left = 130i32;
    let top = 70i32;
    let bottom = 90i32;
    let w = (left + cell * k as i32 + 40) as u32;
    let h = (top + cell * k as i32 + bottom) as u32;
    render_atomic(path, (w, h), |root| {
        let title_style = TextStyle::from((FAMILY, 22).into_font()).color(&BLACK);
        root.draw(&Text::new(title.to_string(), (left, 20), title_style)).map_err(err)?;
        let small = TextStyle::from((FAMILY, 14).into_font()).color(&BLACK);
        for (i, row) in counts.iter().enumerate() {
            let total: usize = row.iter().sum();
            for (j, &c) in row.iter().enumerate() {
                let rate = if total == 0 { 0.0 } else { c as f64 / total as f64 };
                let shade = |v: u8| (255.0 - rate * (255.0 - v as f64)) as u8;
                let color = RGBColor(shade(8), shade(81), shade(156));
                let (x0, y0) = (left + j as i32 * cell, top + i as i32 * cell);
                root.draw(&Rectangle::new([(x0, y0), (x0 + cell, y0 + cell)], color.filled())).map_err(err)?;
                root.draw(&Rectangle::new([(x0, y0), (x0 + cell, y0 + cell)], BLACK.mix(0.2))).map_err(err)?;
                let ink = if rate > 0.5 { WHITE } else { BLACK };
                let big = TextStyle::from((FAMILY, 18).into_font()).color(&ink);
                let sm = TextStyle::from((FAMILY, 13).into_font()).color(&ink);
                root.draw(&Text::new(format!("{rate:.2}"), (x0 + 22, y0 + 28), big)).map_err(err)?;
                root.draw(&Text::new(format!("n={c}"), (x0 + 18, y0 + 54), sm)).map_err(err)?;
            }
        }
        for (i, l) in labels.iter().enumerate() {
            let y = top + i as i32 * cell + cell / 2 - 8;
            root.draw(&Text::new(clip(l, 13), (10, y), small.clone())).map_err(err)?;
            let x = left + i as i32 * cell + 6;
            root.draw(&Text::new(clip(l, 10), (x, top + k as i32 * cell + 10), small.clone())).map_err(err)?;
        }
        let axis = TextStyle::from((FAMILY, 16).into_font()).color(&BLACK);
        root.draw(&Text::new("predicted label →", (left, top + k as i32 * cell + 45), axis.clone())).map_err(err)?;
        root.draw(&Text::new("rows: true label", (10, top - 28), axis)).map_err(err)?;
        Ok(())
    })
}

/// Per-label F1 of a multi-label model as horizontal bars, labels in id order.
pub fn per_label_f1_png(path: &Path, labels: &[String], f1: &[f64], title: &str) -> Result<()> {
    let height = 90 + 24 * labels.len() as u32;
    render_atomic(path, (760, height), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FAMILY, 20))
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(150)
            .build_cartesian_2d(0f64..1f64, (0..labels.len()).into_segmented())
            .map_err(err)?;
        let name = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => labels.get(*i).map_or(String::new(), |l| clip(l, 20)),
            SegmentValue::Last => String::new(),
        };
        chart
            .configure_mesh()
            .x_desc("F1")
            .y_labels(labels.len())
            .y_label_formatter(&name)
            .label_style((FAMILY, 13))
            .draw()
            .map_err(err)?;
        let bars = f1.iter().enumerate().map(|(i, &v)| {
            Rectangle::new([(0.0, SegmentValue::Exact(i)), (v, SegmentValue::Exact(i + 1))], BLUE.mix(0.6).filled())
        });
        chart.draw_series(bars).map_err(err)?;
        Ok(())
    })
}

/// Learning curves: training loss per logging step with validation loss per evaluation (left),
/// validation accuracy and F1 per evaluation (right).
pub fn learning_curves_png(path: &Path, log: &[LogPoint], rows: &[EpochRow]) -> Result<()> {
    render_atomic(path, (1100, 450), |root| {
        let (left, right) = root.split_horizontally(560);
        let max_step = log.iter().map(|p| p.step).chain(rows.iter().map(|r| r.step)).max().unwrap_or(1).max(1) as f64;
        let losses = log.iter().map(|p| p.loss).chain(rows.iter().map(|r| r.validation_loss));
        // Headroom above the highest loss holds the legend, so it never covers a curve.
        let max_loss = losses.fold(0.0f64, f64::max).max(1e-3) * 1.3;
        let mut chart = ChartBuilder::on(&left)
            .caption("loss", (FAMILY, 20))
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..max_step, 0f64..max_loss)
            .map_err(err)?;
        chart.configure_mesh().x_desc("step").label_style((FAMILY, 13)).draw().map_err(err)?;
        // No legend entry for a series without points (a run shorter than --logging-steps).
        if !log.is_empty() {
            chart
                .draw_series(LineSeries::new(log.iter().map(|p| (p.step as f64, p.loss)), BLUE.stroke_width(2)))
                .map_err(err)?
                .label("training loss")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE.stroke_width(2)));
            chart
                .draw_series(log.iter().map(|p| Circle::new((p.step as f64, p.loss), 2, BLUE.filled())))
                .map_err(err)?;
        }
        chart
            .draw_series(LineSeries::new(rows.iter().map(|r| (r.step as f64, r.validation_loss)), RED.stroke_width(2)))
            .map_err(err)?
            .label("validation loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.stroke_width(2)));
        chart
            .draw_series(rows.iter().map(|r| Circle::new((r.step as f64, r.validation_loss), 4, RED.filled())))
            .map_err(err)?;
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;

        let lo = rows.iter().flat_map(|r| [r.accuracy, r.f1]).fold(1.0f64, f64::min).min(0.9);
        let mut chart = ChartBuilder::on(&right)
            .caption("validation accuracy / F1", (FAMILY, 20))
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..max_step, (lo - 0.02).max(0.0)..1.0 + 0.2 * (1.02 - lo))
            .map_err(err)?;
        chart.configure_mesh().x_desc("step").label_style((FAMILY, 13)).draw().map_err(err)?;
        for (name, color, get) in [
            ("accuracy", GREEN, (|r: &EpochRow| r.accuracy) as fn(&EpochRow) -> f64),
            ("F1 (weighted)", MAGENTA, |r: &EpochRow| r.f1),
        ] {
            chart
                .draw_series(LineSeries::new(rows.iter().map(|r| (r.step as f64, get(r))), color.stroke_width(2)))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            chart
                .draw_series(rows.iter().map(|r| Circle::new((r.step as f64, get(r)), 4, color.filled())))
                .map_err(err)?;
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        Ok(())
    })
}

/// The data map of a run (dataset cartography): each training row at (variability,
/// confidence), coloured by the fraction of epochs that predicted it right, with the three
/// regions named. `points`: (variability, confidence, correctness).
pub fn data_map_png(path: &Path, points: &[(f64, f64, f64)], title: &str) -> Result<()> {
    render_atomic(path, (760, 640), |root| {
        let top_var = points.iter().map(|p| p.0).fold(0.0f64, f64::max).max(0.25) * 1.05;
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FAMILY, 20))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..top_var, 0f64..1.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("variability")
            .y_desc("confidence")
            .label_style((FAMILY, 13))
            .draw()
            .map_err(err)?;
        // Red (never right) through yellow to blue (always right); small and translucent, so
        // that dense regions read as dense.
        let colour = |c: f64| {
            RGBColor(
                (220.0 - 190.0 * c) as u8,
                (60.0 + 120.0 * (1.0 - (2.0 * c - 1.0).abs())) as u8,
                (40.0 + 180.0 * c) as u8,
            )
        };
        chart
            .draw_series(points.iter().map(|&(v, conf, c)| Circle::new((v, conf), 2, colour(c).mix(0.5).filled())))
            .map_err(err)?;
        let style = TextStyle::from((FAMILY, 16).into_font()).color(&BLACK);
        for (name, at) in
            [("easy-to-learn", (0.01, 0.95)), ("hard-to-learn", (0.01, 0.08)), ("ambiguous", (top_var * 0.62, 0.55))]
        {
            chart.draw_series(std::iter::once(Text::new(name, at, style.clone()))).map_err(err)?;
        }
        for (c, name) in [(0.0, "never right"), (0.5, "right in half the epochs"), (1.0, "always right")] {
            chart
                .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| Circle::new((x + 6, y), 4, colour(c).filled()));
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        Ok(())
    })
}

/// The learning-rate range test: the smoothed loss against the learning rate (log scale), with
/// the suggested rates marked. `suggestions`: (name, rate).
pub fn lr_find_png(path: &Path, points: &[(f64, f64)], suggestions: &[(&str, f64)]) -> Result<()> {
    render_atomic(path, (760, 480), |root| {
        let lo = points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min).max(1e-12);
        let hi = points.iter().map(|p| p.0).fold(0.0f64, f64::max).max(lo * 10.0);
        let min_loss = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        // The divergent tail would flatten the rest: the axis stops at 1.5 times the first loss.
        let cap = points.first().map_or(f64::INFINITY, |p| 1.5 * p.1);
        let points: Vec<(f64, f64)> = points.iter().cloned().filter(|p| p.1 <= cap).collect();
        let max_loss = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let pad = ((max_loss - min_loss) * 0.1).max(1e-3);
        let (y0, y1) = if min_loss.is_finite() { (min_loss - pad, max_loss + pad) } else { (0.0, 1.0) };
        let mut chart = ChartBuilder::on(root)
            .caption("learning-rate range test", (FAMILY, 20))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d((lo..hi).log_scale(), y0..y1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("learning rate")
            .y_desc("training loss (smoothed)")
            .x_label_formatter(&|x| format!("{x:.0e}"))
            .label_style((FAMILY, 13))
            .draw()
            .map_err(err)?;
        chart.draw_series(LineSeries::new(points.iter().cloned(), BLUE.stroke_width(2))).map_err(err)?;
        for (&(name, lr), colour) in suggestions.iter().zip([RED, GREEN, MAGENTA]) {
            let loss_at =
                points.iter().min_by(|a, b| (a.0 - lr).abs().total_cmp(&(b.0 - lr).abs())).map_or(y0, |p| p.1);
            chart
                .draw_series(std::iter::once(Circle::new((lr, loss_at), 6, colour.filled())))
                .map_err(err)?
                .label(format!("{name}: {lr:.2e}"))
                .legend(move |(x, y)| Circle::new((x + 6, y), 5, colour.filled()));
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        Ok(())
    })
}
