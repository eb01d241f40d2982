//! eHealth keystores (`.p12`) and the software key provider.
