//! Turning the words after `hodei run --` into the one shell line the worker runs with
//! `/bin/sh -c`.
//!
//! One word is taken verbatim, because it is what a user types to get shell features:
//! `hodei run -- 'echo $HOME | wc -c'`. Several words were already split by the user's shell, so
//! each is quoted back and they are joined with spaces: `hodei run -- printf '%s\n' "a b"` runs
//! exactly `printf '%s\n' 'a b'`.

/// The command line sent to the server for the words after `--`.
pub fn command_line(words: &[String]) -> String {
    match words {
        [single] => single.clone(),
        _ => words
            .iter()
            .map(|word| shell_quote(word))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// `word` as one POSIX shell word: unchanged when it has no special characters, otherwise in
/// single quotes (inside which nothing is special), with each `'` written as `'\''`.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.chars().all(is_plain) {
        return word.to_owned();
    }
    let mut quoted = String::with_capacity(word.len() + 2);
    quoted.push('\'');
    for c in word.chars() {
        if c == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    quoted
}

/// Characters that mean nothing special to `sh` anywhere in a word. `=` is excluded so that a
/// first word like `A=b` is not read as an assignment, `~` and `#` because they are special at
/// the start of a word.
fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':' | ',' | '+' | '@' | '%')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(ws: &[&str]) -> Vec<String> {
        ws.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn a_single_word_is_sent_verbatim_so_shell_syntax_works() {
        assert_eq!(
            command_line(&words(&["echo $HOME | wc -c"])),
            "echo $HOME | wc -c"
        );
    }

    #[test]
    fn several_words_are_quoted_back_and_joined() {
        assert_eq!(
            command_line(&words(&["printf", "%s\\n", "a b"])),
            "printf '%s\\n' 'a b'"
        );
    }

    #[test]
    fn plain_words_stay_unquoted() {
        assert_eq!(
            command_line(&words(&["ls", "-la", "/tmp/x_y.z", "a,b:c+d@e%f"])),
            "ls -la /tmp/x_y.z a,b:c+d@e%f"
        );
    }

    #[test]
    fn single_quotes_inside_a_word_survive() {
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn empty_words_and_special_characters_are_quoted() {
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(shell_quote("a;b"), "'a;b'");
        assert_eq!(shell_quote("~"), "'~'");
        assert_eq!(shell_quote("A=b"), "'A=b'");
        assert_eq!(shell_quote("line\nbreak"), "'line\nbreak'");
        assert_eq!(shell_quote("café"), "'café'");
    }

    #[test]
    fn quoted_words_round_trip_through_sh() {
        let original = words(&["printf", "[%s]\\n", "a b", "it's", "", "$x", "*", "\"q\""]);
        let line = command_line(&original);
        let output = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&line)
            .output()
            .expect("run /bin/sh");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "[a b]\n[it's]\n[]\n[$x]\n[*]\n[\"q\"]\n"
        );
    }
}
