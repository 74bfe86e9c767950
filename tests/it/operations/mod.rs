//! What operators and interface engineers use: metrics and the ops page, the page in a browser,
//! the docs' metric tables, the command line, mapping tests and dry runs.

mod cli;
mod deploy;
mod docs_metrics;
mod first_run;
mod mapping_cli;
mod ops;
mod ops_browser;
