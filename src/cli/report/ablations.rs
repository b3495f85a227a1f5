//! The ablations' tables: the number of experts (Figure 3a), the number of active experts (Figure 3b) and
//! query batch norm (Table 2). N, h and k are read from each run's config, never from its name.

use peerlm::study::{self, Point};

use super::format::{self, table};
use super::tables::size;
use super::Study;

/// The experts grid's points, by budget then N.
pub fn experts_points(study: &Study) -> Vec<Point> {
    let mut points = study.points(&["experts"]);
    points.sort_by(|a, b| a.budget.total_cmp(&b.budget).then(shape(a).0.cmp(&shape(b).0)));
    points
}

/// The active grid's points, by split then h·k.
pub fn active_points(study: &Study) -> Vec<Point> {
    let mut points = study.points(&["active"]);
    points.sort_by(|a, b| split(a).cmp(&split(b)).then(active_count(a).cmp(&active_count(b))));
    points
}

/// The bn grid's points: off, pooled, per head.
pub fn batch_norm_points(study: &Study) -> Vec<Point> {
    let mut points = study.points(&["bn"]);
    points.sort_by_key(|p| (bn_rank(p), p.budget.to_bits()));
    points
}

/// (N, h, k); zeros for a layer without retrieval.
pub fn shape(point: &Point) -> (usize, usize, usize) {
    study::retrieval_shape(&point.config).unwrap_or((0, 0, 0))
}

/// h·k, the active experts per token.
pub fn active_count(point: &Point) -> usize {
    let (_, h, k) = shape(point);
    h * k
}

/// The h/k split a point belongs to: its `split` label.
pub fn split(point: &Point) -> String {
    point.labels.get("split").cloned().unwrap_or_else(|| "all".to_string())
}

/// 0 without query batch norm, 1 pooled over heads, 2 per head.
pub fn bn_rank(point: &Point) -> u8 {
    let peer = &point.config.model.peer;
    match (peer.keys.query_batch_norm, peer.query_bn_per_head) {
        (false, _) => 0,
        (true, false) => 1,
        (true, true) => 2,
    }
}

pub fn bn_name(point: &Point) -> &'static str {
    ["off", "pooled", "per head"][bn_rank(point) as usize]
}

/// N written with its square root, e.g. `16,384 (128²)`.
pub fn experts_name(n: usize) -> String {
    let root = (n as f64).sqrt().round() as usize;
    format!("{} ({root}²)", format::count(n as u64))
}

/// C4 perplexity, usage %, gate-weighted KL and selection KL of a point.
fn quality_cells(point: &Point) -> Vec<String> {
    let c4 = point.perplexity("c4").map_or("—".to_string(), |s| format::spread(s, format::ppl));
    let Some(usage) = &point.usage else { return vec![c4, "—".into(), "—".into(), "—".into()] };
    vec![
        c4,
        format::spread(&usage.fraction_used, format::percent),
        format::spread(&usage.kl_from_uniform, format::kl),
        format::spread(&usage.selection_kl_from_uniform, format::kl),
    ]
}

const QUALITY: [&str; 4] = ["C4 ppl", "experts used", "KL (gate-weighted)", "KL (selections)"];

/// Figure 3a's table and figure.
pub fn experts(study: &Study, drawn: &[&str]) -> String {
    let out = "## Figure 3a: number of experts at a fixed number of active experts\n\n".to_string();
    let points = experts_points(study);
    if points.is_empty() {
        return out + "Not run yet (grid `experts`).\n";
    }
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| {
            let (n, h, k) = shape(p);
            let mut row = vec![format::budget(p.budget), experts_name(n), format!("{h}·{k} = {}", h * k)];
            row.extend([format::count(p.params as u64), format::seeds(p.seeds.len())]);
            row.extend(quality_cells(p));
            row
        })
        .collect();
    let header = [["budget", "N", "h·k", "params", "seeds"].as_slice(), &QUALITY].concat();
    out + &table(&header, &rows)
        + &figure(study, drawn, "experts.svg", "C4 perplexity against the number of experts N", "experts")
}

/// Figure 3b's table and figure.
pub fn active(study: &Study, drawn: &[&str]) -> String {
    let out = "## Figure 3b: number of active experts\n\n".to_string();
    let points = active_points(study);
    if points.is_empty() {
        return out + "Not run yet (grid `active`).\n";
    }
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| {
            let (n, h, k) = shape(p);
            let mut row = vec![split(p), format::budget(p.budget), h.to_string(), k.to_string(), (h * k).to_string()];
            row.extend([experts_name(n), format::seeds(p.seeds.len())]);
            row.extend(quality_cells(p));
            row
        })
        .collect();
    let header = [["split", "budget", "h", "k", "h·k", "N", "seeds"].as_slice(), &QUALITY].concat();
    out + &table(&header, &rows)
        + &figure(study, drawn, "active.svg", "C4 perplexity against active experts h·k", "active")
}

/// Table 2: query batch norm off, pooled and per head.
pub fn batch_norm(study: &Study) -> String {
    let out = "## Table 2: query batch norm and expert usage\n\n".to_string();
    let points = batch_norm_points(study);
    if points.is_empty() {
        return out + "Not run yet (grid `bn`).\n";
    }
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| {
            let mut row = vec![p.label("bn").to_string(), bn_name(p).to_string(), experts_name(shape(p).0)];
            row.extend([size(p), format::budget(p.budget), format::seeds(p.seeds.len())]);
            row.extend(quality_cells(p));
            row
        })
        .collect();
    let header = [["run", "query BN (config)", "N", "size", "budget", "seeds"].as_slice(), &QUALITY].concat();
    out + "Usage and KL are measured on the C4 validation set; the paper's KL is the gate-weighted one.\n\n"
        + &table(&header, &rows)
        + "\nRe-create it with:\n\n"
        + &study.commands_for(&["bn"])
}

fn figure(study: &Study, drawn: &[&str], file: &str, alt: &str, grid: &str) -> String {
    if !drawn.contains(&file) {
        return String::new();
    }
    format!("\n![{alt}](reproduction/{file})\n\nRe-create it with:\n\n{}", study.commands_for(&[grid]))
}
