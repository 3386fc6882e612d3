fn main() {
    std::process::exit(mtpx::cli::main());
}
