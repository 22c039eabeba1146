#![forbid(unsafe_code)]

fn main() {
    let cli = arca::cli::parse();
    let json = cli.json;
    arca::ui::init_logging(cli.quiet, cli.verbose);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match rt.block_on(arca::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // Every message already names its cause: print it once.
            if json {
                eprintln!("{}", e.to_json());
            } else {
                eprintln!("error: {e}");
            }
            e.exit_code()
        }
    };
    std::process::exit(code);
}
