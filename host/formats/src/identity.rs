//! Identifiers parsed from eHealth certificate DNs (spec §3.3).
