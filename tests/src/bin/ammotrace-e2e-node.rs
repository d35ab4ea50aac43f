//! The `ammotrace` binary, built inside the end-to-end test crate so its tests can start real
//! node processes (`CARGO_BIN_EXE_ammotrace-e2e-node`).

fn main() -> std::process::ExitCode {
    ammotrace::cli::main()
}
