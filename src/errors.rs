//! An error and its causes as one line, each cause said once.
//!
//! Many errors here name their cause in their own message (`--port "...": unknown mode ...`) and
//! also return it as their `source()`, so anyhow's `{:#}` would print it twice. [`chain`] walks
//! the causes and leaves out every one whose text the line already holds.

/// `e`, then each cause not already part of the text, joined with ": ".
pub fn chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug, thiserror::Error)]
    #[error("--port {spec:?}: {source}")]
    struct Outer {
        spec: String,
        source: std::io::Error,
    }

    #[test]
    fn a_cause_named_in_the_message_is_not_repeated() {
        let e = anyhow::Error::new(Outer {
            spec: "name=x".into(),
            source: std::io::Error::other("bad mode"),
        });
        assert_eq!(format!("{e:#}"), "--port \"name=x\": bad mode: bad mode");
        assert_eq!(chain(&e), "--port \"name=x\": bad mode");
    }

    #[test]
    fn context_and_causes_each_appear_once() {
        let e = anyhow::Error::new(std::io::Error::other("permission denied"))
            .context("opening /dev/net/tun")
            .context("creating port c1");
        assert_eq!(
            chain(&e),
            "creating port c1: opening /dev/net/tun: permission denied"
        );
    }
}
