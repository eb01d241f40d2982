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

/// `--in FILE` or standard input, for a command that writes `--out` `output`: the same
/// file for both is refused (the output replaces its file, so the input would be lost).
pub fn input(path: Option<&Path>, output: Option<&Path>) -> Result<Box<dyn Read>, crate::CliError> {
    let Some(p) = path else {
        return Ok(Box::new(std::io::stdin().lock()));
    };
    let file = std::fs::File::open(p).map_err(|source| crate::CliError::File {
        path: p.display().to_string(),
        source,
    })?;
    if let Some(out) = output.and_then(|o| std::fs::metadata(o).ok()) {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().map_err(crate::CliError::Io)?;
        if meta.is_file() && (meta.dev(), meta.ino()) == (out.dev(), out.ino()) {
            return Err(crate::CliError::Usage(format!(
                "--in {} and --out are the same file: the output would replace the input; \
                 write to another file",
                p.display()
            )));
        }
    }
    Ok(Box::new(file))
}
