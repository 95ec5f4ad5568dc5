//! `reload`: the configuration file re-read and only the difference applied.

use super::links::in_place;
use super::{Daemon, err};
use crate::control::config::{Config, diff};
use crate::control::proto::{ControlError, ErrorKind, LinkSpec, ReloadReport};

impl Daemon {
    /// Re-reads the configuration file and applies only the difference: untouched ports keep
    /// forwarding; removed ports go; changed ports change in place when `link set` can do it
    /// (mode, MAC, MTU, bcqueuelen, source list) and are re-created otherwise. A file that does
    /// not validate changes nothing.
    pub fn reload(&mut self) -> Result<ReloadReport, ControlError> {
        let Some((path, _)) = &self.config else {
            return Err(err(
                ErrorKind::BadConfig,
                "this engine was started without --config: there is nothing to reload",
            ));
        };
        let path = path.clone();
        let bad = |e: crate::control::config::ConfigError| err(ErrorKind::BadConfig, e.to_string());
        let text = std::fs::read_to_string(&path)
            .map_err(|e| err(ErrorKind::BadConfig, format!("{}: {e}", path.display())))?;
        let file = path.display().to_string();
        let new = Config::parse(&file, &text).map_err(bad)?;
        new.check_machine(&file, &text).map_err(bad)?;
        if let Some(s) = &self.service {
            s.reloading();
        }
        if let Some((_, old)) = &self.config
            && old.worker_priority != new.worker_priority
        {
            let show = |p: Option<crate::engine::priority::WorkerPriority>| {
                p.map_or_else(|| "(unset)".to_string(), |p| p.to_string())
            };
            tracing::warn!(
                "worker_priority changed in the file ({} -> {}): it applies at the next start \
                 only; the engine keeps {}",
                show(old.worker_priority),
                show(new.worker_priority),
                self.opts.priority
            );
        }
        if let Some((_, old)) = &self.config
            && old.spin_us != new.spin_us
        {
            tracing::warn!(
                "spin_us changed in the file ({:?} -> {:?}): it applies at the next start only; \
                 the engine keeps {}",
                old.spin_us,
                new.spin_us,
                self.opts.spin_us
            );
        }
        let report = self.apply(new);
        self.notify_ready();
        let report = report?;
        tracing::info!(?report, "configuration reloaded");
        Ok(report)
    }

    /// Moves from the last applied configuration to `new`.
    pub(super) fn apply(&mut self, new: Config) -> Result<ReloadReport, ControlError> {
        let (path, old) = self.config.take().expect("only with a configuration");
        let d = diff(&old, &new);
        let mut report = ReloadReport {
            unchanged: d.unchanged,
            ..ReloadReport::default()
        };
        let result = (|| {
            for name in &d.removed {
                self.link_del(name)?;
                report.removed.push(name.clone());
            }
            for spec in &d.changed {
                let old_spec = &old
                    .ports
                    .iter()
                    .find(|p| p.spec.name == spec.name)
                    .expect("in diff")
                    .spec;
                let parent_mtu = spec
                    .parent
                    .as_ref()
                    .and_then(|p| self.parents.get(p))
                    .map_or(0, |r| r.config.mtu);
                match in_place(old_spec, spec, parent_mtu).filter(|_| parent_mtu > 0) {
                    Some(change) => {
                        self.link_set(change)?;
                    }
                    None => {
                        self.link_del(&spec.name)?;
                        self.link_add(with_bclim(spec, &new))?;
                    }
                }
                report.changed.push(spec.name.clone());
            }
            for spec in &d.added {
                self.link_add(with_bclim(spec, &new))?;
                report.added.push(spec.name.clone());
            }
            for (parent, b) in &new.bclim {
                if let Some(run) = self.parents.get_mut(parent) {
                    run.config.bc_cutoff = *b;
                }
            }
            let parents: Vec<String> = self.parents.keys().cloned().collect();
            for p in parents {
                self.rebuild(&p);
            }
            Ok(())
        })();
        self.config = Some((path, new));
        result.map(|()| report)
    }
}

/// The port as `link add` should get it: with its parent's `bclim` from the file (`[parents.P]`),
/// or none when the file sets none for that parent.
fn with_bclim(spec: &LinkSpec, config: &Config) -> LinkSpec {
    let bclim = spec
        .parent
        .as_ref()
        .and_then(|p| config.bclim.get(p))
        .copied();
    LinkSpec {
        bclim,
        ..spec.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_bclim_gives_a_port_its_own_parents_bclim_and_changes_nothing_else() {
        let config = Config::parse(
            "u.toml",
            r#"
[parents.eth0]
bclim = -1

[parents.eth1]
bclim = 5

[[ports]]
name = "c0"
parent = "eth0"
mode = "vepa"
mtu = 1400

[[ports]]
name = "c1"
parent = "eth1"

[[ports]]
name = "c2"
parent = "eth2"
"#,
        )
        .expect("a valid file");
        let spec = |name: &str| {
            let p = config.ports.iter().find(|p| p.spec.name == name);
            p.expect("in the file").spec.clone()
        };
        let c0 = with_bclim(&spec("c0"), &config);
        assert_eq!(c0.bclim, Some(-1), "eth0's");
        assert_eq!(
            LinkSpec { bclim: None, ..c0 },
            spec("c0"),
            "nothing but bclim changes"
        );
        assert_eq!(with_bclim(&spec("c1"), &config).bclim, Some(5), "eth1's");
        assert_eq!(
            with_bclim(&spec("c2"), &config).bclim,
            None,
            "the file sets none for eth2"
        );
        // A bclim the spec carried but the file no longer sets is not kept.
        let stale = LinkSpec {
            bclim: Some(3),
            ..spec("c2")
        };
        assert_eq!(with_bclim(&stale, &config).bclim, None);
    }
}
