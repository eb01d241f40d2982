//! The messages of the ETEE platform services (ETKDepot, KGSS, KeyDepot): SOAP/XML and
//! REST/JSON, parsed and written without I/O.
