//! Every bound of the custody core, in one place.
//!
//! The core allocates nothing: each buffer is a fixed-size array or a `heapless::Vec` whose
//! capacity comes from here. Changing a number here changes the wire format's limits, so the
//! frame sizes derived below are pinned by a test (`tests/frame_sizes.rs`); a change must be
//! deliberate and go with a [`PROTOCOL_VERSION`] bump when it makes old peers reject new frames.

/// Version of the frame format. The first two bytes of every frame (big-endian), before
/// anything else, so that a peer of another version is recognised whatever follows.
pub const PROTOCOL_VERSION: u16 = 2;

/// Longest key id: a PKCS#11 `CKA_ID` or label as the host names the key. An ETK key is
/// named by its certificate's decimal serial (RFC 5280: up to 20 octets, 49 digits); version
/// 1 of the protocol allowed 32 bytes, which real ETKs exceed (e.g. 39 digits).
pub const MAX_KEY_ID_LEN: usize = 64;

/// Longest client id: the name under which the host authenticated the calling application.
pub const MAX_CLIENT_ID_LEN: usize = 32;

/// Longest user PIN accepted by `Unlock`. PKCS#11 tokens commonly allow up to 255; we keep
/// the frame small and reject longer PINs as malformed frames (they are never tried).
pub const MAX_PIN_LEN: usize = 64;

/// Length of a SHA-256 digest: what `SignPssSha256` signs and what audit records hash.
pub const DIGEST_LEN: usize = 32;

/// Largest RSA modulus handled, in bytes (RSA-4096). A PKCS#1 v1.5 key-transport blob and an
/// RSA signature are exactly the modulus length, so this bounds both.
pub const MAX_RSA_LEN: usize = 512;

/// Largest key-transport blob accepted by `DecryptPkcs1v15`.
pub const MAX_BLOB_LEN: usize = MAX_RSA_LEN;

/// Largest signature returned by `SignPssSha256`.
pub const MAX_SIGNATURE_LEN: usize = MAX_RSA_LEN;

/// Largest plaintext returned by `DecryptPkcs1v15` (PKCS#1 v1.5 leaves at most k − 11 bytes;
/// we round up to the modulus length rather than tie the buffer to the padding rule).
pub const MAX_PLAINTEXT_LEN: usize = MAX_RSA_LEN;

/// Shortest secret `WrapSecret` takes: an AES-128 key. RFC 3394 needs at least two 64-bit
/// blocks.
pub const MIN_SECRET_LEN: usize = 16;

/// Longest secret `WrapSecret` takes and `UnwrapSecret` returns: an AES-256 key.
pub const MAX_SECRET_LEN: usize = 32;

/// Bytes AES key wrap (RFC 3394) adds: the 64-bit integrity check value.
pub const KEY_WRAP_OVERHEAD: usize = 8;

/// Longest wrapped secret (`UnwrapSecret` input, `WrapSecret` output).
pub const MAX_WRAPPED_LEN: usize = MAX_SECRET_LEN + KEY_WRAP_OVERHEAD;

/// Whether `len` is a secret length `WrapSecret` takes: 16, 24 or 32 bytes (AES-128, -192,
/// -256 keys; RFC 3394 works on whole 64-bit blocks).
pub const fn secret_len_ok(len: usize) -> bool {
    len >= MIN_SECRET_LEN && len <= MAX_SECRET_LEN && len.is_multiple_of(KEY_WRAP_OVERHEAD)
}

/// Size of the policy table (one rule per client and key).
pub const MAX_POLICY_RULES: usize = 32;

/// Longest secret split into M-of-N shares ([`crate::shares`]): a PIN of up to 64 bytes.
pub const MAX_SHARED_SECRET_LEN: usize = 64;

/// Most shares one split makes (and so the largest quorum).
pub const MAX_SHARES: usize = 16;

/// Consecutive wrong PINs after which `Unlock` is refused until an administrator resets the
/// counter. Keep it below the token's own retry limit, so that a guessing client locks out
/// the custody core, not the HSM's user PIN.
pub const MAX_PIN_ATTEMPTS: u8 = 5;

/// Bytes of the frame header: protocol version (2, big-endian) and operation id (1).
pub const FRAME_HEADER_LEN: usize = 3;

// --- Derived sizes (postcard encodings) ------------------------------------------------------

/// Bytes of a postcard varint holding `n` (7 bits a byte).
pub const fn varint_len(n: u64) -> usize {
    let mut len = 1;
    let mut rest = n >> 7;
    while rest != 0 {
        len += 1;
        rest >>= 7;
    }
    len
}

/// Bytes of a postcard byte string of up to `max` bytes (varint length, then the bytes).
pub const fn bytes_len(max: usize) -> usize {
    varint_len(max as u64) + max
}

/// Largest postcard `u64`.
pub const MAX_U64_LEN: usize = varint_len(u64::MAX);

/// Largest encoded `Option<ClientId>` / `Option<KeyId>` (tag byte, then the id).
const MAX_OPT_CLIENT_LEN: usize = 1 + bytes_len(MAX_CLIENT_ID_LEN);
const MAX_OPT_KEY_LEN: usize = 1 + bytes_len(MAX_KEY_ID_LEN);

/// Largest encoded wire `Error`: `Token { function, ckr }` with a 10-byte CKR, or
/// `RateLimited { retry_after_ms }`; the enum tag and `function` are single bytes.
pub const MAX_ERROR_LEN: usize = 1 + 1 + MAX_U64_LEN;

/// Largest request frame: `DecryptPkcs1v15` with the longest client id, key id and blob
/// (`WrapSecret` and `UnwrapSecret` carry at most [`MAX_WRAPPED_LEN`] bytes: smaller).
pub const MAX_REQUEST_FRAME: usize = FRAME_HEADER_LEN
    + bytes_len(MAX_CLIENT_ID_LEN)
    + bytes_len(MAX_KEY_ID_LEN)
    + bytes_len(MAX_BLOB_LEN);

/// Largest response frame: a signature or a plaintext of the longest length.
pub const MAX_RESPONSE_FRAME: usize = FRAME_HEADER_LEN + bytes_len(MAX_RSA_LEN);

/// Largest encoding of the hashed fields of an audit record (everything but `prev_hash`).
pub const MAX_AUDIT_FIELDS_LEN: usize = MAX_U64_LEN // sequence
    + MAX_U64_LEN // time
    + MAX_OPT_CLIENT_LEN
    + 1 // operation
    + MAX_OPT_KEY_LEN
    + DIGEST_LEN // input digest
    + 1 + MAX_ERROR_LEN; // outcome

/// Largest encoded audit record (hashed fields, then the previous record's hash).
pub const MAX_AUDIT_RECORD_LEN: usize = MAX_AUDIT_FIELDS_LEN + DIGEST_LEN;
