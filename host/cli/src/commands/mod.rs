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
pub mod platform_kgss;
pub mod seal;
pub mod serve;
pub mod timestamp;
pub mod unseal;

use crate::progress::Reading;
use std::io::Read;
use std::path::Path;

/// `--in FILE` or standard input, for a command that writes `--out` `output`: the same
/// file for both is refused (the output replaces its file, so the input would be lost).
/// On a terminal, a progress line says how much was read (of how much, for a file) while
/// `verb` ("sealing") takes more than a second.
pub fn input(
    path: Option<&Path>,
    output: Option<&Path>,
    verb: &'static str,
) -> Result<Box<dyn Read>, crate::CliError> {
    let meter = crate::progress::Meter::on_terminal();
    let Some(p) = path else {
        // Standard input redirected from a file has a size; a pipe has none.
        let total = std::fs::metadata("/dev/stdin")
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        let stdin = std::io::stdin().lock();
        return Ok(Box::new(Reading::new(stdin, verb, total, meter)));
    };
    let file = std::fs::File::open(p).map_err(|source| crate::CliError::File {
        path: p.display().to_string(),
        source,
    })?;
    let meta = file.metadata().map_err(crate::CliError::Io)?;
    if meta.is_dir() {
        return Err(crate::CliError::Usage(format!(
            "--in {}: a directory, not a file",
            p.display()
        )));
    }
    if let Some(out) = output.and_then(|o| std::fs::metadata(o).ok()) {
        use std::os::unix::fs::MetadataExt;
        if meta.is_file() && (meta.dev(), meta.ino()) == (out.dev(), out.ino()) {
            return Err(crate::CliError::Usage(format!(
                "--in {} and --out are the same file: the output would replace the input; \
                 write to another file",
                p.display()
            )));
        }
    }
    let total = meta.is_file().then_some(meta.len());
    Ok(Box::new(Reading::new(file, verb, total, meter)))
}
