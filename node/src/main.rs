//! The `ammotrace` binary: parses the command line and runs it (all logic is in the library).

// JSON handling allocates many small objects; mimalloc keeps that off glibc's slow paths
// (measured: the indexer spent a third of its time in glibc malloc).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ammotrace::cli::main()
}
