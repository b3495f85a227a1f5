//! The `peerlm` command-line tool.

fn main() {
    println!("peerlm {}", env!("CARGO_PKG_VERSION"));
}
