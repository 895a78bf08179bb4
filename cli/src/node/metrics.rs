//! What the node measures of itself for `atoll status`.

/// AT_PAGESZ in the auxiliary vector.
const AT_PAGESZ: u64 = 6;
/// The page size assumed when the auxiliary vector does not say.
const PAGE_BYTES_DEFAULT: u64 = 4096;

/// The process's resident memory in bytes, from `/proc/self/statm` (Linux); `None` when it
/// cannot be read.
pub fn resident_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(page_bytes())
}

/// The kernel's page size (4 KiB, or 16/64 KiB on some aarch64 kernels), from the auxiliary
/// vector: the CLI stays free of `unsafe` (no `sysconf`).
fn page_bytes() -> u64 {
    std::fs::read("/proc/self/auxv")
        .ok()
        .and_then(|bytes| auxv_value(&bytes, AT_PAGESZ))
        .filter(|bytes| bytes.is_power_of_two())
        .unwrap_or(PAGE_BYTES_DEFAULT)
}

/// The value of `key` in an auxiliary vector of native-width, native-endian (key, value) pairs.
fn auxv_value(bytes: &[u8], key: u64) -> Option<u64> {
    let width = std::mem::size_of::<usize>();
    let word = |b: &[u8]| -> u64 {
        match b.len() {
            8 => u64::from_ne_bytes(b.try_into().unwrap_or_default()),
            _ => u64::from(u32::from_ne_bytes(b.try_into().unwrap_or_default())),
        }
    };
    bytes.chunks_exact(2 * width).find_map(|pair| {
        let (k, v) = (word(&pair[..width]), word(&pair[width..]));
        (k == key).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_resident_memory_is_read_and_plausible() {
        let bytes = resident_memory_bytes().expect("Linux has /proc/self/statm");
        assert!(bytes > 1 << 20 && bytes < 1 << 40, "{bytes}");
        assert!(page_bytes() >= 4096);
    }
}
