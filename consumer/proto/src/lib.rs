//! # memplex-proto: the delivery protocol, version 2
//!
//! How a placed frame reaches a consumer process without a copy (docs/delivery.md has
//! the whole story and the byte layout, which this crate is the reference for):
//!
//! ```text
//!  memplex (host)                               consumer process
//!  listens on a SOCK_SEQPACKET socket   <----   Hello { version, name, wake, features }
//!  Welcome, Channel per queue (memfd    ---->   maps each channel's rings
//!    with the rings + an eventfd)
//!  Region (fd of provider memory,       ---->   maps it read-only, once
//!    any time during the session)
//!  completion ring: 16-byte descriptors ---->   reads head and frags in place
//!  metadata ring (if asked for)         ---->   seq, times, lengths, flow, checksum
//!  refill ring: buffer tokens           <----   gives buffers back, in batches
//! ```
//!
//! - [`msg`]: the socket messages, fixed little-endian layouts.
//! - [`layout`]: the channel memory (header, ring headers) and the ring entries.
//! - [`ring`]: the single-producer single-consumer ring over shared memory, AF_XDP style,
//!   with the checks a side needs when it cannot trust the other.
#![deny(missing_docs)]

pub mod layout;
pub mod msg;
pub mod ring;

/// The protocol version a Hello names and a Welcome confirms.
pub const VERSION: u32 = 2;
