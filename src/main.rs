use clap::Parser;

fn main() {
    let cli = ctrace::cli::Cli::parse();
    let code = match ctrace::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ctrace: {e:#}");
            ctrace::exit::ERROR
        }
    };
    std::process::exit(code);
}
