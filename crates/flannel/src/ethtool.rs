//! Turning tx checksum offload off on the VXLAN device (the `SIOCETHTOOL` ioctl,
//! `ETHTOOL_STXCSUM`): with it on, some kernels send VXLAN packets whose inner
//! checksum is wrong after NAT (Service traffic masqueraded by the proxy) and the
//! receiver drops them (flannel issue 1279; flannel's and kops' fix is
//! `ethtool -K flannel.1 tx-checksum-ip-generic off`).

use std::os::fd::{AsRawFd, OwnedFd};

use crate::FlannelError;

const SIOCETHTOOL: u64 = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

fn call(sock: &OwnedFd, device: &str, cmd: u32, data: u32) -> Result<u32, FlannelError> {
    let bytes = device.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(FlannelError::Ethtool(format!(
            "bad interface name {device:?}"
        )));
    }
    let mut value = EthtoolValue { cmd, data };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast::<libc::c_char>();
    // SAFETY: SIOCETHTOOL reads/writes the ethtool_value that ifru_data points to,
    // which lives until the call returns; the socket fd is valid.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut ifr) };
    if r < 0 {
        return Err(FlannelError::Ethtool(format!(
            "{device}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(value.data)
}

/// Turns tx checksum offload of `device` on or off.
pub fn set_tx_checksum(sock: &OwnedFd, device: &str, on: bool) -> Result<(), FlannelError> {
    call(sock, device, ETHTOOL_STXCSUM, u32::from(on)).map(|_| ())
}

/// Whether tx checksum offload of `device` is on.
pub fn tx_checksum(sock: &OwnedFd, device: &str) -> Result<bool, FlannelError> {
    call(sock, device, ETHTOOL_GTXCSUM, 0).map(|v| v != 0)
}
