//! The run's state machine. Stages call [`RunState::check`] before acting, so a stage refuses a run
//! that is not in the state before it; a repeated delivery finds the run already past its target
//! and becomes a no-op (see [`Transition::AlreadyDone`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Dispatched,
    Reviewed,
    ExceptionOpen,
    Replaying,
    ResultContracted,
    SettlementReceipted,
    UsageCaptured,
    CallbackDelivered,
    CallbackFailed,
    Cancelled,
    /// The execution failed for good (retries exhausted, or an error that cannot heal): the hold
    /// is released, an exception ticket names the stage; `POST /runs/{id}/redrive` resumes it.
    Failed,
}

use RunState::*;

/// Outcome of checking a transition.
#[derive(Debug, PartialEq, Eq)]
pub enum Transition {
    /// The run is in a state `to` may be entered from: act.
    Go,
    /// The run already reached (or passed) `to` along the happy path: do nothing, return what exists.
    AlreadyDone,
    /// Any other state: refuse.
    Refused,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            Queued => "queued",
            Dispatched => "dispatched",
            Reviewed => "reviewed",
            ExceptionOpen => "exception_open",
            Replaying => "replaying",
            ResultContracted => "result_contracted",
            SettlementReceipted => "settlement_receipted",
            UsageCaptured => "usage_captured",
            CallbackDelivered => "callback_delivered",
            CallbackFailed => "callback_failed",
            Cancelled => "cancelled",
            Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<RunState> {
        ALL.iter().copied().find(|st| st.as_str() == s)
    }

    /// Position along the delivery path (None for side states).
    fn rank(self) -> Option<u8> {
        Some(match self {
            Queued => 0,
            Dispatched => 1,
            Reviewed => 2,
            ResultContracted => 3,
            SettlementReceipted => 4,
            UsageCaptured => 5,
            CallbackDelivered | CallbackFailed => 6,
            ExceptionOpen | Replaying | Cancelled | Failed => return None,
        })
    }

    /// The states `to` may be entered from.
    pub fn sources(to: RunState) -> &'static [RunState] {
        match to {
            Queued => &[],
            Dispatched => &[Queued],
            Reviewed | ExceptionOpen => &[Dispatched, Replaying],
            Replaying => &[ExceptionOpen],
            ResultContracted => &[Reviewed],
            SettlementReceipted => &[ResultContracted],
            UsageCaptured => &[SettlementReceipted],
            CallbackDelivered => &[UsageCaptured, CallbackFailed],
            CallbackFailed => &[UsageCaptured],
            Cancelled => &[Queued, ExceptionOpen],
            // Any state an execution is running in; a redrive goes back to the state it left.
            Failed => &[
                Queued,
                Dispatched,
                Replaying,
                Reviewed,
                ResultContracted,
                SettlementReceipted,
                UsageCaptured,
                CallbackDelivered,
                CallbackFailed,
            ],
        }
    }

    pub fn check(self, to: RunState) -> Transition {
        if RunState::sources(to).contains(&self) {
            return Transition::Go;
        }
        match (self.rank(), to.rank()) {
            (Some(from), Some(target)) if from >= target => Transition::AlreadyDone,
            _ if self == to => Transition::AlreadyDone,
            _ => Transition::Refused,
        }
    }

    /// What the agent should do next (the seed's `next_action`).
    pub fn next_action(self, attested: bool) -> &'static str {
        match self {
            CallbackDelivered if attested => "ready_for_downstream_agent",
            CallbackDelivered => "await_attestation",
            CallbackFailed => "redeliver_callback",
            ExceptionOpen => "supply_missing_evidence",
            Cancelled => "none",
            Failed => "redrive_run",
            _ => "await_result",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, CallbackDelivered | Cancelled | Failed)
    }
}

pub const ALL: [RunState; 12] = [
    Queued,
    Dispatched,
    Reviewed,
    ExceptionOpen,
    Replaying,
    ResultContracted,
    SettlementReceipted,
    UsageCaptured,
    CallbackDelivered,
    CallbackFailed,
    Cancelled,
    Failed,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn happy_path_is_checked_and_repeats_are_no_ops() {
        let path = [
            Queued,
            Dispatched,
            Reviewed,
            ResultContracted,
            SettlementReceipted,
            UsageCaptured,
            CallbackDelivered,
        ];
        for w in path.windows(2) {
            assert_eq!(w[0].check(w[1]), Transition::Go, "{:?}→{:?}", w[0], w[1]);
            assert_eq!(w[1].check(w[1]), Transition::AlreadyDone);
        }
        assert_eq!(
            UsageCaptured.check(ResultContracted),
            Transition::AlreadyDone
        );
        assert_eq!(Queued.check(UsageCaptured), Transition::Refused);
        assert_eq!(Reviewed.check(CallbackDelivered), Transition::Refused);
    }

    #[test]
    fn exception_replay_and_cancel() {
        assert_eq!(Dispatched.check(ExceptionOpen), Transition::Go);
        assert_eq!(ExceptionOpen.check(Replaying), Transition::Go);
        assert_eq!(Replaying.check(Reviewed), Transition::Go);
        assert_eq!(ExceptionOpen.check(Cancelled), Transition::Go);
        assert_eq!(Queued.check(Cancelled), Transition::Go);
        assert_eq!(UsageCaptured.check(Cancelled), Transition::Refused);
        assert_eq!(Cancelled.check(Dispatched), Transition::Refused);
        assert_eq!(ExceptionOpen.check(ResultContracted), Transition::Refused);
    }

    #[test]
    fn failed_is_entered_from_running_states_and_stops_every_stage() {
        for from in [Dispatched, Reviewed, SettlementReceipted, UsageCaptured] {
            assert_eq!(from.check(Failed), Transition::Go, "{from:?}");
        }
        assert_eq!(Failed.check(Failed), Transition::AlreadyDone);
        assert_eq!(Cancelled.check(Failed), Transition::Refused);
        assert_eq!(ExceptionOpen.check(Failed), Transition::Refused);
        for to in [
            ResultContracted,
            UsageCaptured,
            CallbackDelivered,
            Cancelled,
        ] {
            assert_eq!(Failed.check(to), Transition::Refused, "{to:?}");
        }
        assert_eq!(Failed.next_action(false), "redrive_run");
    }

    #[test]
    fn names_round_trip_and_next_actions_follow_the_seed() {
        for s in ALL {
            assert_eq!(RunState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(CallbackDelivered.as_str(), "callback_delivered");
        assert_eq!(
            CallbackDelivered.next_action(true),
            "ready_for_downstream_agent"
        );
    }
}
