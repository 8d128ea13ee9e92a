//! TAP devices.

use super::{DeviceError, Poll, RxQueue};
use std::time::Duration;

/// One TAP queue.
pub struct TapQueue {
    name: String,
}

/// Opens `queues` queues of TAP device `name`.
pub fn open(name: &str, _queues: u16, _gso: bool) -> Result<Vec<TapQueue>, DeviceError> {
    Err(DeviceError::open(
        format!("tap {name}"),
        std::io::Error::new(std::io::ErrorKind::Unsupported, "not built yet"),
    ))
}

impl RxQueue for TapQueue {
    fn poll(
        &mut self,
        _: usize,
        _: Duration,
        _: &mut dyn FnMut(&[u8]),
    ) -> Result<Poll, DeviceError> {
        Ok(Poll::End)
    }
    fn name(&self) -> &str {
        &self.name
    }
}
