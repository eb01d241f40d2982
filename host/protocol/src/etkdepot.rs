//! ETKDepot client (spec §4): one lookup, answered as the ETK, the list of matching
//! identifiers (several application ids: the caller chooses, see [`crate::etk_cache`]),
//! or "not found".
//!
//! Both flavours give the same [`EtkAnswer`], so the choice between SOAP (`POST
//! {base}/EtkDepot/v1`, success only when `Status/Code` is `200`) and REST (`GET
//! {base}/etee/v1/etks?...`, 404 for nothing) is a deployment setting. Answers are only
//! parsed here; whether an ETK may be used is [`crate::etk_cache`]'s decision.

use crate::error::{ProtocolError, Result};
use crate::http::{encode_component, HttpClient, Request, Response};
use crate::Flavour;
use etee_services::etkdepot::{
    EtkJson, EtkResult, GetEtkRequest, GetEtkResponse, Identifier, Problem, STATUS_OK,
};
use etee_services::soap::Fault;

/// The SOAP path, relative to the SOAP base.
pub const SOAP_PATH: &str = "/EtkDepot/v1";
/// The REST path, relative to the REST base.
pub const REST_PATH: &str = "/etee/v1/etks";

/// What ETKDepot answered to one lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EtkAnswer {
    /// Exactly one ETK (its CMS bytes, not yet checked).
    Found(Vec<u8>),
    /// Several ETKs of the holder (one per application id): the full identifiers of each,
    /// to look up one by one.
    Matching(Vec<Vec<Identifier>>),
    NotFound,
}

/// A client of ETKDepot. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EtkDepotClient {
    http: HttpClient,
    flavour: Flavour,
}

impl EtkDepotClient {
    /// A client speaking `flavour` to the endpoint of `http` (the SOAP base for
    /// [`Flavour::Soap`], the REST base for [`Flavour::Rest`]).
    pub fn new(http: HttpClient, flavour: Flavour) -> Self {
        Self { http, flavour }
    }

    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    /// Looks `id` up as given (ETKDepot pads values itself; an unknown type is the
    /// service's error: a SOAP fault or an HTTP 400 problem).
    pub async fn get_etk(&self, id: &Identifier) -> Result<EtkAnswer> {
        match self.flavour {
            Flavour::Soap => {
                let r = self
                    .http
                    .send(Request::soap(SOAP_PATH, soap_request(id)))
                    .await?;
                parse_soap_answer(&r)
            }
            Flavour::Rest => {
                let r = self.http.send(Request::get(rest_path(id))).await?;
                parse_rest_answer(&r)
            }
        }
    }
}

/// The `GetEtkRequest` envelope for one identifier.
pub fn soap_request(id: &Identifier) -> Vec<u8> {
    GetEtkRequest {
        identifiers: vec![id.clone()],
    }
    .to_xml()
}

/// `/etee/v1/etks?identifier=&type=[&applicationIdentifier=]`.
pub fn rest_path(id: &Identifier) -> String {
    let mut path = format!(
        "{REST_PATH}?identifier={}&type={}",
        encode_component(&id.value),
        encode_component(&id.id_type)
    );
    if let Some(app) = &id.application_id {
        path.push_str("&applicationIdentifier=");
        path.push_str(&encode_component(app));
    }
    path
}

/// A SOAP fault as an error (`code` is the SOA code when there is one).
pub(crate) fn fault_error(fault: Fault) -> ProtocolError {
    let code = fault
        .detail
        .as_ref()
        .map(|d| d.code.clone())
        .unwrap_or_else(|| format!("{:?}", fault.fault_code));
    let message = fault
        .detail
        .as_ref()
        .and_then(|d| d.messages.first().map(|m| m.text.clone()))
        .unwrap_or(fault.fault_string);
    ProtocolError::SoapFault { code, message }
}

/// A non-success HTTP answer as an error, with its problem if it carries one.
pub(crate) fn http_error(r: &Response) -> ProtocolError {
    let problem = r.is_json().then(|| Problem::parse(&r.body).ok()).flatten();
    ProtocolError::Http {
        status: r.status,
        problem,
    }
}

/// Reads a SOAP answer (pure).
pub fn parse_soap_answer(r: &Response) -> Result<EtkAnswer> {
    if let Some(fault) = r.fault() {
        return Err(fault_error(fault));
    }
    if r.status != 200 {
        return Err(http_error(r));
    }
    let answer = GetEtkResponse::parse(&r.body)
        .map_err(|e| ProtocolError::Malformed(format!("GetEtkResponse: {e}")))?;
    let errors = match &answer.result {
        EtkResult::Errors(errors) => errors.as_slice(),
        _ => &[],
    };
    if answer.status.code.trim() != STATUS_OK {
        // The connector reads any other status as "no ETK"; here it is an error with the
        // service's reason: a failing depot is no evidence that the recipient has no ETK
        // (docs/deviations.md row 24).
        let message = answer
            .status
            .messages
            .first()
            .map(|m| m.text.clone())
            .unwrap_or_default();
        return Err(ProtocolError::EtkDepot {
            code: answer.status.code,
            message,
        });
    }
    match answer.result {
        EtkResult::Etk(der) => Ok(EtkAnswer::Found(der)),
        EtkResult::MatchingEtk(m) => Ok(EtkAnswer::Matching(
            m.into_iter().map(|m| m.identifiers).collect(),
        )),
        EtkResult::None => Ok(EtkAnswer::NotFound),
        EtkResult::Errors(_) => match errors.iter().find(|e| !e.code.contains("NOT_FOUND")) {
            None => Ok(EtkAnswer::NotFound),
            Some(e) => Err(ProtocolError::EtkDepot {
                code: e.code.clone(),
                message: e.message.clone(),
            }),
        },
    }
}

/// Reads a REST answer (pure).
pub fn parse_rest_answer(r: &Response) -> Result<EtkAnswer> {
    match r.status {
        200 => {}
        404 => return Ok(EtkAnswer::NotFound),
        _ => return Err(http_error(r)),
    }
    let mut list = EtkJson::parse_list(&r.body)
        .map_err(|e| ProtocolError::Malformed(format!("ETK list: {e}")))?;
    Ok(match list.len() {
        0 => EtkAnswer::NotFound,
        1 => EtkAnswer::Found(list.remove(0).etk),
        _ => EtkAnswer::Matching(
            list.iter()
                .map(|e| e.identifiers.iter().map(Identifier::from).collect())
                .collect(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etee_services::etkdepot::{MatchingEtk, Status};
    use etee_services::soap::SoaCode;

    fn answer(status: u16, ct: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type: ct.into(),
            retry_after: None,
            body: body.into(),
        }
    }

    #[test]
    fn rest_paths_are_encoded() {
        assert_eq!(
            rest_path(&Identifier::new("CBE", "0809394427", Some("KGSS"))),
            "/etee/v1/etks?identifier=0809394427&type=CBE&applicationIdentifier=KGSS"
        );
        // An empty application id is sent, empty: the ETK without application id.
        assert_eq!(
            rest_path(&Identifier::new("CBE", "0406798006", Some(""))),
            "/etee/v1/etks?identifier=0406798006&type=CBE&applicationIdentifier="
        );
        assert_eq!(
            rest_path(&Identifier::new("X Y", "1&2", None)),
            "/etee/v1/etks?identifier=1%262&type=X%20Y"
        );
    }

    #[test]
    fn soap_answers() {
        let id = Identifier::new("CBE", "0809394427", None);
        let found = GetEtkResponse::found(vec![id.clone()], vec![0x30, 0x80, 0, 0]).to_xml();
        assert_eq!(
            parse_soap_answer(&answer(200, "text/xml", found)).unwrap(),
            EtkAnswer::Found(vec![0x30, 0x80, 0, 0])
        );
        let matching = GetEtkResponse {
            id: None,
            status: Status::ok(),
            given_search_criteria: Some(vec![id.clone()]),
            result: EtkResult::MatchingEtk(vec![MatchingEtk {
                identifiers: vec![id.clone()],
            }]),
        };
        assert_eq!(
            parse_soap_answer(&answer(200, "text/xml", matching.to_xml())).unwrap(),
            EtkAnswer::Matching(vec![vec![id.clone()]])
        );
        // A MatchingEtk entry of an ETK without application id keeps its empty one.
        let default = Identifier::new("CBE", "0406798006", Some(""));
        let app = Identifier::new("CBE", "0406798006", Some("APP-A"));
        let two = GetEtkResponse {
            id: None,
            status: Status::ok(),
            given_search_criteria: Some(vec![Identifier::new("CBE", "0406798006", None)]),
            result: EtkResult::MatchingEtk(vec![
                MatchingEtk {
                    identifiers: vec![default.clone()],
                },
                MatchingEtk {
                    identifiers: vec![app.clone()],
                },
            ]),
        };
        assert_eq!(
            parse_soap_answer(&answer(200, "text/xml", two.to_xml())).unwrap(),
            EtkAnswer::Matching(vec![vec![default], vec![app]])
        );
        let fault = Fault::from_code(SoaCode::ContentValidation, None).to_xml();
        assert!(matches!(
            parse_soap_answer(&answer(500, "text/xml", fault)),
            Err(ProtocolError::SoapFault { code, .. }) if code == "SOA-03007"
        ));
        let mut not_ok = matching;
        not_ok.status.code = "400".into();
        assert!(matches!(
            parse_soap_answer(&answer(200, "text/xml", not_ok.to_xml())),
            Err(ProtocolError::EtkDepot { code, .. }) if code == "400"
        ));
        for hostile in [&b""[..], b"<x/>", b"\xff\xfe", b"<!DOCTYPE a []><a/>"] {
            assert!(matches!(
                parse_soap_answer(&answer(200, "text/xml", hostile.to_vec())),
                Err(ProtocolError::Malformed(_))
            ));
        }
    }

    #[test]
    fn rest_answers() {
        assert_eq!(
            parse_rest_answer(&answer(404, "application/problem+json", b"{}".to_vec())).unwrap(),
            EtkAnswer::NotFound
        );
        let problem = Problem::unknown_search_criteria(Some("type".into())).to_json();
        match parse_rest_answer(&answer(400, "application/problem+json", problem)) {
            Err(ProtocolError::Http {
                status: 400,
                problem: Some(p),
            }) => assert_eq!(p.title.as_deref(), Some("Unknown search criteria")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_rest_answer(&answer(200, "application/json", b"[]".to_vec())).unwrap(),
            EtkAnswer::NotFound
        );
        assert!(matches!(
            parse_rest_answer(&answer(200, "application/json", b"[{\"x\":1}]".to_vec())),
            Err(ProtocolError::Malformed(_))
        ));
    }
}
