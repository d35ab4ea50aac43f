//! The `ammotrace` binary: parses the command line and runs it (all logic is in the library).

fn main() -> std::process::ExitCode {
    ammotrace::cli::main()
}
