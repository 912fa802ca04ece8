#![no_main]
//! Raw bytes into the peer protocol: as a stream of frames (length, CRC32C, payload) and as a
//! bare payload (so mutations reach the message decoder behind the checksum). Decoding never
//! panics, never allocates past the input, and whatever decodes re-encodes to a frame that
//! decodes to the same message.
use corecache_core::proto::peer::{decode_frame, decode_message, encode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A stream: consume frames until one is incomplete or bad.
    let mut rest = data;
    while let Ok(Some((_, used))) = decode_frame(rest) {
        assert!(used > 0 && used <= rest.len());
        rest = &rest[used..];
    }
    // A payload: round trip.
    if let Ok(msg) = decode_message(data) {
        let mut frame = Vec::new();
        encode_frame(&msg, &mut frame);
        match decode_frame(&frame) {
            Ok(Some((again, used))) => {
                assert_eq!(used, frame.len());
                assert_eq!(again, msg);
            }
            other => panic!("re-encoded {msg:?} did not decode: {other:?}"),
        }
    }
});
