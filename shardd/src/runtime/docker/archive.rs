//! A minimal tar writer for the few small files the Docker runtime copies into a
//! container (`postgresql.conf`, `pg_hba.conf`, the role marker): the Engine API's
//! archive endpoint (`PUT /containers/{id}/archive`, `docker cp`) takes a tar stream.
//!
//! Only regular files in one directory, POSIX ustar headers (names < 100 bytes), which
//! is all the daemon needs; a full tar crate would be a dependency for 60 lines.

/// One file to pack.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// The file name (no directories).
    pub name: &'a str,
    pub data: &'a [u8],
    /// Unix permission bits, e.g. `0o644`.
    pub mode: u32,
}

const BLOCK: usize = 512;

/// Write `value` as a NUL-terminated octal number filling `field`.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    // A value too large for the field is a caller bug (files here are a few KB).
    let text = &text.as_bytes()[text.len().saturating_sub(digits)..];
    field[..digits].copy_from_slice(text);
    field[digits] = 0;
}

/// A tar archive of `entries`, owned by root, with mtime `mtime` (seconds since the
/// epoch).
pub fn pack(entries: &[Entry<'_>], mtime: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = [0u8; BLOCK];
        let name = e.name.as_bytes();
        let n = name.len().min(99);
        h[..n].copy_from_slice(&name[..n]);
        octal(&mut h[100..108], u64::from(e.mode & 0o7777));
        octal(&mut h[108..116], 0); // uid
        octal(&mut h[116..124], 0); // gid
        octal(&mut h[124..136], e.data.len() as u64);
        octal(&mut h[136..148], mtime);
        h[156] = b'0'; // regular file
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        // The checksum is computed with its own field as spaces.
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        let text = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(text.as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(e.data);
        let pad = (BLOCK - e.data.len() % BLOCK) % BLOCK;
        out.resize(out.len() + pad, 0);
    }
    // End of archive: two zero blocks.
    out.resize(out.len() + 2 * BLOCK, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn headers_have_valid_checksums_and_sizes() {
        let tar = pack(
            &[
                Entry {
                    name: "a.conf",
                    data: b"x = 1\n",
                    mode: 0o644,
                },
                Entry {
                    name: "empty",
                    data: b"",
                    mode: 0o600,
                },
            ],
            1_700_000_000,
        );
        assert_eq!(tar.len(), 512 + 512 + 512 + 1024);
        let h = &tar[..512];
        let stored = u64::from_str_radix(
            std::str::from_utf8(&h[148..154]).expect("ascii checksum"),
            8,
        )
        .expect("octal checksum");
        let mut copy = h.to_vec();
        copy[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, copy.iter().map(|&b| u64::from(b)).sum::<u64>());
        assert_eq!(&h[124..135], b"00000000006");
        assert_eq!(&tar[512..518], b"x = 1\n");
    }

    /// The system `tar` (when present) reads what we write.
    #[test]
    fn system_tar_lists_the_files() {
        let tar = pack(
            &[Entry {
                name: "pg_hba.conf",
                data: b"host all all samenet trust\n",
                mode: 0o644,
            }],
            0,
        );
        let dir = std::env::temp_dir().join(format!("pgshard-tar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("t.tar");
        std::fs::write(&file, &tar).expect("write tar");
        let out = Command::new("tar").arg("-tvf").arg(&file).output();
        let _ = std::fs::remove_dir_all(&dir);
        let Ok(out) = out else {
            return; // no tar on this machine
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("pg_hba.conf"), "{listing}");
        assert!(listing.contains("-rw-r--r--"), "{listing}");
    }
}
