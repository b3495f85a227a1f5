//! How the report writes numbers and tables: one place, so a figure reads the same everywhere it appears.

use peerlm::study::Spread;

/// A perplexity: two decimals.
pub fn ppl(value: f64) -> String {
    format!("{value:.2}")
}

/// A KL divergence in nats: three decimals.
pub fn kl(value: f64) -> String {
    format!("{value:.3}")
}

/// A fraction as a percentage with one decimal.
pub fn percent(fraction: f64) -> String {
    format!("{:.1}%", 100.0 * fraction)
}

/// A FLOP budget as the run names write it, e.g. `1.1e12`.
pub fn budget(flops: f64) -> String {
    format!("{flops:e}")
}

/// An integer with thousands separators: 1,842,020.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Seconds as hours and minutes: 3h07m.
pub fn duration(seconds: f64) -> String {
    let minutes = (seconds / 60.0).round() as u64;
    format!("{}h{:02}m", minutes / 60, minutes % 60)
}

/// `mean ± sd (min–max)`, each number written by `write`, or the mean alone for one seed.
pub fn spread(s: &Spread, write: fn(f64) -> String) -> String {
    match s.std {
        Some(std) => format!("{} ± {} ({}–{})", write(s.mean), write(std), write(s.min), write(s.max)),
        None => write(s.mean),
    }
}

/// "1 seed", "3 seeds".
pub fn seeds(n: usize) -> String {
    if n == 1 {
        "1 seed".to_string()
    } else {
        format!("{n} seeds")
    }
}

/// The name the paper gives a method.
pub fn method(name: &str) -> String {
    match name {
        "dense" => "dense".to_string(),
        "moe" => "MoE".to_string(),
        "pkm" => "PKM".to_string(),
        "peer" => "PEER".to_string(),
        other => other.to_string(),
    }
}

/// A markdown table.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n|{}\n", header.join(" | "), " --- |".repeat(header.len()));
    for row in rows {
        out += &format!("| {} |\n", row.join(" | "));
    }
    out
}
