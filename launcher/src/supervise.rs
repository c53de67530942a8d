//! Run strategies: start a [`Launch`], wait, and restart it per a [`RestartPolicy`] with
//! exponential backoff.

use std::time::Duration;

use crate::error::Result;
use crate::spec::RestartPolicy;
use crate::vm::{ExitOutcome, Launch, RunningVm};

/// Limits for [`supervise`].
#[derive(Debug, Clone, Copy)]
pub struct SuperviseOptions {
    /// Stop restarting after this many restarts (`None`: no limit).
    pub max_restarts: Option<u32>,
    /// The first restart delay; doubled after each restart, capped at [`Self::max_backoff`].
    pub backoff: Duration,
    /// The longest restart delay.
    pub max_backoff: Duration,
}

impl Default for SuperviseOptions {
    fn default() -> Self {
        SuperviseOptions {
            max_restarts: None,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// What happened, for the caller to report.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// qemu is up and answering QMP (`attempt` counts from 0).
    Started {
        /// The run.
        vm: &'a mut RunningVm,
        /// 0 for the first start.
        attempt: u32,
    },
    /// qemu exited.
    Exited(&'a ExitOutcome),
    /// It will be started again after `delay`.
    Restarting {
        /// The backoff.
        delay: Duration,
    },
}

/// Whether `policy` restarts after `outcome`.
pub fn should_restart(policy: RestartPolicy, outcome: &ExitOutcome) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => outcome.is_failure(),
        RestartPolicy::Never => false,
    }
}

/// Starts the VM and restarts it per `policy` until it stops for good; returns the last outcome.
/// A start failure is returned at once (restarting a VM whose qemu cannot start only loops).
pub fn supervise(
    launch: &mut Launch,
    policy: RestartPolicy,
    opts: SuperviseOptions,
    mut on_event: impl FnMut(Event<'_>),
) -> Result<ExitOutcome> {
    let mut attempt = 0u32;
    let mut delay = opts.backoff;
    loop {
        let mut vm = launch.start()?;
        on_event(Event::Started { vm: &mut vm, attempt });
        let outcome = vm.wait()?;
        on_event(Event::Exited(&outcome));
        let limit_reached = opts.max_restarts.is_some_and(|m| attempt >= m);
        if !should_restart(policy, &outcome) || limit_reached {
            return Ok(outcome);
        }
        on_event(Event::Restarting { delay });
        std::thread::sleep(delay);
        delay = (delay * 2).min(opts.max_backoff);
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(success: bool) -> ExitOutcome {
        ExitOutcome {
            status: if success { "exit code 0" } else { "killed by signal 9" }.into(),
            success,
            shutdown_reason: None,
            killed: false,
            ran_for: Duration::ZERO,
        }
    }

    #[test]
    fn restart_table() {
        for (policy, success, want) in [
            (RestartPolicy::Always, true, true),
            (RestartPolicy::Always, false, true),
            (RestartPolicy::OnFailure, true, false),
            (RestartPolicy::OnFailure, false, true),
            (RestartPolicy::Never, true, false),
            (RestartPolicy::Never, false, false),
        ] {
            assert_eq!(should_restart(policy, &outcome(success)), want, "{policy:?} success={success}");
        }
    }
}
