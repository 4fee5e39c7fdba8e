//! The tar archive that carries a worker's one-time token into its container before it starts,
//! extracted at [`EXTRACT_AT`]: `hodei/` (mode 0700) holding `token` (mode 0400), both owned by the container's user
//! (numeric ids in the archive, or a name the engine resolves with `copyUIDGID`), so the worker
//! can read the token and then remove it, and no other user in the container can read it
//! meanwhile. The container's configuration (what `docker inspect` shows) never holds the token.
//!
//! Written by hand: two entries of the POSIX ustar format do not justify a dependency.

/// Where the worker finds its token ([`hodei_contract::env::TOKEN_FILE`]).
pub const TOKEN_PATH: &str = "/run/hodei/token";
/// Where the archive is extracted: a volume of the container's own (the engine refuses to
/// extract into a read-only root file system; a tmpfs would only be mounted at start, over it).
pub const EXTRACT_AT: &str = "/run";
const DIRECTORY: &str = "hodei/";
const FILE: &str = "hodei/token";
const BLOCK: usize = 512;

/// Numeric owner of the archive's entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// The owner for a container's `User` (`""`, `uid`, `uid:gid`, `name`, `name:group`):
    /// None when a part is a name, which only the container's passwd/group files resolve. The
    /// group of a bare `uid` is 0; it does not matter, the modes give the group nothing.
    pub fn of_user(user: &str) -> Option<Self> {
        let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
        let id = |part: &str| match part {
            "" => Some(0),
            _ => part.parse().ok(),
        };
        Some(Self {
            uid: id(uid)?,
            gid: id(gid)?,
        })
    }
}

/// The archive holding `token` at [`TOKEN_PATH`], owned by `owner`, to be extracted at
/// [`EXTRACT_AT`].
pub(super) fn token_archive(token: &str, owner: Owner) -> Vec<u8> {
    let mut archive = Vec::with_capacity(6 * BLOCK);
    archive.extend_from_slice(&header(DIRECTORY, 0o700, 0, b'5', owner));
    archive.extend_from_slice(&header(FILE, 0o400, token.len(), b'0', owner));
    archive.extend_from_slice(token.as_bytes());
    archive.resize(archive.len().next_multiple_of(BLOCK), 0);
    // The end of an archive: two empty blocks.
    archive.resize(archive.len() + 2 * BLOCK, 0);
    archive
}

/// A ustar header.
fn header(name: &str, mode: u32, size: usize, kind: u8, owner: Owner) -> [u8; BLOCK] {
    let mut header = [0u8; BLOCK];
    header[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut header[100..108], mode as u64); // mode
    octal(&mut header[108..116], u64::from(owner.uid)); // uid
    octal(&mut header[116..124], u64::from(owner.gid)); // gid
    octal(&mut header[124..136], size as u64); // size
    octal(&mut header[136..148], 0); // mtime
    header[156] = kind;
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    // The checksum is the sum of all bytes with its own field counted as spaces.
    header[148..156].fill(b' ');
    let checksum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    octal(&mut header[148..155], u64::from(checksum));
    header
}

/// `value` in octal, zero-padded to fill `field` but its last byte, which stays NUL.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        process::{Command, Stdio},
    };

    use super::*;

    /// Runs the system's `tar` with `args` on `archive`.
    fn tar(archive: &[u8], args: &[&str]) -> String {
        let mut child = Command::new("tar")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tar is installed");
        child.stdin.take().unwrap().write_all(archive).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "tar {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    #[test]
    fn tar_reads_a_private_directory_holding_a_file_only_its_owner_can_read() {
        let owner = Owner {
            uid: 65532,
            gid: 65533,
        };
        let archive = token_archive("0123456789abcdef", owner);
        assert_eq!(archive.len() % BLOCK, 0);

        let listing = tar(
            &archive,
            &["--list", "--verbose", "--numeric-owner", "--file=-"],
        );
        let entries: Vec<(&str, &str, &str)> = listing
            .lines()
            .map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields[0], fields[1], fields[fields.len() - 1])
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                ("drwx------", "65532/65533", "hodei/"),
                ("-r--------", "65532/65533", "hodei/token")
            ],
            "{listing}"
        );
        assert_eq!(
            tar(&archive, &["--extract", "--to-stdout", "--file=-", FILE]),
            "0123456789abcdef"
        );
        assert_eq!(TOKEN_PATH, format!("{EXTRACT_AT}/{FILE}"));
    }

    #[test]
    fn numeric_users_become_the_owner_and_names_are_left_to_the_engine() {
        let owner = |uid, gid| Some(Owner { uid, gid });
        assert_eq!(Owner::of_user(""), owner(0, 0));
        assert_eq!(Owner::of_user("65532"), owner(65532, 0));
        assert_eq!(Owner::of_user("65532:65533"), owner(65532, 65533));
        assert_eq!(Owner::of_user("hodei"), None);
        assert_eq!(Owner::of_user("65532:hodei"), None);
        assert_eq!(Owner::of_user("hodei:65532"), None);
    }
}
