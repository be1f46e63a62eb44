//! The revision of an etcd snapshot file, read from its bbolt database without etcd's
//! tools: the highest key of etcd's `key` bucket (keys there are `<main revision, 8
//! bytes big-endian>_<sub revision>`, with a `t` suffix for a deletion), which is what
//! `etcdctl snapshot status` reports as the revision.
//!
//! Only what is needed is read: the newest valid meta page, the root bucket's tree down
//! to the `key` bucket and that bucket's tree down its last branch. Every offset is
//! checked against the file, the depth is bounded: a damaged file is an error, never a
//! panic.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::EtcdError;

const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BUCKET_HEADER: usize = 16;
const MAGIC: u32 = 0xED0C_DAED;
const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const BUCKET_LEAF: u32 = 0x01;
/// Deeper than any real B+tree: guards against loops in a damaged file.
const MAX_DEPTH: usize = 64;

/// Reads pages of the file (or of a buffer, in tests).
trait Pages {
    fn len(&self) -> u64;
    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, String>;
}

#[cfg(test)]
impl Pages for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let start = usize::try_from(offset).map_err(|_| "offset out of range".to_string())?;
        start
            .checked_add(len)
            .and_then(|end| self.get(start..end))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| format!("read of {len} bytes at {offset} past the end"))
    }
}

struct File(std::fs::File, u64);

impl Pages for File {
    fn len(&self) -> u64 {
        self.1
    }
    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        if offset.saturating_add(len as u64) > self.1 {
            return Err(format!("read of {len} bytes at {offset} past the end"));
        }
        let mut buf = vec![0; len];
        self.0
            .read_exact_at(&mut buf, offset)
            .map_err(|e| e.to_string())?;
        Ok(buf)
    }
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_le_bytes)
        .ok_or_else(|| "truncated page".to_string())
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| "truncated page".to_string())
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| "truncated page".to_string())
}

/// One page (with its overflow pages) as bytes, or an inline bucket's page.
struct Page {
    bytes: Vec<u8>,
    flags: u16,
    count: usize,
}

impl Page {
    fn parse(bytes: Vec<u8>) -> Result<Page, String> {
        let flags = u16_at(&bytes, 8)?;
        let count = usize::from(u16_at(&bytes, 10)?);
        if PAGE_HEADER + count * ELEMENT > bytes.len() {
            return Err("page element count past its end".into());
        }
        Ok(Page {
            bytes,
            flags,
            count,
        })
    }

    fn slice(&self, start: usize, len: usize) -> Result<&[u8], String> {
        start
            .checked_add(len)
            .and_then(|end| self.bytes.get(start..end))
            .ok_or_else(|| "element data past the page's end".to_string())
    }

    /// Branch element `i`: (key, child page id).
    fn branch(&self, i: usize) -> Result<(&[u8], u64), String> {
        let at = PAGE_HEADER + i * ELEMENT;
        let pos = u32_at(&self.bytes, at)? as usize;
        let ksize = u32_at(&self.bytes, at + 4)? as usize;
        let pgid = u64_at(&self.bytes, at + 8)?;
        Ok((self.slice(at + pos, ksize)?, pgid))
    }

    /// Leaf element `i`: (flags, key, value).
    fn leaf(&self, i: usize) -> Result<(u32, &[u8], &[u8]), String> {
        let at = PAGE_HEADER + i * ELEMENT;
        let flags = u32_at(&self.bytes, at)?;
        let pos = u32_at(&self.bytes, at + 4)? as usize;
        let ksize = u32_at(&self.bytes, at + 8)? as usize;
        let vsize = u32_at(&self.bytes, at + 12)? as usize;
        let key = self.slice(at + pos, ksize)?;
        let value = self.slice(at + pos + ksize, vsize)?;
        Ok((flags, key, value))
    }
}

struct Db<'a> {
    pages: &'a dyn Pages,
    page_size: u64,
}

impl Db<'_> {
    fn open(pages: &dyn Pages) -> Result<(Db<'_>, u64), String> {
        // Two meta pages (0 and 1): the valid one with the highest transaction id. The
        // page size is in the first; the second is at that offset.
        let mut best: Option<(u64, u64, u64)> = None; // (txid, root, page size)
        let first = pages.read(0, PAGE_HEADER + 64)?;
        let page_size = u64::from(u32_at(&first, PAGE_HEADER + 8)?);
        if !(512..=1 << 20).contains(&page_size) {
            return Err(format!("not a bbolt file (page size {page_size})"));
        }
        for offset in [0, page_size] {
            let Ok(m) = pages.read(offset, PAGE_HEADER + 64) else {
                continue;
            };
            let meta = &m[PAGE_HEADER..];
            if u32_at(meta, 0)? != MAGIC {
                continue;
            }
            if fnv64a(&meta[..56]) != u64_at(meta, 56)? {
                continue;
            }
            let (txid, root) = (u64_at(meta, 48)?, u64_at(meta, 16)?);
            if best.is_none_or(|(t, _, _)| txid > t) {
                best = Some((txid, root, u64::from(u32_at(meta, 8)?)));
            }
        }
        let (_, root, page_size) = best.ok_or("not a bbolt file (no valid meta page)")?;
        Ok((Db { pages, page_size }, root))
    }

    fn page(&self, id: u64) -> Result<Page, String> {
        let offset = id
            .checked_mul(self.page_size)
            .ok_or("page id out of range")?;
        let head = self.pages.read(offset, PAGE_HEADER)?;
        let overflow = u64::from(u32_at(&head, 12)?);
        let len = (overflow + 1)
            .checked_mul(self.page_size)
            .filter(|l| offset.saturating_add(*l) <= self.pages.len())
            .ok_or("page past the end of the file")?;
        Page::parse(self.pages.read(offset, len as usize)?)
    }

    /// The page a bucket value points at (its inline page when its root is 0).
    fn bucket_root(&self, value: &[u8]) -> Result<Page, String> {
        let root = u64_at(value, 0)?;
        if root == 0 {
            return Page::parse(
                value
                    .get(BUCKET_HEADER..)
                    .ok_or("truncated inline bucket")?
                    .to_vec(),
            );
        }
        self.page(root)
    }

    /// The value of `key` (a bucket) in the tree rooted at `page`.
    fn find_bucket(&self, mut page: Page, key: &[u8]) -> Result<Option<Page>, String> {
        for _ in 0..MAX_DEPTH {
            match page.flags {
                f if f & BRANCH_PAGE != 0 => {
                    // The last element whose key is <= the key sought.
                    let mut child = None;
                    for i in 0..page.count {
                        let (k, pgid) = page.branch(i)?;
                        if k > key && child.is_some() {
                            break;
                        }
                        child = Some(pgid);
                    }
                    page = self.page(child.ok_or("empty branch page")?)?;
                }
                f if f & LEAF_PAGE != 0 => {
                    for i in 0..page.count {
                        let (flags, k, v) = page.leaf(i)?;
                        if k == key {
                            if flags & BUCKET_LEAF == 0 {
                                return Err("not a bucket".into());
                            }
                            return self.bucket_root(v).map(Some);
                        }
                    }
                    return Ok(None);
                }
                f => return Err(format!("unexpected page flags {f:#x}")),
            }
        }
        Err("tree too deep".into())
    }

    /// The highest key of the tree rooted at `page`.
    fn last_key(&self, mut page: Page) -> Result<Option<Vec<u8>>, String> {
        for _ in 0..MAX_DEPTH {
            if page.count == 0 {
                return Ok(None);
            }
            match page.flags {
                f if f & BRANCH_PAGE != 0 => {
                    let (_, pgid) = page.branch(page.count - 1)?;
                    page = self.page(pgid)?;
                }
                f if f & LEAF_PAGE != 0 => {
                    let (_, k, _) = page.leaf(page.count - 1)?;
                    return Ok(Some(k.to_vec()));
                }
                f => return Err(format!("unexpected page flags {f:#x}")),
            }
        }
        Err("tree too deep".into())
    }
}

fn fnv64a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn revision(pages: &dyn Pages) -> Result<Option<i64>, String> {
    let (db, root) = Db::open(pages)?;
    let Some(keys) = db.find_bucket(db.page(root)?, b"key")? else {
        return Err("no key bucket: not an etcd database".into());
    };
    let Some(last) = db.last_key(keys)? else {
        return Ok(None);
    };
    let main: [u8; 8] = last
        .get(..8)
        .and_then(|s| s.try_into().ok())
        .ok_or("a revision key shorter than 8 bytes")?;
    i64::try_from(u64::from_be_bytes(main))
        .map(Some)
        .map_err(|_| "revision out of range".into())
}

/// The revision of the etcd snapshot (or database) file at `path`: the highest revision
/// it holds, `None` for a database without keys.
pub fn snapshot_revision(path: &Path) -> Result<Option<i64>, EtcdError> {
    let bad = |reason: String| {
        EtcdError::Snapshot(format!(
            "{}: not a readable etcd snapshot: {reason}",
            path.display()
        ))
    };
    let file = std::fs::File::open(path).map_err(|source| EtcdError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    let len = file
        .metadata()
        .map_err(|source| EtcdError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    revision(&File(file, len)).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_files_are_errors() {
        assert!(revision(&Vec::new()).is_err());
        assert!(revision(&vec![0u8; 8192]).is_err());
        let mut junk = vec![0xffu8; 16384];
        junk[PAGE_HEADER..PAGE_HEADER + 4].copy_from_slice(&MAGIC.to_le_bytes());
        junk[PAGE_HEADER + 8..PAGE_HEADER + 12].copy_from_slice(&4096u32.to_le_bytes());
        assert!(revision(&junk).is_err());
    }

    #[test]
    fn fnv_matches_reference_values() {
        assert_eq!(fnv64a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
