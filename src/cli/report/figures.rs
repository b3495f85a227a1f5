//! The report's figures as SVG (plotters' SVG backend): Figure 1 (C4 perplexity against parameters, one
//! line per method and budget), Figure 3a (against the number of experts) and Figure 3b (against the
//! number of active experts). Each point is a mean over seeds, with a bar from the lowest to the highest
//! seed when there are several. A figure whose grid has not run is not drawn.

use plotters::chart::SeriesAnno;
use plotters::coord::Shift;
use plotters::prelude::*;

use peerlm::study::{self, Point, Spread};

use super::ablations::{active_count, active_points, experts_points, shape, split};
use super::tables::ISOFLOP_GRIDS;
use super::{format, Study};

/// A drawn figure: its file name under `reproduction/` and its SVG text.
pub struct Figure {
    pub file: &'static str,
    pub svg: String,
}

/// One line of a plot: its points `(x, perplexity over seeds)` sorted by x.
struct Series {
    label: String,
    colour: RGBColor,
    /// Marker and dash style: 0 circle and solid, 1 triangle and dashed, 2 square and dotted, 3 cross.
    style: usize,
    points: Vec<(f64, Spread)>,
}

struct Plot {
    title: &'static str,
    x_label: &'static str,
    /// The base of the logarithmic x axis.
    x_base: f64,
    series: Vec<Series>,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(90, 90, 90),
];

/// Every figure whose grid has points.
pub fn all(study: &Study) -> Result<Vec<Figure>, String> {
    let plots =
        [("isoflop.svg", isoflop(study)), ("experts.svg", experts(study)), ("active.svg", active_experts(study))];
    plots
        .into_iter()
        .filter(|(_, plot)| !plot.series.is_empty())
        .map(|(file, plot)| Ok(Figure { file, svg: draw(&plot).map_err(|e| format!("drawing {file}: {e}"))? }))
        .collect()
}

fn method_colour(method: &str) -> RGBColor {
    match method {
        "dense" => PALETTE[5],
        "moe" => PALETTE[0],
        "pkm" => PALETTE[1],
        "peer" => PALETTE[2],
        _ => PALETTE[3],
    }
}

/// Figure 1: a line per budget and method through its sizes.
fn isoflop(study: &Study) -> Plot {
    let points = study.points(&ISOFLOP_GRIDS);
    let budgets = budgets(&points);
    let methods = study::ordered_methods(points.iter().map(Point::method).collect::<Vec<_>>().iter());
    let mut series = Vec::new();
    for (b, &budget) in budgets.iter().enumerate() {
        for method in &methods {
            let line: Vec<&Point> = points.iter().filter(|p| p.budget == budget && &p.method() == method).collect();
            let label = format!("{} {}", format::method(method), format::budget(budget));
            series.extend(series_of(label, method_colour(method), b, &line, |p| p.params as f64));
        }
    }
    Plot { title: "C4 validation perplexity against parameters", x_label: "total parameters", x_base: 10.0, series }
}

/// Figure 3a: a line per budget through the numbers of experts.
fn experts(study: &Study) -> Plot {
    let points = experts_points(study);
    let series = budgets(&points)
        .iter()
        .enumerate()
        .filter_map(|(b, &budget)| {
            let line: Vec<&Point> = points.iter().filter(|p| p.budget == budget).collect();
            let label = format!("PEER {} FLOPs", format::budget(budget));
            series_of(label, PALETTE[2], b, &line, |p| shape(p).0 as f64)
        })
        .collect();
    Plot { title: "C4 perplexity against the number of experts", x_label: "experts N", x_base: 2.0, series }
}

/// Figure 3b: a line per h/k split through the active experts.
fn active_experts(study: &Study) -> Plot {
    let points = active_points(study);
    let mut splits: Vec<String> = points.iter().map(split).collect();
    splits.dedup();
    let series = splits
        .iter()
        .enumerate()
        .filter_map(|(s, name)| {
            let line: Vec<&Point> = points.iter().filter(|p| &split(p) == name).collect();
            series_of(format!("split {name}"), PALETTE[s % PALETTE.len()], s, &line, |p| active_count(p) as f64)
        })
        .collect();
    Plot { title: "C4 perplexity against active experts", x_label: "active experts h·k", x_base: 2.0, series }
}

fn budgets(points: &[Point]) -> Vec<f64> {
    let mut budgets: Vec<f64> = points.iter().map(|p| p.budget).collect();
    budgets.sort_by(f64::total_cmp);
    budgets.dedup();
    budgets
}

/// The series of `line`'s points that scored C4 (a finite perplexity at a positive x), sorted by `x`; none
/// if no point did.
fn series_of(label: String, colour: RGBColor, style: usize, line: &[&Point], x: fn(&Point) -> f64) -> Option<Series> {
    let finite = |(x, s): &(f64, Spread)| x.is_finite() && *x > 0.0 && s.min.is_finite() && s.max.is_finite();
    let mut points: Vec<(f64, Spread)> =
        line.iter().filter_map(|p| Some((x(p), *p.perplexity("c4")?))).filter(finite).collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    (!points.is_empty()).then_some(Series { label, colour, style, points })
}

/// The plot as SVG text.
fn draw(plot: &Plot) -> Result<String, String> {
    let mut svg = String::new();
    let root = SVGBackend::with_string(&mut svg, (820, 560)).into_drawing_area();
    chart(&root, plot).map_err(|e| e.to_string())?;
    drop(root);
    Ok(svg)
}

fn chart(root: &DrawingArea<SVGBackend, Shift>, plot: &Plot) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    root.fill(&WHITE)?;
    let (x0, x1, y0, y1) = bounds(plot);
    let mut chart = ChartBuilder::on(root)
        .caption(plot.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((x0..x1).log_scale().base(plot.x_base), y0..y1)?;
    chart
        .configure_mesh()
        .x_desc(format!("{} (log scale)", plot.x_label))
        .y_desc("C4 validation perplexity")
        .light_line_style(RGBColor(240, 240, 240))
        .x_label_formatter(&|x| tick(*x))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for series in &plot.series {
        let line = ShapeStyle::from(series.colour).stroke_width(2);
        let xy: Vec<(f64, f64)> = series.points.iter().map(|(x, s)| (*x, s.mean)).collect();
        let style = series.style;
        let drawn = match style % 4 {
            1 => chart.draw_series(DashedLineSeries::new(xy.clone(), 8, 5, line))?,
            2 => chart.draw_series(DashedLineSeries::new(xy.clone(), 2, 4, line))?,
            _ => chart.draw_series(LineSeries::new(xy.clone(), line))?,
        };
        legend(drawn.label(&series.label), style, line);
        let fill = line.filled();
        match style % 4 {
            0 => chart.draw_series(xy.iter().map(|&at| Circle::new(at, 4, fill)))?,
            1 => chart.draw_series(xy.iter().map(|&at| TriangleMarker::new(at, 6, fill)))?,
            2 => chart
                .draw_series(xy.iter().map(|&at| EmptyElement::at(at) + Rectangle::new([(-4, -4), (4, 4)], fill)))?,
            _ => chart.draw_series(xy.iter().map(|&at| Cross::new(at, 5, line)))?,
        };
        let bars = series.points.iter().filter(|(_, s)| s.n > 1);
        chart.draw_series(bars.map(|(x, s)| PathElement::new(vec![(*x, s.min), (*x, s.max)], line)))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The axes' ranges: x spans the points with a margin on the log scale, y the seeds' extremes.
fn bounds(plot: &Plot) -> (f64, f64, f64, f64) {
    let all = plot.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for (x, s) in all {
        (x0, x1, y0, y1) = (x0.min(*x), x1.max(*x), y0.min(s.min), y1.max(s.max));
    }
    let pad = (y1 - y0).max(y1.abs() * 0.01) * 0.08;
    (x0 / 1.25, x1 * 1.25, y0 - pad, y1 + pad)
}

/// The legend entry of a series: a stroke of its line with its marker on it.
fn legend<'a, DB: DrawingBackend + 'a>(entry: &mut SeriesAnno<'a, DB>, style: usize, line: ShapeStyle) {
    let stroke = move |at| EmptyElement::at(at) + PathElement::new(vec![(-12, 0), (12, 0)], line);
    let fill = line.filled();
    match style % 4 {
        0 => entry.legend(move |at| stroke(at) + Circle::new((0, 0), 4, fill)),
        1 => entry.legend(move |at| stroke(at) + TriangleMarker::new((0, 0), 6, fill)),
        2 => entry.legend(move |at| stroke(at) + Rectangle::new([(-4, -4), (4, 4)], fill)),
        _ => entry.legend(move |at| stroke(at) + Cross::new((0, 0), 5, line)),
    };
}

/// An axis number: 1.3M, 16,384.
fn tick(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.1}M", x / 1e6)
    } else {
        format::count(x.round() as u64)
    }
}
