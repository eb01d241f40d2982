//! What an unseal leaves in freed memory: the buffers its BER readers fill with the inner
//! layer (decrypted content), and the blocks its digest worker hashes, must be wiped
//! before they are freed. A global allocator of this test binary looks, in every block
//! of those sizes freed, for a marker that only the plaintext holds, and counts the
//! blocks still carrying it.

mod support;

use etee_formats::cert::Certificate;
use etee_formats::cms::{seal, unseal_to_vec, Recipient, SealOptions, UnsealOptions};
use etee_formats::trust::TrustAnchors;
use etee_testpki::{InstitutionSpec, TestPki};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const MARKER: &[u8] = b"plaintext-that-must-not-outlive-its-buffer";

/// Whether frees are looked at (any thread's: the digest worker frees its blocks), and
/// how many still held the marker. One test in this binary.
static WATCHING: AtomicBool = AtomicBool::new(false);
static FOUND: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting the freed blocks (while watching) that still hold
/// [`MARKER`]: only blocks of the BER readers' buffers (8 and 64 KiB) and of the digest
/// worker (256 KiB) are looked at.
struct MarkerScan;

unsafe impl GlobalAlloc for MarkerScan {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let size = layout.size();
        if matches!(size, 8192 | 65536 | 262144) && WATCHING.load(Ordering::SeqCst) {
            let block = std::slice::from_raw_parts(ptr, size);
            if block.windows(MARKER.len()).any(|w| w == MARKER) {
                FOUND.fetch_add(1, Ordering::SeqCst);
            }
        }
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: MarkerScan = MarkerScan;

fn cert(x: &openssl::x509::X509) -> Certificate {
    Certificate::from_der(&x.to_der().unwrap()).unwrap()
}

/// A message of 3 MiB of marked plaintext (the inner reader's buffer grows to 64 KiB on
/// the way, and the inner digest moves to its worker past 1 MiB) opens, and no buffer
/// freed during the unseal still holds it.
#[test]
fn the_buffers_of_an_unseal_are_wiped_before_they_are_freed() {
    let pki = TestPki::generate("wiping").unwrap();
    let alice = pki
        .institution(&InstitutionSpec::new("NIHII-PHARMACY", "11111111", "Alice"))
        .unwrap();
    let bob = pki
        .institution(&InstitutionSpec::new("NIHII-PHARMACY", "27150201", "Bob"))
        .unwrap();
    let signer = support::auth_signer(&alice, vec![cert(&pki.root.cert)]);
    let plain = MARKER.repeat(3 * 1024 * 1024 / MARKER.len());
    let mut sealed = Vec::new();
    seal(
        &signer,
        &[Recipient::Certificate(cert(&bob.etk_cert))],
        None,
        &plain[..],
        &mut sealed,
        &SealOptions::default(),
    )
    .unwrap();
    let opts = UnsealOptions {
        anchors: TrustAnchors::new(vec![cert(&pki.root.cert)]),
        ..Default::default()
    };
    let ring = support::etk_ring(&bob);

    WATCHING.store(true, Ordering::SeqCst);
    let (u, content) = unseal_to_vec(&sealed, &ring, &opts).unwrap();
    WATCHING.store(false, Ordering::SeqCst);
    assert!(u.verdict.is_clean(), "{:?}", u.verdict);
    assert_eq!(content.as_deref(), Some(&plain[..]));
    assert_eq!(
        FOUND.load(Ordering::SeqCst),
        0,
        "freed reader buffers still holding plaintext"
    );
}
