//! The `ringmesh` command line. Subcommands that talk to a running control plane join as the
//! control plane grows; `analyze` works offline.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// ringmesh: manage and check mesh configuration.
#[derive(Debug, Parser)]
#[command(name = "ringmesh", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate config files or directories offline with the proxy's own compiler.
    Analyze {
        /// Files or directories (every *.yaml / *.yml inside, sorted).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Treat warnings (unsupported fields or kinds) as errors.
        #[arg(long)]
        strict: bool,
    },
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One diagnostic a line, then a summary.
    Text,
    /// A JSON document.
    Json,
}

/// Runs the CLI with `args` (including the program name) and returns the exit code.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    match cli.command {
        Command::Analyze { paths, output, strict } => {
            let report = crate::analyze::analyze(&paths);
            match output {
                Output::Text => print!("{}", report.text()),
                Output::Json => println!("{}", serde_json::to_string_pretty(&report.json()).unwrap_or_default()),
            }
            report.exit_code(strict)
        }
    }
}
