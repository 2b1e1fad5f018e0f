//! Reading a device's configuration space (virtio 1.2 section 4.2.2.2: the driver reads
//! it through the transport at any width and offset).

/// Copy `data.len()` bytes of `config` at `offset`; bytes past the end read as zero.
pub fn read_config(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}
