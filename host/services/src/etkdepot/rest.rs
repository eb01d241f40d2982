//! ETKDepot REST (spec §4.2, `GET /etee/v1/etks`): the `Etk` JSON object and RFC 7807
//! problem details.
//!
//! The real `Etk` definition of the eHealth swagger was not retrievable (§10), so
//! [`EtkJson`] is etee's own design: the holder's identifiers, the ETK itself (standard
//! base64 of the CMS bytes) and the validity of its encryption certificate.

use crate::error::Error;
use crate::json;
use serde::{Deserialize, Serialize};

/// Content type of [`Problem`] bodies.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// One identifier in JSON: `{"type","value","applicationIdentifier"?}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentifierJson {
    #[serde(rename = "type")]
    pub id_type: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_identifier: Option<String>,
}

impl From<&super::Identifier> for IdentifierJson {
    fn from(i: &super::Identifier) -> Self {
        IdentifierJson {
            id_type: i.id_type.clone(),
            value: i.value.clone(),
            application_identifier: i.application_id.clone(),
        }
    }
}

impl From<&IdentifierJson> for super::Identifier {
    fn from(i: &IdentifierJson) -> Self {
        super::Identifier {
            id_type: i.id_type.clone(),
            value: i.value.clone(),
            application_id: i.application_identifier.clone(),
        }
    }
}

/// One element of the `GET /etks` answer (an array of these).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtkJson {
    pub identifiers: Vec<IdentifierJson>,
    /// The ETK (CMS SignedData), standard base64.
    #[serde(with = "json::b64")]
    pub etk: Vec<u8>,
    /// Validity of the ETK, RFC 3339 (unix seconds in memory): when both its encryption
    /// and its authentication certificate are valid (the official check needs both).
    #[serde(with = "json::rfc3339")]
    pub not_before: i64,
    #[serde(with = "json::rfc3339")]
    pub not_after: i64,
}

impl EtkJson {
    /// Describes a parsed ETK: its holder identities and its validity (both certificates').
    pub fn from_etk(etk: &etee_formats::etk::Etk) -> Self {
        let (enc, auth) = (etk.encryption_cert(), etk.authentication_cert());
        EtkJson {
            identifiers: etk
                .identities()
                .into_iter()
                .map(|i| IdentifierJson {
                    id_type: i.id_type,
                    value: i.value,
                    application_identifier: i.application_id,
                })
                .collect(),
            etk: etk.der().to_vec(),
            not_before: enc.not_before().max(auth.not_before()),
            not_after: enc.not_after().min(auth.not_after()),
        }
    }

    /// Parses the `GET /etks` answer (a JSON array).
    pub fn parse_list(input: &[u8]) -> Result<Vec<Self>, Error> {
        json::parse(input)
    }

    /// Writes the `GET /etks` answer.
    pub fn list_to_json(list: &[Self]) -> Vec<u8> {
        json::to_vec(&list)
    }
}

/// RFC 7807 problem details.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// A URI reference; `about:blank` when absent.
    #[serde(rename = "type", default = "about_blank")]
    pub problem_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

fn about_blank() -> String {
    "about:blank".into()
}

impl Problem {
    /// A problem with `type` `about:blank` and the given status and title.
    pub fn new(status: u16, title: &str, detail: Option<String>) -> Self {
        Problem {
            problem_type: about_blank(),
            title: Some(title.to_owned()),
            status: Some(status),
            detail,
            instance: None,
        }
    }

    /// §4.2's 400 "Unknown search criteria".
    pub fn unknown_search_criteria(detail: Option<String>) -> Self {
        Problem::new(400, "Unknown search criteria", detail)
    }

    /// §4.2's 404.
    pub fn no_matching_etk() -> Self {
        Problem::new(
            404,
            "There exists no ETK matching your search criteria",
            None,
        )
    }

    /// The problem for a request that failed to parse.
    pub fn from_error(e: &Error) -> Self {
        Problem::new(e.http_status(), e.soa_code().message(), Some(e.to_string()))
    }

    pub fn to_json(&self) -> Vec<u8> {
        json::to_vec(self)
    }

    pub fn parse(input: &[u8]) -> Result<Self, Error> {
        json::parse(input)
    }
}
