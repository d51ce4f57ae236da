//! ChannelData parse and in-place framing with arbitrary lengths and channel numbers.
#![no_main]
use ferroturn::codec::channel_data::{self, MAX_CHANNEL, MAX_CHANNEL_LEGACY};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = channel_data::classify(data.first().copied().unwrap_or(0));
    for max in [MAX_CHANNEL, MAX_CHANNEL_LEGACY] {
        if let Some((ch, payload)) = channel_data::parse(data, max) {
            assert!((channel_data::MIN_CHANNEL..=max).contains(&ch));
            let mut buf = vec![0u8; payload.len() + 8];
            buf[4..4 + payload.len()].copy_from_slice(payload);
            for stream in [false, true] {
                let r = channel_data::frame_in_place(&mut buf, 4, payload.len(), ch, stream);
                assert_eq!(channel_data::parse(&buf[r], max), Some((ch, payload)));
            }
        }
    }
});
