//! `sipblade check [--config FILE]`: what `run` would refuse or warn of,
//! without starting a blade. Reads the config file, the agents file and
//! the cluster certificates exactly as `run` does, so a change can be
//! checked before a restart, on the machine that will run it.

use std::path::Path;
use std::process::ExitCode;

use super::write_stdout;
use crate::config::{AgentKind, Config};

pub(crate) fn run(config: Option<&Path>) -> ExitCode {
    let config = match super::run::load(config) {
        Ok(config) => config,
        Err(status) => return status,
    };
    for warning in super::run::risky_settings(&config) {
        eprintln!("sipblade: check: warning: {warning}");
    }
    match write_stdout("check", &format!("{}\n", summary(&config))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(status) => status,
    }
}

/// One line: what the blade would be.
fn summary(config: &Config) -> String {
    let blade = &config.blade;
    let agents = config.agents.provisioned.as_slice();
    let supervisors = agents
        .iter()
        .filter(|a| a.kind == AgentKind::Supervisor)
        .count();
    let cores = match blade.cores {
        0 => "one core per CPU".to_owned(),
        1 => "1 core".to_owned(),
        n => format!("{n} cores"),
    };
    let cluster = match &config.cluster {
        None => "single blade".to_owned(),
        Some(c) => {
            let peers: Vec<&str> = c.peers.iter().map(|p| p.id.as_str()).collect();
            format!(
                "cluster link on {} with {} peer(s) [{}], lease {} s",
                c.listen,
                peers.len(),
                peers.join(", "),
                c.lease_secs
            )
        }
    };
    format!(
        "config OK: blade `{}`, domain {}, SIP {} (UDP and TCP), admin {}, {cores}; {cluster}; \
         {} agent(s) ({supervisors} supervisor(s)) from {}, authentication {}",
        blade.id,
        blade.domain,
        blade.sip,
        blade.admin,
        agents.len(),
        config.agents.file.display(),
        if config.agents.auth { "on" } else { "off" },
    )
}
