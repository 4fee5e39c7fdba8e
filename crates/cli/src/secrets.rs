//! `hodei run --secret`: where a job's secret values come from.
//!
//! - `NAME`: this process's environment variable `NAME`, so the value never appears on a
//!   command line (the safe way: `DB_PASSWORD=$(pass db) hodei run --secret DB_PASSWORD …`);
//! - `NAME@PATH`: the contents of a file, `NAME@-` of standard input, one trailing newline
//!   removed (`echo`, editors and `$(…)`-less pipes add one);
//! - `NAME=VALUE`: the value itself, which every user of the machine can read with `ps` while
//!   the CLI runs, and which stays in the shell's history.
//!
//! The values go into `JobSpec.secrets`; the server checks them (length, no newline, not also
//! in `--env`). Nothing here prints or formats a value, `Debug` included.

use std::{
    collections::HashMap,
    ffi::OsString,
    fmt,
    io::{self, Read},
    path::PathBuf,
};

use crate::error::CliError;

/// One `--secret` argument, as typed.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretArg {
    FromEnv { name: String },
    Inline { name: String, value: String },
    FromFile { name: String, path: PathBuf },
    FromStdin { name: String },
}

impl SecretArg {
    pub fn name(&self) -> &str {
        match self {
            SecretArg::FromEnv { name }
            | SecretArg::Inline { name, .. }
            | SecretArg::FromFile { name, .. }
            | SecretArg::FromStdin { name } => name,
        }
    }
}

impl fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretArg::FromEnv { name } => write!(f, "{name} (from the environment)"),
            SecretArg::Inline { name, .. } => write!(f, "{name}=<redacted>"),
            SecretArg::FromFile { name, path } => write!(f, "{name}@{}", path.display()),
            SecretArg::FromStdin { name } => write!(f, "{name}@-"),
        }
    }
}

/// Parses `NAME`, `NAME=VALUE`, `NAME@PATH` or `NAME@-`. The name ends at the first character
/// that cannot be part of one, which says which form it is; errors never repeat a value.
pub fn parse_secret_arg(input: &str) -> Result<SecretArg, String> {
    let name_end = input
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(input.len());
    let (name, rest) = input.split_at(name_end);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        let shown: String = name.chars().take(64).collect();
        return Err(format!(
            "{shown:?} is not a valid secret name (letters, digits and _, not starting with a \
             digit); write NAME, NAME@FILE, NAME@- or NAME=VALUE"
        ));
    }
    let name = name.to_owned();
    let mut chars = rest.chars();
    match chars.next() {
        None => Ok(SecretArg::FromEnv { name }),
        Some('=') => Ok(SecretArg::Inline {
            name,
            value: chars.as_str().to_owned(),
        }),
        Some('@') => match chars.as_str() {
            "" => Err(format!(
                "--secret {name}@ names no file; write {name}@PATH, or {name}@- for standard input"
            )),
            "-" => Ok(SecretArg::FromStdin { name }),
            path => Ok(SecretArg::FromFile {
                name,
                path: PathBuf::from(path),
            }),
        },
        Some(_) => Err(format!(
            "--secret {name}… must be followed by nothing, =VALUE, @FILE or @- (the name may \
             hold letters, digits and _ only)"
        )),
    }
}

/// The values of `args`, by name. `env` reads this process's environment and `stdin` is read
/// at most once (only one secret may come from it).
pub fn resolve(
    args: &[SecretArg],
    env: impl Fn(&str) -> Option<OsString>,
    stdin: impl Read,
) -> Result<HashMap<String, String>, CliError> {
    let mut stdin = Some(stdin);
    let mut values = HashMap::with_capacity(args.len());
    for arg in args {
        let name = arg.name();
        if values.contains_key(name) {
            return Err(CliError::Secret(format!(
                "secret {name} is given twice; give each secret once"
            )));
        }
        let value = match arg {
            SecretArg::FromEnv { name } => env(name)
                .ok_or_else(|| {
                    CliError::Secret(format!(
                        "--secret {name} takes its value from the environment variable {name}, \
                         which is not set; set it (e.g. `export {name}`), or use {name}@FILE"
                    ))
                })?
                .into_string()
                .map_err(|_| {
                    CliError::Secret(format!(
                        "the environment variable {name} is not UTF-8 text; a secret must be"
                    ))
                })?,
            SecretArg::Inline { value, .. } => value.clone(),
            SecretArg::FromFile { name, path } => {
                let bytes = std::fs::read(path).map_err(|err| {
                    CliError::Secret(format!(
                        "cannot read secret {name} from {}: {err}",
                        path.display()
                    ))
                })?;
                text(name, &path.display().to_string(), bytes)?
            }
            SecretArg::FromStdin { name } => {
                let mut input = stdin.take().ok_or_else(|| {
                    CliError::Secret(format!(
                        "secret {name} is the second to read standard input (@-); only one \
                         can, give the others with NAME@FILE"
                    ))
                })?;
                let mut bytes = Vec::new();
                input.read_to_end(&mut bytes).map_err(|err| {
                    CliError::Secret(format!(
                        "cannot read secret {name} from standard input: {err}"
                    ))
                })?;
                text(name, "standard input", bytes)?
            }
        };
        values.insert(name.to_owned(), value);
    }
    Ok(values)
}

/// The bytes of a file or of stdin as the value: UTF-8, without one trailing `\n` or `\r\n`.
fn text(name: &str, origin: &str, mut bytes: Vec<u8>) -> Result<String, CliError> {
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    String::from_utf8(bytes).map_err(|_| {
        CliError::Secret(format!(
            "secret {name} from {origin} is not UTF-8 text; a secret must be (base64-encode \
             binary values)"
        ))
    })
}

/// This process's standard input, for [`resolve`].
pub fn stdin() -> impl Read {
    io::stdin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_character_after_the_name_chooses_the_form() {
        assert_eq!(
            parse_secret_arg("DB_PASSWORD"),
            Ok(SecretArg::FromEnv {
                name: "DB_PASSWORD".into()
            })
        );
        assert_eq!(
            parse_secret_arg("K=a=b@c"),
            Ok(SecretArg::Inline {
                name: "K".into(),
                value: "a=b@c".into()
            })
        );
        assert_eq!(
            parse_secret_arg("K@/run/k=v"),
            Ok(SecretArg::FromFile {
                name: "K".into(),
                path: "/run/k=v".into()
            })
        );
        assert_eq!(
            parse_secret_arg("K@-"),
            Ok(SecretArg::FromStdin { name: "K".into() })
        );
        for bad in ["", "1K", "=v", "K@", "K-x", "K:v", "@f"] {
            assert!(parse_secret_arg(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refusals_and_debug_never_show_an_inline_value() {
        let err = parse_secret_arg("9ABC=hunter22").unwrap_err();
        assert!(!err.contains("hunter22"), "{err}");
        let arg = parse_secret_arg("PW=hunter22").expect("parses");
        assert_eq!(format!("{arg:?}"), "PW=<redacted>");
    }

    #[test]
    fn values_come_from_env_file_stdin_or_the_argument() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("key");
        std::fs::write(&file, "from-file\r\n").expect("write");
        let args = [
            parse_secret_arg("A").expect("A"),
            parse_secret_arg("B=inline").expect("B"),
            parse_secret_arg(&format!("C@{}", file.display())).expect("C"),
            parse_secret_arg("D@-").expect("D"),
        ];
        let env = |name: &str| (name == "A").then(|| OsString::from("from-env"));
        let values = resolve(&args, env, &b"from-stdin\n\n"[..]).expect("resolves");
        assert_eq!(values["A"], "from-env");
        assert_eq!(values["B"], "inline");
        assert_eq!(values["C"], "from-file");
        // Only one newline is removed: the server refuses the rest, it is not silently cut.
        assert_eq!(values["D"], "from-stdin\n");
    }

    #[test]
    fn a_missing_source_is_named_and_stdin_is_read_once() {
        let unset = resolve(
            &[parse_secret_arg("NOPE").expect("parses")],
            |_| None,
            io::empty(),
        )
        .unwrap_err();
        assert!(
            unset.to_string().contains("NOPE, which is not set"),
            "{unset}"
        );
        let twice = resolve(
            &[
                parse_secret_arg("A@-").expect("A"),
                parse_secret_arg("B@-").expect("B"),
            ],
            |_| None,
            &b"x"[..],
        )
        .unwrap_err();
        assert!(
            twice.to_string().contains("second to read standard input"),
            "{twice}"
        );
        let duplicate = resolve(
            &[
                parse_secret_arg("A=hunter22").expect("A"),
                parse_secret_arg("A=other").expect("A"),
            ],
            |_| None,
            io::empty(),
        )
        .unwrap_err();
        assert!(duplicate.to_string().contains("given twice"), "{duplicate}");
        let missing = resolve(
            &[parse_secret_arg("F@/nonexistent/file").expect("F")],
            |_| None,
            io::empty(),
        )
        .unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/file"),
            "{missing}"
        );
    }

    #[test]
    fn binary_content_is_refused_without_showing_it() {
        let err = resolve(
            &[parse_secret_arg("BIN@-").expect("parses")],
            |_| None,
            &b"\xffhunter22"[..],
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("not UTF-8"), "{message}");
        assert!(!message.contains("hunter22"), "{message}");
    }
}
