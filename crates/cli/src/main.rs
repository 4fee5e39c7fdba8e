//! `hodei`: see the `hodei_cli` library for everything.

fn main() -> std::process::ExitCode {
    hodei_cli::main()
}
