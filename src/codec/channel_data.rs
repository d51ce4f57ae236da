//! ChannelData (RFC 8656 §12.4): the hand-written fast path. A 4-byte header — channel number
//! and length — in front of the application data; nothing to allocate, nothing to copy.

/// RFC 8656 §12: channel numbers 0x4000 through 0x4FFF may be bound.
pub const MIN_CHANNEL: u16 = 0x4000;
pub const MAX_CHANNEL: u16 = 0x4FFF;
/// RFC 5766 §11 allowed up to 0x7FFF; kept behind the `legacy-channel-numbers` option.
pub const MAX_CHANNEL_LEGACY: u16 = 0x7FFF;
pub const HEADER_LEN: usize = 4;

/// What the first byte of a datagram on a TURN listener says it is (RFC 7983 §7, RFC 8656 §12).
/// With legacy channel numbers, 0x50-0x7F are ChannelData too; the caller decides via `parse`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// 0..=3: STUN.
    Stun,
    /// 64..=79 (0x40-0x4F): ChannelData.
    ChannelData,
    /// Anything else (DTLS, RTP, garbage): not for a TURN server; drop.
    Other,
}

#[inline(always)]
pub fn classify(first: u8) -> Kind {
    match first {
        0..=3 => Kind::Stun,
        0x40..=0x7f => Kind::ChannelData,
        _ => Kind::Other,
    }
}

/// Parse a ChannelData message: `(channel, payload)`. Over UDP the datagram may carry padding
/// past the stated length (§12.5), which is ignored; a length past the end is invalid.
#[inline(always)]
pub fn parse(b: &[u8], max_channel: u16) -> Option<(u16, &[u8])> {
    if b.len() < HEADER_LEN {
        return None;
    }
    let ch = u16::from_be_bytes([b[0], b[1]]);
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    if !(MIN_CHANNEL..=max_channel).contains(&ch) || b.len() - HEADER_LEN < len {
        return None;
    }
    Some((ch, &b[HEADER_LEN..HEADER_LEN + len]))
}

/// Write the ChannelData header in front of a payload already in place: `buf[start..start+len]`
/// holds the payload and `start >= 4`. Returns the range of the whole message. Over stream
/// transports the message is padded to a multiple of 4 (§12.5), which needs `pad` (0-3) bytes
/// of tail room; pass `pad_for_stream` only there.
#[inline(always)]
pub fn frame_in_place(
    buf: &mut [u8],
    start: usize,
    len: usize,
    channel: u16,
    pad_for_stream: bool,
) -> std::ops::Range<usize> {
    debug_assert!(start >= HEADER_LEN);
    let h = start - HEADER_LEN;
    buf[h..h + 2].copy_from_slice(&channel.to_be_bytes());
    buf[h + 2..h + 4].copy_from_slice(&(len as u16).to_be_bytes());
    let mut end = start + len;
    if pad_for_stream {
        let pad = (4 - len % 4) % 4;
        buf[end..end + pad].fill(0);
        end += pad;
    }
    h..end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_first_byte() {
        assert_eq!(classify(0x00), Kind::Stun);
        assert_eq!(classify(0x01), Kind::Stun);
        assert_eq!(classify(0x40), Kind::ChannelData);
        assert_eq!(classify(0x4f), Kind::ChannelData);
        assert_eq!(classify(0x7f), Kind::ChannelData);
        assert_eq!(classify(0x80), Kind::Other);
        assert_eq!(classify(0x16), Kind::Other); // DTLS
        assert_eq!(classify(0x80), Kind::Other); // RTP
    }

    #[test]
    fn parse_and_frame() {
        let mut buf = [0u8; 16];
        buf[4..9].copy_from_slice(b"hello");
        let r = frame_in_place(&mut buf, 4, 5, 0x4001, true);
        assert_eq!(r, 0..12);
        assert_eq!(parse(&buf[r], MAX_CHANNEL), Some((0x4001, &b"hello"[..])));
        let r = frame_in_place(&mut buf, 4, 5, 0x4fff, false);
        assert_eq!(r, 0..9);
        assert_eq!(parse(&buf[r], MAX_CHANNEL), Some((0x4fff, &b"hello"[..])));
    }

    #[test]
    fn parse_rejects() {
        assert_eq!(parse(&[0x40, 0, 0], MAX_CHANNEL), None);
        assert_eq!(parse(&[0x50, 0, 0, 0], MAX_CHANNEL), None); // reserved by RFC 8656
        assert_eq!(
            parse(&[0x50, 0, 0, 0], MAX_CHANNEL_LEGACY),
            Some((0x5000, &[][..]))
        );
        assert_eq!(parse(&[0x80, 0, 0, 0], MAX_CHANNEL_LEGACY), None);
        assert_eq!(parse(&[0x3f, 0xff, 0, 0], MAX_CHANNEL), None);
        assert_eq!(parse(&[0x40, 0, 0, 5, 1, 2], MAX_CHANNEL), None); // length past the end
        assert_eq!(
            parse(&[0x40, 0, 0, 0], MAX_CHANNEL),
            Some((0x4000, &[][..]))
        );
        assert_eq!(
            parse(&[0x40, 0, 0, 1, 9, 0, 0, 0], MAX_CHANNEL),
            Some((0x4000, &[9][..]))
        );
    }
}
