//! Identifiers that come from outside: image ids in paths and refinement handles
//! (`mask_input`). Any bytes give a value or an error. (Values read back from the shared
//! store have their own target, `store_value`.)
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use samserve::core::engine::validate_image_id;
use samserve::core::mask_store::MaskStore;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if validate_image_id(&text).is_ok() {
        assert_eq!(text.len(), 64);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    // A handle is only ever looked up: an unknown one is a miss, a known one its own value.
    let store = MaskStore::new(1 << 16, Duration::from_secs(60));
    let handle = store.insert(&Arc::from("m"), &Arc::from("i"), vec![1.0; 4]);
    if text != handle {
        assert!(store.get(&text).is_none());
    }
});
