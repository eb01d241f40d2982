//! `etee platform kgss list`: what KGSS holds, for an administrator. Only what the store
//! keeps beside each key (id, creator, time, reader conditions): the keys themselves are
//! wrapped by the HSM and never leave it here, not even wrapped.

use crate::CliError;
use base64::Engine;
use etee_platform::PlatformConfig;
use etee_services::kgss::vocabulary;
use etee_store::{Credential, KgssKey};
use serde_json::json;
use std::process::ExitCode;

/// Keys read from the store at a time: bounded memory whatever the store holds.
const PAGE: usize = 1000;

/// Lists the stored KGSS keys (of one creator, with `creator`), in id order.
pub fn list(
    config: &PlatformConfig,
    creator: Option<&str>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let creator = creator.map(parse_creator).transpose()?;
    let store = super::platform::store(config)?;
    let read = |after: Option<&[u8; 16]>| {
        store
            .kgss_keys(after, PAGE)
            .map_err(|e| super::platform::store_error(config, e))
    };
    let wanted = |k: &&KgssKey| {
        creator
            .as_ref()
            .is_none_or(|(t, v)| k.creator.id_type == *t && k.creator.value == *v)
    };
    let (mut seen, mut shown) = (0usize, 0usize);
    // The first page is read before anything is written, so that a store that cannot be
    // read (in use, unreachable) gives its error alone, as JSON with --json.
    let mut page = read(None)?;
    if json {
        out!("[")?;
    }
    loop {
        seen += page.len();
        for key in page.iter().filter(wanted) {
            if json {
                // One line, as every --json output, written as it goes.
                let sep = if shown == 0 { "" } else { "," };
                out!("{sep}{}", json_of(key))?;
            } else {
                outln!("{}", text_of(key))?;
            }
            shown += 1;
        }
        match page.last() {
            Some(last) if page.len() == PAGE => page = read(Some(&last.id))?,
            _ => break,
        }
    }
    if json {
        outln!("]")?;
    } else {
        outln!("{}", summary(shown, seen, creator.as_ref()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `--creator TYPE=VALUE` as the store keeps creators: canonical type, zero-padded value.
fn parse_creator(arg: &str) -> Result<(String, String), CliError> {
    let bad = |why: &str| CliError::Usage(format!("--creator {arg:?}: {why}"));
    let (t, v) = arg
        .split_once('=')
        .ok_or_else(|| bad("expected TYPE=VALUE"))?;
    let t = etee_formats::identity::canonical_type(t.trim())
        .ok_or_else(|| bad("unknown identifier type"))?;
    let v =
        etee_formats::identity::normalize_value(t, v.trim()).map_err(|e| bad(&e.to_string()))?;
    Ok((t.to_owned(), v))
}

fn summary(shown: usize, seen: usize, creator: Option<&(String, String)>) -> String {
    let keys = |n: usize| if n == 1 { "key" } else { "keys" };
    match creator {
        None if seen == 0 => "no KGSS key stored".to_owned(),
        None => format!("{seen} KGSS {} stored", keys(seen)),
        Some((t, v)) => format!(
            "{shown} of the {seen} stored KGSS {} created by {t}={v}",
            keys(seen)
        ),
    }
}

/// A reader condition in words when it is one of the vocabulary's (spec §5.1), else as
/// stored: namespace, name and the values any of which it accepts.
fn condition(c: &Credential) -> String {
    let values = c.values.join(" or ");
    let known = |what: &str| {
        if c.values.is_empty() {
            format!("any {what}")
        } else {
            format!("{what} {values}")
        }
    };
    match (c.namespace.as_str(), c.name.as_str()) {
        (vocabulary::CERTIFIED_NS, vocabulary::RECOGNISED_PHARMACY)
            if c.values.iter().all(|v| v == "true") =>
        {
            "recognised pharmacy".to_owned()
        }
        (vocabulary::CERTIFIED_NS, vocabulary::DOCTOR_NIHII11) => known("doctor"),
        (vocabulary::CERTIFIED_NS, vocabulary::DENTIST_NIHII11) => known("dentist"),
        (vocabulary::CERTIFIED_NS, vocabulary::MIDWIFE_NIHII11) => known("midwife"),
        (vocabulary::CERTIFIED_NS, vocabulary::NURSE_NIHII11) => known("nurse"),
        (vocabulary::CERTIFIED_NS, vocabulary::PHYSIOTHERAPIST_NIHII11) => known("physiotherapist"),
        (vocabulary::IDENTIFICATION_NS, vocabulary::PERSON_SSIN) => known("patient SSIN"),
        (ns, name) if c.values.is_empty() => format!("{ns} {name}"),
        (ns, name) => format!("{ns} {name} = {values}"),
    }
}

fn conditions(list: &[Credential]) -> String {
    if list.is_empty() {
        return "none".to_owned();
    }
    list.iter().map(condition).collect::<Vec<_>>().join("; ")
}

fn text_of(key: &KgssKey) -> String {
    let deletion = match key.deletion_strategy.as_deref() {
        Some(s) => format!("deletion strategy {s}"),
        None => "no deletion strategy".to_owned(),
    };
    format!(
        "{}  created {} by {}, {deletion}\n  readers: {}\n  excluded: {}",
        hex::encode(key.id),
        crate::inputs::rfc3339(key.created_at),
        etee_platform::etkdepot::describe(std::slice::from_ref(&key.creator)),
        conditions(&key.allowed_readers),
        conditions(&key.excluded_readers),
    )
}

fn json_of(key: &KgssKey) -> serde_json::Value {
    let credentials = |list: &[Credential]| -> Vec<serde_json::Value> {
        list.iter()
            .map(|c| json!({"namespace": c.namespace, "name": c.name, "values": c.values}))
            .collect()
    };
    json!({
        "id": hex::encode(key.id),
        "keyId": base64::engine::general_purpose::STANDARD.encode(key.id),
        "createdAt": crate::inputs::rfc3339(key.created_at),
        "creator": {
            "type": key.creator.id_type,
            "value": key.creator.value,
            "applicationId": key.creator.application_id,
        },
        "allowedReaders": credentials(&key.allowed_readers),
        "excludedReaders": credentials(&key.excluded_readers),
        "deletionStrategy": key.deletion_strategy,
        "wrappingKey": key.wrapping_key_label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etee_store::Identifier;

    fn key() -> KgssKey {
        KgssKey {
            id: [0xab; 16],
            wrapped_key: vec![0x5a; 40],
            wrapping_key_label: "kgss-wrap".into(),
            creator: Identifier::new("NIHII-HOSPITAL", "71000436", Some("KGSS")),
            allowed_readers: vec![
                Credential {
                    namespace: vocabulary::CERTIFIED_NS.into(),
                    name: vocabulary::RECOGNISED_PHARMACY.into(),
                    values: vec!["true".into()],
                },
                Credential {
                    namespace: vocabulary::IDENTIFICATION_NS.into(),
                    name: vocabulary::PERSON_SSIN.into(),
                    values: vec!["85073003328".into(), "85073003329".into()],
                },
            ],
            excluded_readers: vec![Credential {
                namespace: vocabulary::CERTIFIED_NS.into(),
                name: vocabulary::DOCTOR_NIHII11.into(),
                values: vec![],
            }],
            deletion_strategy: None,
            created_at: 1_765_000_000,
        }
    }

    #[test]
    fn a_key_reads_in_words_and_never_shows_its_wrapped_bytes() {
        let text = text_of(&key());
        assert_eq!(
            text,
            format!(
                "{}  created 2025-12-06T05:46:40Z by NIHII-HOSPITAL=71000436 (KGSS), no \
                 deletion strategy\n  readers: recognised pharmacy; patient SSIN \
                 85073003328 or 85073003329\n  excluded: any doctor",
                "ab".repeat(16)
            )
        );
        let json = json_of(&key()).to_string();
        for text in [text, json.clone()] {
            assert!(!text.contains("5a5a"), "wrapped bytes shown: {text}");
            assert!(!text.contains("WlpaWl"), "wrapped bytes shown: {text}");
        }
        let v = json_of(&key());
        assert_eq!(v["keyId"], "q6urq6urq6urq6urq6urqw==");
        assert_eq!(v["creator"]["applicationId"], "KGSS");
        assert_eq!(v["excludedReaders"][0]["values"], json!([]));
        assert_eq!(v["deletionStrategy"], serde_json::Value::Null);
    }

    #[test]
    fn unknown_conditions_are_shown_as_stored() {
        let c = Credential {
            namespace: "urn:x".into(),
            name: "urn:y".into(),
            values: vec!["1".into(), "2".into()],
        };
        assert_eq!(condition(&c), "urn:x urn:y = 1 or 2");
        let any = Credential {
            values: vec![],
            ..c
        };
        assert_eq!(condition(&any), "urn:x urn:y");
        // A recognised-pharmacy condition with another value than `true` is shown as is.
        let odd = Credential {
            namespace: vocabulary::CERTIFIED_NS.into(),
            name: vocabulary::RECOGNISED_PHARMACY.into(),
            values: vec!["false".into()],
        };
        assert!(
            condition(&odd).ends_with(":boolean = false"),
            "{}",
            condition(&odd)
        );
        assert_eq!(conditions(&[]), "none");
    }

    #[test]
    fn creators_are_matched_as_stored() {
        assert_eq!(
            parse_creator("nihii-pharmacy=27150201").unwrap(),
            ("NIHII-PHARMACY".to_owned(), "27150201".to_owned())
        );
        assert!(parse_creator("NIHII-PHARMACY").is_err());
        assert!(parse_creator("NOPE=1").is_err());
        assert_eq!(summary(0, 0, None), "no KGSS key stored");
        assert_eq!(summary(1, 1, None), "1 KGSS key stored");
        let c = ("CBE".to_owned(), "0809394427".to_owned());
        assert_eq!(
            summary(2, 5, Some(&c)),
            "2 of the 5 stored KGSS keys created by CBE=0809394427"
        );
    }
}
