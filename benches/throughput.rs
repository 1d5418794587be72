//! `cargo bench --bench throughput`: the whole-runtime table of
//! `examples/throughput.rs`, so that `cargo bench` runs it too.

#[path = "../examples/throughput.rs"]
mod example;

fn main() {
    example::main();
}
