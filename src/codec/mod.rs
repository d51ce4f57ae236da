//! STUN/TURN wire format (being written).
