//! PKCS#11 backend (work in progress: see the issue "Key custody in the HSM").
#![forbid(unsafe_code)]
