//! One line for an error and its causes, for the binaries' last word.

use std::error::Error;

/// The error's message followed by each cause's, joined by `": "` as
/// anyhow's `{:#}` does, except that a cause whose text the previous message
/// already contains is left out. Several libraries put their source's text in
/// their own message so that it survives being sent as a string; anyhow's
/// chain would then print it twice.
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut previous = line.clone();
    let mut cause = error.source();
    while let Some(next) = cause {
        let text = next.to_string();
        if !previous.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        previous = text;
        cause = next.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("could not read f: {source}")]
    struct Repeats {
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("could not start")]
    struct Hides {
        source: std::io::Error,
    }

    fn io() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        assert_eq!(
            error_chain(&Repeats { source: io() }),
            "could not read f: no such file"
        );
    }

    #[test]
    fn a_cause_not_in_the_message_is_appended() {
        assert_eq!(
            error_chain(&Hides { source: io() }),
            "could not start: no such file"
        );
    }

    #[test]
    fn context_layers_of_anyhow_are_kept() {
        let e = anyhow::Error::from(Repeats { source: io() }).context("cannot inspect p");
        assert_eq!(
            error_chain(e.as_ref()),
            "cannot inspect p: could not read f: no such file"
        );
    }
}
