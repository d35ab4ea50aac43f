//! The `ammotrace` binary, built inside the end-to-end test crate so its tests can start real
//! node processes (same global allocator as `node/src/main.rs`).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ammotrace::cli::main()
}
