//! `etee pki init`: a self-contained test world (CA, ETK registration authority, and
//! institutions with an authentication key, an ETK and an eHealth-style keystore).
//! For test rigs and the demo only: real institutions get their keys from eHealth.

use crate::CliError;
use etee_formats::keystore::{write_pfx, PfxEntry, Profile};
use etee_testpki::{InstitutionSpec, TestPki};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create a test world in DIR: ca.pem, <name>.p12, <name>.etk, password.
    Init {
        dir: PathBuf,
        /// An institution as NAME:TYPE=VALUE[/APPLICATION] (repeatable), e.g.
        /// kgss:CBE=0809394427/KGSS; default: alice:NIHII-HOSPITAL=71000436 and
        /// bob:NIHII-PHARMACY=27150201.
        #[arg(long = "institution", value_name = "NAME:TYPE=VALUE[/APPLICATION]")]
        institutions: Vec<String>,
        /// Also a TLS server certificate for these names (DNS names or IP addresses), for a
        /// local platform: tls-server.pem (chain) and tls-server-key.pem.
        #[arg(long = "tls-server", value_name = "NAME")]
        tls_server: Vec<String>,
        /// Write keystores with the legacy algorithms (3DES/RC2-40) older Java tools expect.
        #[arg(long)]
        legacy_p12: bool,
    },
}

pub fn run(command: Command) -> Result<ExitCode, CliError> {
    let Command::Init {
        dir,
        institutions,
        tls_server,
        legacy_p12,
    } = command;
    let specs = if institutions.is_empty() {
        vec![
            "alice:NIHII-HOSPITAL=71000436".to_string(),
            "bob:NIHII-PHARMACY=27150201".to_string(),
        ]
    } else {
        institutions
    };
    std::fs::create_dir_all(&dir).map_err(|source| CliError::File {
        path: dir.display().to_string(),
        source,
    })?;
    let pki = TestPki::generate("etee test world")
        .map_err(|e| CliError::Usage(format!("generating the test CA: {e}")))?;
    let password = random_password()?;
    write(&dir, "password", password.as_bytes())?;
    write(
        &dir,
        "ca.pem",
        &pki.root.cert.to_pem().map_err(openssl_err)?,
    )?;
    let profile = if legacy_p12 {
        Profile::Legacy
    } else {
        Profile::Modern
    };
    for spec in &specs {
        let (name, id) = spec
            .split_once(':')
            .and_then(|(n, id)| id.split_once('=').map(|(t, v)| (n, (t, v))))
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "--institution {spec:?}: expected NAME:TYPE=VALUE[/APPLICATION]"
                ))
            })?;
        let (value, application) = match id.1.split_once('/') {
            Some((v, app)) => (v, Some(app)),
            None => (id.1, None),
        };
        let mut inst_spec = InstitutionSpec::new(id.0, value, name);
        if let Some(app) = application {
            inst_spec = inst_spec.with_application_id(app);
        }
        let inst = pki
            .institution(&inst_spec)
            .map_err(|e| CliError::Usage(format!("issuing {name}: {e}")))?;
        let entries = [
            PfxEntry {
                alias: "authentication".into(),
                key: inst.auth.key.clone(),
                chain: vec![inst.auth.cert.clone(), pki.root.cert.clone()],
            },
            PfxEntry {
                alias: inst.etk_serial_decimal(),
                key: inst.etk_key.clone(),
                chain: vec![inst.etk_cert.clone()],
            },
        ];
        let p12 = write_pfx(&entries, &password, profile).map_err(|source| CliError::Keystore {
            path: format!("{name}.p12"),
            source,
        })?;
        write(&dir, &format!("{name}.p12"), &p12)?;
        write(&dir, &format!("{name}.etk"), &inst.etk)?;
        // For independent checks with `openssl cms` only; a real ETK key never leaves its store.
        write(
            &dir,
            &format!("{name}-etk-cert.pem"),
            &inst.etk_cert.to_pem().map_err(openssl_err)?,
        )?;
        write(
            &dir,
            &format!("{name}-etk-key.pem"),
            &inst
                .etk_key
                .private_key_to_pem_pkcs8()
                .map_err(openssl_err)?,
        )?;
        println!(
            "{name}: {} (ETK serial {})",
            inst.subject_string(),
            inst.etk_serial_decimal()
        );
    }
    if !tls_server.is_empty() {
        let names: Vec<&str> = tls_server.iter().map(String::as_str).collect();
        let server = pki
            .tls_server(&names)
            .map_err(|e| CliError::Usage(format!("issuing the TLS server certificate: {e}")))?;
        let mut chain = server.cert.to_pem().map_err(openssl_err)?;
        chain.extend(pki.root.cert.to_pem().map_err(openssl_err)?);
        write(&dir, "tls-server.pem", &chain)?;
        write(
            &dir,
            "tls-server-key.pem",
            &server.key.private_key_to_pem_pkcs8().map_err(openssl_err)?,
        )?;
        println!("TLS server: {}", names.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

fn openssl_err(e: openssl::error::ErrorStack) -> CliError {
    CliError::Usage(format!("openssl: {e}"))
}

fn random_password() -> Result<String, CliError> {
    let mut b = [0u8; 12];
    openssl::rand::rand_bytes(&mut b).map_err(openssl_err)?;
    Ok(hex::encode(b))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), CliError> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|source| CliError::File {
        path: path.display().to_string(),
        source,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if name.ends_with(".pem") && name.contains("key")
            || name == "password"
            || name.ends_with(".p12")
        {
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
    }
    Ok(())
}
