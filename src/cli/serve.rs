//! `emotune serve`.

use crate::serve::ServeConfig;
use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ServeConfig,
}

pub fn run(args: ServeArgs) -> Result<()> {
    crate::serve::serve(args.config)
}
