//! Storage for the platform services (ETKDepot, KGSS, KeyDepot): one trait, two backends.
