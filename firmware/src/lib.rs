//! The custody core (work in progress: see the issue "Key custody in the HSM").
#![no_std]
#![forbid(unsafe_code)]
