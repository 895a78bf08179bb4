//! The first 100 bytes of a SQLite database file, read without SQLite, to check that a dump is
//! a whole, consistent database before it is written out. Integers are big-endian.
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..16 | `"SQLite format 3\0"` |
//! | 16..18 | page size (1 means 65536) |
//! | 24..28 | file change counter |
//! | 28..32 | database size in pages (valid when bytes 92..96 equal the change counter) |
//! | 92..96 | version-valid-for: the change counter the size was written with |

use std::fmt;

/// The magic string every SQLite database starts with.
pub const MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Bytes of the database header.
pub const HEADER_BYTES: usize = 100;

fn read_u32_be(bytes: &[u8], offset: usize) -> u32 {
    u32::from_be_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

/// What the header says about an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatabaseInfo {
    /// Page size in bytes.
    pub page_bytes: u32,
    /// Pages in the image (its length over the page size).
    pub pages: u64,
}

/// Why an image is not a consistent database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// Shorter than the header.
    Short(usize),
    /// The first 16 bytes are not the magic string.
    Magic,
    /// A page size that is not a power of two in 512..=65536.
    PageSize(u32),
    /// The length is not a whole number of pages.
    NotWholePages {
        /// Image length.
        bytes: usize,
        /// Page size.
        page_bytes: u32,
    },
    /// The header's (valid) page count differs from the image length.
    PageCount {
        /// What the header says.
        header: u32,
        /// What the image holds.
        image: u64,
    },
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Short(bytes) => {
                write!(f, "{bytes} bytes is shorter than a database header")
            }
            HeaderError::Magic => write!(f, "it does not start with \"SQLite format 3\""),
            HeaderError::PageSize(size) => write!(f, "invalid page size {size}"),
            HeaderError::NotWholePages { bytes, page_bytes } => write!(
                f,
                "{bytes} bytes is not a whole number of {page_bytes}-byte pages"
            ),
            HeaderError::PageCount { header, image } => write!(
                f,
                "the header counts {header} pages but the image holds {image}"
            ),
        }
    }
}

impl std::error::Error for HeaderError {}

/// Checks that `image` is a whole SQLite database: magic, page size, whole pages, and the
/// header's page count (when SQLite marked it valid) equal to the image's.
pub fn inspect(image: &[u8]) -> Result<DatabaseInfo, HeaderError> {
    inspect_header(image, image.len() as u64)
}

/// [`inspect`] of a file of `length` bytes that starts with `header` (at least its first 100
/// bytes): the same checks, without the whole image in memory.
pub fn inspect_header(header: &[u8], length: u64) -> Result<DatabaseInfo, HeaderError> {
    let short = |bytes: u64| HeaderError::Short(usize::try_from(bytes).unwrap_or(usize::MAX));
    if header.len() < HEADER_BYTES || length < HEADER_BYTES as u64 {
        return Err(short(length.min(header.len() as u64)));
    }
    if &header[..16] != MAGIC {
        return Err(HeaderError::Magic);
    }
    let page_bytes = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536,
        size => u32::from(size),
    };
    if !page_bytes.is_power_of_two() || !(512..=65_536).contains(&page_bytes) {
        return Err(HeaderError::PageSize(page_bytes));
    }
    if !length.is_multiple_of(u64::from(page_bytes)) {
        return Err(HeaderError::NotWholePages {
            bytes: usize::try_from(length).unwrap_or(usize::MAX),
            page_bytes,
        });
    }
    let pages = length / u64::from(page_bytes);
    let change_counter = read_u32_be(header, 24);
    let header_pages = read_u32_be(header, 28);
    let valid_for = read_u32_be(header, 92);
    if header_pages != 0 && valid_for == change_counter && u64::from(header_pages) != pages {
        return Err(HeaderError::PageCount {
            header: header_pages,
            image: pages,
        });
    }
    Ok(DatabaseInfo { page_bytes, pages })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(page_bytes: u16, pages: u32, header_pages: u32) -> Vec<u8> {
        let size = if page_bytes == 1 {
            65_536
        } else {
            usize::from(page_bytes)
        };
        let mut image = vec![0u8; size * pages as usize];
        image[..16].copy_from_slice(MAGIC);
        image[16..18].copy_from_slice(&page_bytes.to_be_bytes());
        image[24..28].copy_from_slice(&7u32.to_be_bytes());
        image[28..32].copy_from_slice(&header_pages.to_be_bytes());
        image[92..96].copy_from_slice(&7u32.to_be_bytes());
        image
    }

    #[test]
    fn test_inspect_accepts_a_consistent_image() {
        let info = inspect(&image(4096, 3, 3)).unwrap();
        assert_eq!(
            info,
            DatabaseInfo {
                page_bytes: 4096,
                pages: 3
            }
        );
        assert_eq!(inspect(&image(1, 1, 1)).unwrap().page_bytes, 65_536);
    }

    #[test]
    fn test_inspect_rejects_what_is_not_a_whole_database() {
        assert_eq!(inspect(&[0; 10]), Err(HeaderError::Short(10)));
        let mut bad_magic = image(4096, 1, 1);
        bad_magic[0] = b's';
        assert_eq!(inspect(&bad_magic), Err(HeaderError::Magic));
        assert_eq!(
            inspect(&image(1000, 1, 1)),
            Err(HeaderError::PageSize(1000))
        );
        let mut torn = image(4096, 2, 2);
        torn.truncate(4096 + 100);
        assert!(matches!(
            inspect(&torn),
            Err(HeaderError::NotWholePages { .. })
        ));
        assert_eq!(
            inspect(&image(4096, 2, 3)),
            Err(HeaderError::PageCount {
                header: 3,
                image: 2
            })
        );
    }

    #[test]
    fn test_inspect_ignores_a_stale_page_count() {
        // A page count written under an older change counter is not trusted, as in SQLite.
        let mut stale = image(4096, 2, 3);
        stale[92..96].copy_from_slice(&6u32.to_be_bytes());
        assert_eq!(inspect(&stale).unwrap().pages, 2);
    }
}
