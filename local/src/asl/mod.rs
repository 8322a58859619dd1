//! # A small Amazon States Language (ASL) interpreter
//!
//! Runs state machines written in the [Amazon States Language](https://states-language.net)
//! step by step, with task execution delegated to a [`TaskDispatcher`]. The execution state
//! ([`ExecutionState`]) is a plain serde struct so the caller can checkpoint it after every
//! state and resume after a crash.
//!
//! ## Supported subset (and why)
//!
//! The goal is the part of ASL that sequential workflows need, implemented exactly, rather
//! than all of ASL implemented loosely. Anything outside the subset is *rejected* when the
//! definition is parsed, with an error naming the state and field, never silently ignored.
//!
//! * **States:** `Task`, `Choice`, `Pass`, `Succeed`, `Fail`, `Wait` (`Seconds` only).
//!   `Map` and `Parallel` are rejected: they need concurrent sub-executions, which do not
//!   fit a one-state-at-a-time resumable model.
//! * **Data flow** per the spec: `InputPath` → `Parameters` → task → `ResultSelector` →
//!   `ResultPath` → `OutputPath`, including the `null` forms (`InputPath: null` and
//!   `OutputPath: null` give `{}`, `ResultPath: null` discards the result and keeps the input).
//!   Keys ending in `.$` in `Parameters`/`ResultSelector` take a path or an intrinsic function.
//! * **Paths:** `$`, `$.a.b`, `$.a[0]`, `$['a']`, and the context object `$$.Execution.Name`,
//!   `$$.Execution.Input`, `$$.State.Name`, `$$.State.EnteredTime` (RFC 3339 string),
//!   `$$.State.RetryCount`. No wildcards, filters, slices or recursive descent.
//! * **Intrinsic functions:** `States.Format`, `States.StringToJson`, `States.JsonToString`,
//!   `States.Array` (others are rejected at parse time).
//! * **Choice operators:** `And`, `Or`, `Not`, `String*`, `Numeric*` and `BooleanEquals`
//!   (each also as `…Path`), `StringMatches` (`*` wildcard), `IsPresent`, `IsNull`,
//!   `IsString`, `IsNumeric`, `IsBoolean`. `Timestamp*` operators are not supported.
//! * **Errors:** `Retry` (`ErrorEquals`, `IntervalSeconds`, `MaxAttempts`, `BackoffRate`,
//!   `MaxDelaySeconds`, `JitterStrategy`) and `Catch` (`ErrorEquals`, `Next`, `ResultPath`) on Task states;
//!   `TimeoutSeconds` on tasks raises `States.Timeout`. `States.ALL` and the
//!   `States.TaskFailed` wildcard (everything but `States.Timeout`) are understood.
//!
//! Failures inside the state machine (an uncaught task error, a `Fail` state,
//! `States.NoChoiceMatched`, a path that does not resolve) end the execution with
//! [`ExecutionStatus::Failed`]. As in AWS, data-processing failures (`States.Runtime`,
//! `States.ResultPathMatchFailure`, `States.IntrinsicFailure`) are never retried or caught.
//! [`AslError`] is reserved for faults of the definition or of the caller.
//!
//! ## Resumption and idempotency
//!
//! [`Engine::step`] runs exactly one state (with its retries) and only mutates the
//! [`ExecutionState`] once the state is done, so a checkpoint taken after any step is
//! consistent. A state that was running when the process died is simply run again from the
//! last checkpoint: **tasks must be idempotent**. Timers are not persisted either: a `Wait`
//! or retry interval interrupted by a crash starts over.

mod choice;
mod path;
#[cfg(test)]
mod tests;

use choice::Rule;
use path::{Path, Template};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Faults of the definition or of the caller (not failures of the state machine).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AslError {
    #[error("unresolved definition substitution ${{{0}}}")]
    UnresolvedSubstitution(String),
    #[error("definition is not valid JSON: {0}")]
    Json(String),
    #[error("invalid definition: {0}")]
    Invalid(String),
    #[error("state {state:?} has unsupported type {state_type:?} (supported: Task, Choice, Pass, Succeed, Fail, Wait)")]
    UnsupportedStateType { state: String, state_type: String },
    #[error("state {0:?} does not exist in this definition")]
    UnknownState(String),
    #[error("the execution is not running")]
    NotRunning,
}

/// An error raised by a task (or by the state machine), as `{Error, Cause}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFailure {
    pub error: String,
    pub cause: String,
}

impl TaskFailure {
    pub fn new(error: impl Into<String>, cause: impl Into<String>) -> Self {
        TaskFailure {
            error: error.into(),
            cause: cause.into(),
        }
    }
}

/// Runs the `Resource` of Task states. Implementations must be idempotent (see module docs).
pub trait TaskDispatcher: Send + Sync {
    fn invoke(
        &self,
        resource: &str,
        input: Value,
    ) -> impl Future<Output = Result<Value, TaskFailure>> + Send;
}

/// A parsed and validated state machine.
#[derive(Debug, Clone)]
pub struct Definition {
    start_at: String,
    states: BTreeMap<String, State>,
}

#[derive(Debug, Clone)]
struct State {
    kind: Kind,
    /// `None` for terminal states.
    next: Option<String>,
    io: Io,
}

/// Input/output processing. For paths, `None` is the JSON `null` form; absent fields are `$`.
#[derive(Debug, Clone)]
struct Io {
    input_path: Option<Path>,
    parameters: Option<Template>,
    result_selector: Option<Template>,
    result_path: Option<Path>,
    output_path: Option<Path>,
}

#[derive(Debug, Clone)]
enum Kind {
    Task {
        resource: String,
        retry: Vec<Retrier>,
        catch: Vec<Catcher>,
        timeout: Option<f64>,
    },
    Pass {
        result: Option<Value>,
    },
    Choice {
        choices: Vec<(Rule, String)>,
        default: Option<String>,
    },
    Wait {
        seconds: f64,
    },
    Succeed,
    Fail {
        error: String,
        cause: String,
    },
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Task { .. } => "Task",
            Kind::Pass { .. } => "Pass",
            Kind::Choice { .. } => "Choice",
            Kind::Wait { .. } => "Wait",
            Kind::Succeed => "Succeed",
            Kind::Fail { .. } => "Fail",
        }
    }
}

#[derive(Debug, Clone)]
struct Retrier {
    errors: Vec<String>,
    interval: f64,
    max_attempts: u32,
    backoff: f64,
    max_delay: Option<f64>,
    /// `JitterStrategy: FULL`: each delay is drawn uniformly from [0, capped delay], as AWS does,
    /// so runs failing together do not retry in lockstep.
    full_jitter: bool,
}

impl Retrier {
    /// Delay in seconds before retry number `attempt + 1`, before jitter.
    fn delay(&self, attempt: u32) -> f64 {
        let d = self.interval * self.backoff.powi(attempt as i32);
        self.max_delay.map_or(d, |m| d.min(m))
    }

    /// The delay actually slept: [`Retrier::delay`], jittered when the retrier says so.
    fn sleep_for(&self, attempt: u32) -> f64 {
        let d = self.delay(attempt);
        if self.full_jitter {
            d * rand::random::<f64>()
        } else {
            d
        }
    }
}

#[derive(Debug, Clone)]
struct Catcher {
    errors: Vec<String>,
    next: String,
    result_path: Option<Path>,
}

fn matches_error(names: &[String], error: &str) -> bool {
    names.iter().any(|n| {
        n == error || n == "States.ALL" || (n == "States.TaskFailed" && error != "States.Timeout")
    })
}

/// Replaces every `${Name}`; any name without a substitution is an error.
fn substitute(text: &str, subs: &BTreeMap<String, String>) -> Result<String, AslError> {
    let (mut out, mut rest) = (String::with_capacity(text.len()), text);
    while let Some(i) = rest.find("${") {
        let Some(len) = rest[i + 2..].find('}') else {
            break;
        };
        let name = &rest[i + 2..i + 2 + len];
        let value = subs
            .get(name)
            .ok_or_else(|| AslError::UnresolvedSubstitution(name.to_string()))?;
        out.push_str(&rest[..i]);
        out.push_str(value);
        rest = &rest[i + 3 + len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Typed access to the fields of one JSON object of the definition, with located errors.
struct Fields<'a> {
    what: String,
    m: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn new(what: String, v: &'a Value) -> Result<Self, AslError> {
        let m = v
            .as_object()
            .ok_or_else(|| AslError::Invalid(format!("{what} must be an object")))?;
        Ok(Fields { what, m })
    }
    fn err(&self, msg: impl std::fmt::Display) -> AslError {
        AslError::Invalid(format!("{}: {msg}", self.what))
    }
    fn get(&self, k: &str) -> Option<&'a Value> {
        self.m.get(k)
    }
    fn only(&self, allowed: &[&str]) -> Result<(), AslError> {
        match self.m.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(self.err(format!("field {k:?} is not supported here"))),
            None => Ok(()),
        }
    }
    fn opt_str(&self, k: &str) -> Result<Option<String>, AslError> {
        match self.m.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.err(format!("{k} must be a string"))),
        }
    }
    fn req_str(&self, k: &str) -> Result<String, AslError> {
        self.opt_str(k)?
            .ok_or_else(|| self.err(format!("{k} is required")))
    }
    fn opt_num(&self, k: &str) -> Result<Option<f64>, AslError> {
        match self.m.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("{k} must be a number"))),
        }
    }
    /// Absent means `$`, JSON `null` gives `None`.
    fn path(&self, k: &str) -> Result<Option<Path>, AslError> {
        match self.m.get(k) {
            None => Ok(Some(Path::root())),
            Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Path::parse(s)
                .map(Some)
                .map_err(|e| self.err(format!("{k}: {e}"))),
            Some(_) => Err(self.err(format!("{k} must be a string or null"))),
        }
    }
    fn template(&self, k: &str) -> Result<Option<Template>, AslError> {
        self.m
            .get(k)
            .map(|v| Template::parse(v, k).map_err(|e| self.err(e)))
            .transpose()
    }
    fn list<T>(
        &self,
        k: &str,
        each: fn(&Fields) -> Result<T, AslError>,
        errors: fn(&T) -> &[String],
    ) -> Result<Vec<T>, AslError> {
        let Some(v) = self.get(k) else {
            return Ok(vec![]);
        };
        let arr = v
            .as_array()
            .ok_or_else(|| self.err(format!("{k} must be an array")))?;
        let items = arr
            .iter()
            .enumerate()
            .map(|(i, v)| each(&Fields::new(format!("{}: {k}[{i}]", self.what), v)?))
            .collect::<Result<Vec<T>, _>>()?;
        let all_at = items
            .iter()
            .position(|t| errors(t).iter().any(|e| e == "States.ALL"));
        if all_at.is_some_and(|i| i + 1 != items.len()) {
            return Err(self.err(format!(
                "in {k}, States.ALL must appear only in the last entry"
            )));
        }
        Ok(items)
    }
    fn error_list(&self) -> Result<Vec<String>, AslError> {
        let names = self
            .get("ErrorEquals")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
            .and_then(|a| {
                a.iter()
                    .map(|v| v.as_str().map(String::from))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| self.err("ErrorEquals must be a non-empty array of strings"))?;
        if names.len() > 1 && names.iter().any(|n| n == "States.ALL") {
            return Err(self.err("States.ALL must appear alone in ErrorEquals"));
        }
        Ok(names)
    }
}

fn parse_retrier(f: &Fields) -> Result<Retrier, AslError> {
    f.only(&[
        "ErrorEquals",
        "IntervalSeconds",
        "MaxAttempts",
        "BackoffRate",
        "MaxDelaySeconds",
        "JitterStrategy",
        "Comment",
    ])?;
    let full_jitter = match f.opt_str("JitterStrategy")?.as_deref() {
        None | Some("NONE") => false,
        Some("FULL") => true,
        Some(_) => return Err(f.err("JitterStrategy must be FULL or NONE")),
    };
    let interval = f.opt_num("IntervalSeconds")?.unwrap_or(1.0);
    let max_attempts = f.opt_num("MaxAttempts")?.unwrap_or(3.0);
    let backoff = f.opt_num("BackoffRate")?.unwrap_or(2.0);
    let max_delay = f.opt_num("MaxDelaySeconds")?;
    if interval <= 0.0
        || max_attempts < 0.0
        || max_attempts.fract() != 0.0
        || backoff < 1.0
        || max_delay.is_some_and(|m| m <= 0.0)
    {
        return Err(f.err("need IntervalSeconds > 0, MaxAttempts a non-negative integer, BackoffRate >= 1, MaxDelaySeconds > 0"));
    }
    Ok(Retrier {
        errors: f.error_list()?,
        interval,
        max_attempts: max_attempts as u32,
        backoff,
        max_delay,
        full_jitter,
    })
}

fn parse_catcher(f: &Fields) -> Result<Catcher, AslError> {
    f.only(&["ErrorEquals", "Next", "ResultPath", "Comment"])?;
    let result_path = f.path("ResultPath")?;
    if result_path.as_ref().is_some_and(Path::is_context) {
        return Err(f.err("ResultPath cannot write to the context object"));
    }
    Ok(Catcher {
        errors: f.error_list()?,
        next: f.req_str("Next")?,
        result_path,
    })
}

fn parse_state(name: &str, v: &Value) -> Result<State, AslError> {
    let f = Fields::new(format!("state {name:?}"), v)?;
    let ty = f.req_str("Type")?;
    let allowed: &[&str] = match ty.as_str() {
        "Task" => &[
            "Resource",
            "Parameters",
            "ResultSelector",
            "ResultPath",
            "Retry",
            "Catch",
            "TimeoutSeconds",
            "Next",
            "End",
            "InputPath",
            "OutputPath",
        ],
        "Pass" => &[
            "Parameters",
            "Result",
            "ResultPath",
            "Next",
            "End",
            "InputPath",
            "OutputPath",
        ],
        "Choice" => &["Choices", "Default", "InputPath", "OutputPath"],
        "Wait" => &["Seconds", "Next", "End", "InputPath", "OutputPath"],
        "Succeed" => &["InputPath", "OutputPath"],
        "Fail" => &["Error", "Cause"],
        _ => {
            return Err(AslError::UnsupportedStateType {
                state: name.into(),
                state_type: ty,
            })
        }
    };
    if let Some(k) =
        f.m.keys()
            .find(|k| !["Type", "Comment"].contains(&k.as_str()) && !allowed.contains(&k.as_str()))
    {
        return Err(f.err(format!("field {k:?} is not supported in a {ty} state")));
    }
    let io = Io {
        input_path: f.path("InputPath")?,
        parameters: f.template("Parameters")?,
        result_selector: f.template("ResultSelector")?,
        result_path: f.path("ResultPath")?,
        output_path: f.path("OutputPath")?,
    };
    if io.result_path.as_ref().is_some_and(Path::is_context) {
        return Err(f.err("ResultPath cannot write to the context object"));
    }
    let next = f.opt_str("Next")?;
    let end = match f.get("End") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(f.err("End must be a boolean")),
    };
    if allowed.contains(&"Next") && next.is_some() == end {
        return Err(f.err("needs exactly one of Next or \"End\": true"));
    }
    let kind = match ty.as_str() {
        "Task" => Kind::Task {
            resource: f.req_str("Resource")?,
            retry: f.list("Retry", parse_retrier, |r| &r.errors)?,
            catch: f.list("Catch", parse_catcher, |c| &c.errors)?,
            timeout: match f.opt_num("TimeoutSeconds")? {
                Some(t) if t <= 0.0 => return Err(f.err("TimeoutSeconds must be positive")),
                t => t,
            },
        },
        "Pass" => Kind::Pass {
            result: f.get("Result").cloned(),
        },
        "Choice" => {
            let rules = f
                .get("Choices")
                .and_then(Value::as_array)
                .filter(|a| !a.is_empty());
            let choices = rules
                .ok_or_else(|| f.err("Choices must be a non-empty array"))?
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let (rule, next) = choice::parse_rule(r, true)
                        .map_err(|e| f.err(format!("Choices[{i}]: {e}")))?;
                    Ok((rule, next.unwrap_or_default()))
                })
                .collect::<Result<_, AslError>>()?;
            Kind::Choice {
                choices,
                default: f.opt_str("Default")?,
            }
        }
        "Wait" => Kind::Wait {
            seconds: f
                .opt_num("Seconds")?
                .filter(|s| *s >= 0.0)
                .ok_or_else(|| f.err("Wait needs a non-negative Seconds"))?,
        },
        "Succeed" => Kind::Succeed,
        _ => Kind::Fail {
            error: f.opt_str("Error")?.unwrap_or_default(),
            cause: f.opt_str("Cause")?.unwrap_or_default(),
        },
    };
    Ok(State { kind, next, io })
}

impl Definition {
    /// Substitutes `${Name}` placeholders in the raw text, then parses and validates.
    pub fn parse(
        json_text: &str,
        substitutions: &BTreeMap<String, String>,
    ) -> Result<Definition, AslError> {
        let text = substitute(json_text, substitutions)?;
        let root: Value = serde_json::from_str(&text).map_err(|e| AslError::Json(e.to_string()))?;
        let top = Fields::new("the definition".into(), &root)?;
        top.only(&["StartAt", "States", "Comment", "Version"])?;
        let start_at = top.req_str("StartAt")?;
        let states = top
            .get("States")
            .and_then(Value::as_object)
            .filter(|m| !m.is_empty());
        let states = states
            .ok_or_else(|| top.err("States must be a non-empty object"))?
            .iter()
            .map(|(n, v)| Ok((n.clone(), parse_state(n, v)?)))
            .collect::<Result<BTreeMap<_, _>, AslError>>()?;
        let def = Definition { start_at, states };
        def.validate_targets()?;
        Ok(def)
    }

    fn validate_targets(&self) -> Result<(), AslError> {
        if !self.states.contains_key(&self.start_at) {
            return Err(AslError::Invalid(format!(
                "StartAt {:?} does not name a state",
                self.start_at
            )));
        }
        let check = |from: &str, field: &str, to: &str| match self.states.contains_key(to) {
            true => Ok(()),
            false => Err(AslError::Invalid(format!(
                "state {from:?}: {field} target {to:?} does not exist"
            ))),
        };
        for (name, st) in &self.states {
            if let Some(n) = &st.next {
                check(name, "Next", n)?;
            }
            match &st.kind {
                Kind::Task { catch, .. } => catch
                    .iter()
                    .try_for_each(|c| check(name, "Catch Next", &c.next))?,
                Kind::Choice { choices, default } => {
                    choices
                        .iter()
                        .try_for_each(|(_, n)| check(name, "Choices Next", n))?;
                    default.iter().try_for_each(|d| check(name, "Default", d))?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn start_at(&self) -> &str {
        &self.start_at
    }

    /// The `Type` of a state, if it exists.
    pub fn state_type(&self, name: &str) -> Option<&'static str> {
        self.states.get(name).map(|s| s.kind.name())
    }
}

/// Where an execution stands. Serialized with a `"status"` tag.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "status")]
pub enum ExecutionStatus {
    Running,
    Succeeded { output: Value },
    Failed { error: String, cause: String },
}

/// One state run, as recorded in [`ExecutionState::history`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HistoryEvent {
    pub state: String,
    pub state_type: String,
    /// The state's raw input.
    pub input: Value,
    /// The state's output; `None` when the state failed the execution.
    pub output: Option<Value>,
    /// The error raised in this state, whether a Catch handled it or it failed the execution.
    pub error: Option<TaskFailure>,
    /// The state that runs next; `None` when the execution ended here.
    pub next: Option<String>,
    /// Retries used (over all retriers).
    pub retries: u32,
}

/// The complete, serializable progress of one execution.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExecutionState {
    /// The execution name (`$$.Execution.Name`).
    pub name: String,
    /// The execution's input (`$$.Execution.Input`).
    pub execution_input: Value,
    /// The state to run next; `None` when finished.
    pub current: Option<String>,
    /// That state's raw input (`null` once finished).
    pub input: Value,
    pub status: ExecutionStatus,
    pub history: Vec<HistoryEvent>,
    /// How often the execution was redriven.
    #[serde(default)]
    pub redrive_count: u32,
}

impl ExecutionState {
    pub fn start(def: &Definition, name: impl Into<String>, input: Value) -> Self {
        ExecutionState {
            name: name.into(),
            execution_input: input.clone(),
            current: Some(def.start_at.clone()),
            input,
            status: ExecutionStatus::Running,
            history: vec![],
            redrive_count: 0,
        }
    }

    pub fn is_finished(&self) -> bool {
        !matches!(self.status, ExecutionStatus::Running)
    }

    /// Step Functions' `RedriveExecution`: a failed execution runs again from the state that
    /// failed, with that state's input (its retry counts start over); every state before it
    /// keeps its result and does not run again. Returns false if the execution is not failed.
    pub fn redrive(&mut self) -> bool {
        if !matches!(self.status, ExecutionStatus::Failed { .. }) {
            return false;
        }
        let Some(failed) = self.history.iter().rev().find(|e| e.output.is_none()) else {
            return false;
        };
        (self.current, self.input) = (Some(failed.state.clone()), failed.input.clone());
        self.status = ExecutionStatus::Running;
        self.redrive_count += 1;
        true
    }
}

impl Io {
    fn select_input(&self, raw: &Value, ctx: &Value) -> Result<Value, TaskFailure> {
        self.input_path
            .as_ref()
            .map_or(Ok(json!({})), |p| p.resolve(raw, ctx, "InputPath"))
    }
    fn effective_input(&self, raw: &Value, ctx: &Value) -> Result<Value, TaskFailure> {
        let v = self.select_input(raw, ctx)?;
        match &self.parameters {
            Some(t) => t.eval(&v, ctx),
            None => Ok(v),
        }
    }
    /// Applies ResultPath (against the raw input) and then OutputPath.
    fn output(&self, raw: &Value, result: Value, ctx: &Value) -> Result<Value, TaskFailure> {
        let combined = match &self.result_path {
            None => raw.clone(),
            Some(p) => p.set(raw.clone(), result)?,
        };
        self.filter_output(combined, ctx)
    }
    fn filter_output(&self, v: Value, ctx: &Value) -> Result<Value, TaskFailure> {
        self.output_path
            .as_ref()
            .map_or(Ok(json!({})), |p| p.resolve(&v, ctx, "OutputPath"))
    }
}

/// The result of running one state without failing the execution.
struct Moved {
    output: Value,
    next: Option<String>,
    caught: Option<TaskFailure>,
}

/// Runs definitions. Holds only configuration, so one engine can serve many executions.
#[derive(Debug, Clone)]
pub struct Engine {
    time_scale: f64,
}

impl Default for Engine {
    fn default() -> Self {
        Engine { time_scale: 1.0 }
    }
}

impl Engine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Multiplies every delay (Wait, Retry intervals, TimeoutSeconds) by `scale`, e.g. 0.001 in tests.
    pub fn with_time_scale(mut self, scale: f64) -> Self {
        self.time_scale = scale;
        self
    }

    fn scaled(&self, secs: f64) -> Duration {
        Duration::try_from_secs_f64((secs * self.time_scale).max(0.0)).unwrap_or(Duration::MAX)
    }

    /// Runs the current state (including its Retry loop) and advances `ex`.
    /// `ex` is only modified once the state has finished, so dropping the future is safe.
    pub async fn step<D: TaskDispatcher>(
        &self,
        def: &Definition,
        ex: &mut ExecutionState,
        dispatcher: &D,
    ) -> Result<(), AslError> {
        let name = match (&ex.status, &ex.current) {
            (ExecutionStatus::Running, Some(n)) => n.clone(),
            _ => return Err(AslError::NotRunning),
        };
        let st = def
            .states
            .get(&name)
            .ok_or_else(|| AslError::UnknownState(name.clone()))?;
        let mut retries = 0;
        let outcome = self
            .run_state(st, &name, ex, dispatcher, &mut retries)
            .await;
        let input = std::mem::take(&mut ex.input);
        let mut event = HistoryEvent {
            state: name,
            state_type: st.kind.name().into(),
            input,
            output: None,
            error: None,
            next: None,
            retries,
        };
        match outcome {
            Ok(m) => {
                match &m.next {
                    Some(n) => (ex.current, ex.input) = (Some(n.clone()), m.output.clone()),
                    None => {
                        (ex.current, ex.status) = (
                            None,
                            ExecutionStatus::Succeeded {
                                output: m.output.clone(),
                            },
                        )
                    }
                }
                (event.output, event.error, event.next) = (Some(m.output), m.caught, m.next);
            }
            Err(f) => {
                ex.current = None;
                ex.status = ExecutionStatus::Failed {
                    error: f.error.clone(),
                    cause: f.cause.clone(),
                };
                event.error = Some(f);
            }
        }
        ex.history.push(event);
        Ok(())
    }

    /// Steps until the execution finishes, calling `on_step` (e.g. to checkpoint) after each state.
    pub async fn run<D: TaskDispatcher>(
        &self,
        def: &Definition,
        ex: &mut ExecutionState,
        dispatcher: &D,
        mut on_step: impl FnMut(&ExecutionState),
    ) -> Result<(), AslError> {
        while !ex.is_finished() {
            self.step(def, ex, dispatcher).await?;
            on_step(ex);
        }
        Ok(())
    }

    async fn run_state<D: TaskDispatcher>(
        &self,
        st: &State,
        name: &str,
        ex: &ExecutionState,
        d: &D,
        retries: &mut u32,
    ) -> Result<Moved, TaskFailure> {
        let entered = now_rfc3339();
        let ctx = |retry_count: u32| {
            json!({
                "Execution": {"Name": ex.name, "Input": ex.execution_input},
                "State": {"Name": name, "EnteredTime": entered, "RetryCount": retry_count},
            })
        };
        let (raw, io) = (&ex.input, &st.io);
        let done = |output: Value, next: Option<&String>| {
            Ok(Moved {
                output,
                next: next.cloned(),
                caught: None,
            })
        };
        match &st.kind {
            Kind::Fail { error, cause } => Err(TaskFailure::new(error, cause)),
            Kind::Succeed => {
                let c = ctx(0);
                done(io.filter_output(io.select_input(raw, &c)?, &c)?, None)
            }
            Kind::Pass { result } => {
                let c = ctx(0);
                let effective = io.effective_input(raw, &c)?;
                done(
                    io.output(raw, result.clone().unwrap_or(effective), &c)?,
                    st.next.as_ref(),
                )
            }
            Kind::Wait { seconds } => {
                let c = ctx(0);
                let effective = io.select_input(raw, &c)?;
                tokio::time::sleep(self.scaled(*seconds)).await;
                done(io.filter_output(effective, &c)?, st.next.as_ref())
            }
            Kind::Choice { choices, default } => {
                let c = ctx(0);
                let effective = io.select_input(raw, &c)?;
                let mut target = default.as_ref();
                for (rule, next) in choices {
                    if rule.eval(&effective, &c)? {
                        target = Some(next);
                        break;
                    }
                }
                let target = target.ok_or_else(|| {
                    TaskFailure::new(
                        "States.NoChoiceMatched",
                        format!("No Choice rule matched in state '{name}' and it has no Default"),
                    )
                })?;
                done(io.filter_output(effective, &c)?, Some(target))
            }
            Kind::Task {
                resource,
                retry,
                catch,
                timeout,
            } => {
                let mut counts = vec![0u32; retry.len()];
                let failure = loop {
                    let c = ctx(*retries);
                    let payload = io.effective_input(raw, &c)?;
                    let f = match self.invoke(d, resource, payload, *timeout).await {
                        Ok(result) => {
                            let result = match &io.result_selector {
                                Some(t) => t.eval(&result, &c)?,
                                None => result,
                            };
                            return done(io.output(raw, result, &c)?, st.next.as_ref());
                        }
                        Err(f) => f,
                    };
                    // The first retrier that matches decides; once it is exhausted we go to Catch.
                    match retry
                        .iter()
                        .position(|r| matches_error(&r.errors, &f.error))
                    {
                        Some(i) if counts[i] < retry[i].max_attempts => {
                            let wait = self.scaled(retry[i].sleep_for(counts[i]));
                            // An operator sees why a run is waiting (an outage shows as these).
                            tracing::warn!(
                                execution = %ex.name,
                                state = name,
                                error = %f.error,
                                retry = counts[i] + 1,
                                of = retry[i].max_attempts,
                                wait_ms = wait.as_millis() as u64,
                                "task failed; retrying"
                            );
                            tokio::time::sleep(wait).await;
                            counts[i] += 1;
                            *retries += 1;
                        }
                        _ => break f,
                    }
                };
                let Some(catcher) = catch
                    .iter()
                    .find(|c| matches_error(&c.errors, &failure.error))
                else {
                    return Err(failure);
                };
                let error_output = json!({"Error": failure.error, "Cause": failure.cause});
                let output = match &catcher.result_path {
                    None => raw.clone(),
                    Some(p) => p.set(raw.clone(), error_output)?,
                };
                Ok(Moved {
                    output,
                    next: Some(catcher.next.clone()),
                    caught: Some(failure),
                })
            }
        }
    }

    async fn invoke<D: TaskDispatcher>(
        &self,
        d: &D,
        resource: &str,
        input: Value,
        timeout: Option<f64>,
    ) -> Result<Value, TaskFailure> {
        let call = d.invoke(resource, input);
        match timeout {
            None => call.await,
            Some(t) => tokio::time::timeout(self.scaled(t), call)
                .await
                .unwrap_or_else(|_| {
                    Err(TaskFailure::new(
                        "States.Timeout",
                        format!("Task did not finish within {t} seconds"),
                    ))
                }),
        }
    }
}

/// The current UTC time as RFC 3339 with milliseconds, e.g. `2024-05-01T12:00:00.000Z`.
fn now_rfc3339() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, ms) = (now.as_secs() as i64, now.subsec_millis());
    // Civil date from days since 1970-01-01 (proleptic Gregorian, 400-year eras).
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let sod = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}
