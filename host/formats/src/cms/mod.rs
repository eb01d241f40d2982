//! CMS sealing and unsealing (spec §1, §2).
