//! Delegated IPAM: the plugin named by `ipam.type`, found in `CNI_PATH`, run with the same
//! configuration on stdin and the same environment (`CNI_COMMAND` set to the operation).
//!
//! An IPAM plugin older than the configuration's version (Debian's host-local 1.1.1 stops at
//! 1.0.0) refuses it with code 1; the request is then repeated once with `cniVersion` lowered
//! to the highest version that plugin reports in VERSION (and at least 0.3.0), since ADD, DEL
//! and CHECK did not change for IPAM between those versions.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::conf::{Env, at_least, parse_version};
use super::{CniError, code};

/// One IPAM call: which plugin, where to look, and what to send.
#[derive(Debug)]
pub struct Ipam<'a> {
    pub kind: &'a str,
    pub env: &'a Env,
    pub stdin: &'a [u8],
}

/// The environment overrides of one call besides `CNI_COMMAND` (GC's DELs name another
/// container).
pub type Overrides<'a> = &'a [(&'a str, &'a str)];

impl Ipam<'_> {
    /// The plugin's path: the first `CNI_PATH` directory that has it.
    fn binary(&self) -> Result<PathBuf, CniError> {
        if self.kind.contains('/') || self.kind == "." || self.kind == ".." {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("ipam.type {:?} is not a plugin name", self.kind),
            ));
        }
        let dirs = self.env.path.as_deref().unwrap_or_default();
        std::env::split_paths(dirs)
            .map(|d| d.join(self.kind))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                CniError::new(
                    code::IPAM,
                    format!(
                        "failed to find IPAM plugin {:?} in CNI_PATH {dirs:?}",
                        self.kind
                    ),
                )
            })
    }

    /// Runs the plugin with `command`; its stdout on success (JSON), its error otherwise.
    pub fn exec(&self, command: &str, overrides: Overrides<'_>) -> Result<Value, CniError> {
        let bin = self.binary()?;
        match exec_once(&bin, command, overrides, self.stdin)? {
            Err(e) if e.code == code::INCOMPATIBLE_VERSION => {
                let stdin = self.downgraded(&bin).ok_or(e)?;
                exec_once(&bin, command, overrides, &stdin)?
            }
            r => r,
        }
    }

    /// The configuration with `cniVersion` set to the highest version the plugin supports below
    /// the requested one; `None` if there is none (from 0.3.0 on).
    fn downgraded(&self, bin: &Path) -> Option<Vec<u8>> {
        let mut conf: Value = serde_json::from_slice(self.stdin).ok()?;
        let asked = conf["cniVersion"].as_str()?.to_string();
        let version = serde_json::to_vec(&serde_json::json!({"cniVersion": asked})).ok()?;
        let answer = exec_once(bin, "VERSION", &[], &version).ok()?.ok()?;
        let best = answer["supportedVersions"]
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .filter(|v| at_least(v, "0.3.0") && parse_version(v) < parse_version(&asked))
            .max_by_key(|v| parse_version(v))?
            .to_string();
        conf["cniVersion"] = Value::String(best);
        serde_json::to_vec(&conf).ok()
    }
}

/// One run of an IPAM plugin. The outer error: it could not be run or answered nonsense; the
/// inner one: the plugin's own CNI error.
fn exec_once(
    bin: &Path,
    command: &str,
    overrides: Overrides<'_>,
    stdin: &[u8],
) -> Result<Result<Value, CniError>, CniError> {
    let name = bin.display();
    let fail = |what: String| CniError::new(code::IPAM, format!("IPAM plugin {name}: {what}"));
    let mut cmd = Command::new(bin);
    cmd.env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in overrides {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    let written = child.stdin.take().expect("stdin is piped").write_all(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("waiting for it: {e}")))?;
    written.map_err(|e| fail(format!("writing its stdin: {e}")))?;
    if out.status.success() {
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(Ok(Value::Null));
        }
        return serde_json::from_slice(&out.stdout)
            .map(Ok)
            .map_err(|e| fail(format!("{command} printed something that is not JSON: {e}")));
    }
    match serde_json::from_slice::<CniError>(&out.stdout) {
        Ok(e) => Ok(Err(e)),
        Err(_) => Err(fail(format!(
            "{command} failed ({}) without a CNI error: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim()
        ))),
    }
}
