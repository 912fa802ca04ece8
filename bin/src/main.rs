//! `corecache`: the one binary.

use std::process::ExitCode;

const USAGE: &str = "usage: corecache <command>

commands:
  serve      run a node (coming with the node issue; the storage engine is ready)
  version    print the version
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("version") | Some("--version") | Some("-V") => {
            println!("corecache {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("serve") => {
            eprintln!(
                "corecache serve: the HTTP node is not built yet (see the node issue); \
                 the storage engine is in corecache-core"
            );
            ExitCode::from(2)
        }
        Some("help") | Some("--help") | Some("-h") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
