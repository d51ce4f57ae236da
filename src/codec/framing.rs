//! Message boundaries on stream transports (TCP, TLS): RFC 8656 §12.5 and RFC 8489 §6.2.2.
//! STUN messages carry their own length; ChannelData messages are padded to a multiple of four
//! bytes on streams. The first byte tells which (RFC 7983 §7).
use super::channel_data::{self, Kind};
use super::stun::HEADER_LEN;

/// Largest message a stream may carry: a STUN header plus a 16-bit length (multiple of 4).
pub const MAX_FRAME: usize = HEADER_LEN + 0xfffc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Neither STUN nor ChannelData: the stream is out of sync or not TURN; close it.
    NotTurn,
    /// A STUN length that is not a multiple of 4 (RFC 8489 §5).
    BadLength,
}

/// The length of the first complete message in `buf`: `Ok(Some(n))`, `Ok(None)` if more bytes
/// are needed, or an error if the stream cannot be TURN. `max_channel` is the highest channel
/// number the server accepts: a ChannelData header outside 0x4000..=max_channel means the
/// stream is not TURN.
pub fn frame_len(buf: &[u8], max_channel: u16) -> Result<Option<usize>, FrameError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let need = match channel_data::classify(first) {
        Kind::Stun => {
            if buf.len() < 4 {
                return Ok(None);
            }
            let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
            if len % 4 != 0 {
                return Err(FrameError::BadLength);
            }
            HEADER_LEN + len
        }
        Kind::ChannelData => {
            if buf.len() < 2 {
                return Ok(None);
            }
            if u16::from_be_bytes([buf[0], buf[1]]) > max_channel {
                return Err(FrameError::NotTurn);
            }
            if buf.len() < 4 {
                return Ok(None);
            }
            let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
            channel_data::HEADER_LEN + ((len + 3) & !3)
        }
        Kind::Other => return Err(FrameError::NotTurn),
    };
    Ok((buf.len() >= need).then_some(need))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::channel_data::{MAX_CHANNEL, MAX_CHANNEL_LEGACY};

    #[test]
    fn stun_and_channel_data_frames() {
        let mut s = vec![0x00, 0x01, 0x00, 0x04];
        s.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        s.extend_from_slice(&[0u8; 12]);
        assert_eq!(frame_len(&s, MAX_CHANNEL), Ok(None));
        s.extend_from_slice(&[0u8; 4]);
        assert_eq!(frame_len(&s, MAX_CHANNEL), Ok(Some(24)));
        // ChannelData with 5 bytes of payload takes 4 + 8 on a stream.
        let mut c = vec![0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0];
        assert_eq!(frame_len(&c, MAX_CHANNEL), Ok(None));
        c.push(0);
        assert_eq!(frame_len(&c, MAX_CHANNEL), Ok(Some(12)));
        c.extend_from_slice(&s);
        assert_eq!(
            frame_len(&c, MAX_CHANNEL),
            Ok(Some(12)),
            "only the first message"
        );
        assert_eq!(frame_len(&[0x40, 0], MAX_CHANNEL), Ok(None));
        assert_eq!(frame_len(&[], MAX_CHANNEL), Ok(None));
    }

    #[test]
    fn garbage_is_refused() {
        // "GE" is channel 0x4745: framing alone cannot tell an HTTP request from ChannelData;
        // the runtime closes a stream whose first message is not STUN.
        assert_eq!(frame_len(b"GET / HTTP/1.1\r\n", MAX_CHANNEL), Ok(None));
        assert_eq!(
            frame_len(b"PUT / HTTP/1.1\r\n", MAX_CHANNEL),
            Err(FrameError::NotTurn)
        );
        assert_eq!(
            frame_len(&[0x50, 0, 0, 0], MAX_CHANNEL),
            Err(FrameError::NotTurn)
        );
        // With legacy channel numbers 0x5000 is ChannelData.
        assert_eq!(frame_len(&[0x50, 0, 0, 0], MAX_CHANNEL_LEGACY), Ok(Some(4)));
        assert_eq!(
            frame_len(&[0x16, 3, 1], MAX_CHANNEL),
            Err(FrameError::NotTurn)
        ); // a TLS record on a TCP port
        assert_eq!(
            frame_len(&[0, 1, 0, 5], MAX_CHANNEL),
            Err(FrameError::BadLength)
        );
    }
}
