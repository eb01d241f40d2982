//! ETKs: parsing and the official validation rules (spec §3).
