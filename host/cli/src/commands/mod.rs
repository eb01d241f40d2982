pub mod attest;
pub mod audit;
pub mod audit_search;
pub mod crl;
pub mod custody;
pub mod demo;
pub mod etk;
pub mod hsm;
pub mod pki;
pub mod pki_ocsp;
pub mod platform;
pub mod seal;
pub mod serve;
pub mod unseal;

use std::io::Read;
use std::path::Path;

/// `--in FILE` or standard input.
pub fn input(path: Option<&Path>) -> Result<Box<dyn Read>, crate::CliError> {
    Ok(match path {
        Some(p) => Box::new(
            std::fs::File::open(p).map_err(|source| crate::CliError::File {
                path: p.display().to_string(),
                source,
            })?,
        ),
        None => Box::new(std::io::stdin().lock()),
    })
}
