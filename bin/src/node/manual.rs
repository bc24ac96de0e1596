//! `p2p-node completions SHELL` and `p2p-node man`: a shell completion script and the man page,
//! both generated from the clap definition of the command line (`cli.rs`), so they list
//! exactly the subcommands and options the program takes.

use std::io::Write;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// The program's name in the script and the page.
const PROGRAM: &str = "p2p-node";

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: Shell) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), PROGRAM, &mut script);
    std::io::stdout().write_all(&script).context("cannot write the completion script")
}

/// Prints the man page (roff, section 1) on stdout.
pub fn man() -> anyhow::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut page).context("cannot render the man page")?;
    std::io::stdout().write_all(&page).context("cannot write the man page")
}
