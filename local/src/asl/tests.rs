use super::*;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

type Handler = Box<dyn Fn(&str, &Value, usize) -> Result<Value, TaskFailure> + Send + Sync>;

/// A dispatcher driven by a closure `(resource, input, call_number)`; it records every call.
struct Mock {
    handler: Handler,
    calls: AtomicUsize,
    log: Mutex<Vec<(String, Value)>>,
}

impl Mock {
    fn new(
        f: impl Fn(&str, &Value, usize) -> Result<Value, TaskFailure> + Send + Sync + 'static,
    ) -> Self {
        Mock {
            handler: Box::new(f),
            calls: AtomicUsize::new(0),
            log: Mutex::new(vec![]),
        }
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn inputs(&self) -> Vec<Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl TaskDispatcher for Mock {
    async fn invoke(&self, resource: &str, input: Value) -> Result<Value, TaskFailure> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        self.log
            .lock()
            .unwrap()
            .push((resource.to_string(), input.clone()));
        (self.handler)(resource, &input, n)
    }
}

fn echo() -> Mock {
    Mock::new(|_, v, _| Ok(v.clone()))
}

fn parse(def: Value) -> Result<Definition, AslError> {
    Definition::parse(&def.to_string(), &BTreeMap::new())
}

fn def(def: Value) -> Definition {
    parse(def).unwrap()
}

/// A definition with one Task state `T` (resource `arn:x`) plus the given fields.
fn single_task(extra: Value) -> Definition {
    let mut task = json!({"Type": "Task", "Resource": "arn:x", "End": true});
    task.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    def(json!({"StartAt": "T", "States": {"T": task}}))
}

fn engine() -> Engine {
    Engine::new().with_time_scale(0.001)
}

async fn run(def: &Definition, input: Value, d: &Mock) -> ExecutionState {
    let mut ex = ExecutionState::start(def, "exec-1", input);
    engine().run(def, &mut ex, d, |_| {}).await.unwrap();
    ex
}

fn output(ex: &ExecutionState) -> Value {
    match &ex.status {
        ExecutionStatus::Succeeded { output } => output.clone(),
        other => panic!("expected success, got {other:?}"),
    }
}

fn failed(ex: &ExecutionState) -> (String, String) {
    match &ex.status {
        ExecutionStatus::Failed { error, cause } => (error.clone(), cause.clone()),
        other => panic!("expected failure, got {other:?}"),
    }
}

#[tokio::test]
async fn task_default_io_uses_result_as_output() {
    let d = Mock::new(|r, v, _| Ok(json!({"resource": r, "got": v})));
    let ex = run(&single_task(json!({})), json!({"a": 1}), &d).await;
    assert_eq!(output(&ex), json!({"resource": "arn:x", "got": {"a": 1}}));
    let ev = &ex.history[0];
    assert_eq!(
        (ev.state.as_str(), ev.state_type.as_str(), ev.retries),
        ("T", "Task", 0)
    );
    assert_eq!(
        (&ev.input, &ev.next, &ev.error),
        (&json!({"a": 1}), &None, &None)
    );
    assert_eq!(ex.current, None);
}

#[tokio::test]
async fn task_input_path_and_parameters() {
    let d = echo();
    let params = json!({
        "id.$": "$.id", "second.$": "$.items[1]", "odd.$": "$['odd key']",
        "exec.$": "$$.Execution.Name", "state.$": "$$.State.Name", "orig.$": "$$.Execution.Input.other",
        "fixed": 5, "nested": {"deep.$": "$.id"}, "list": [{"x.$": "$.items[0]"}, "lit"]
    });
    let def = single_task(json!({"InputPath": "$.payload", "Parameters": params}));
    let input = json!({"payload": {"id": "p1", "items": [10, 20], "odd key": true}, "other": 0});
    run(&def, input, &d).await;
    let expected = json!({
        "id": "p1", "second": 20, "odd": true, "exec": "exec-1", "state": "T", "orig": 0,
        "fixed": 5, "nested": {"deep": "p1"}, "list": [{"x": 10}, "lit"]
    });
    assert_eq!(d.inputs(), vec![expected]);
}

#[tokio::test]
async fn task_result_selector_result_path_output_path() {
    let d = Mock::new(|_, _, _| Ok(json!({"body": {"v": 7}, "meta": 1})));
    let def = single_task(json!({
        "ResultSelector": {"v.$": "$.body.v", "k": "c"}, "ResultPath": "$.res.inner", "OutputPath": "$.res"
    }));
    let ex = run(&def, json!({"keep": true}), &d).await;
    assert_eq!(output(&ex), json!({"inner": {"v": 7, "k": "c"}}));
    // Without OutputPath the raw input is kept next to the result.
    let def = single_task(json!({"ResultSelector": {"v.$": "$.body.v"}, "ResultPath": "$.res"}));
    let ex = run(&def, json!({"keep": true, "res": "old"}), &d).await;
    assert_eq!(output(&ex), json!({"keep": true, "res": {"v": 7}}));
}

#[tokio::test]
async fn task_null_paths() {
    let d = Mock::new(|_, _, _| Ok(json!("result")));
    let def = single_task(json!({"InputPath": null, "ResultPath": null}));
    let ex = run(&def, json!({"a": 1}), &d).await;
    assert_eq!(d.inputs(), vec![json!({})]);
    assert_eq!(output(&ex), json!({"a": 1}));
    let ex = run(
        &single_task(json!({"OutputPath": null})),
        json!({"a": 1}),
        &d,
    )
    .await;
    assert_eq!(output(&ex), json!({}));
}

#[tokio::test]
async fn result_path_into_non_object_fails() {
    let d = Mock::new(|_, _, _| Ok(json!(1)));
    let ex = run(
        &single_task(json!({"ResultPath": "$.x.y"})),
        json!({"x": "str"}),
        &d,
    )
    .await;
    assert_eq!(failed(&ex).0, "States.ResultPathMatchFailure");
}

#[tokio::test]
async fn unresolvable_paths_are_runtime_errors() {
    let d = echo();
    let ex = run(
        &single_task(json!({"InputPath": "$.nope"})),
        json!({"a": 1}),
        &d,
    )
    .await;
    assert_eq!(failed(&ex).0, "States.Runtime");
    let def = single_task(
        json!({"Parameters": {"x.$": "$.missing"}, "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "T"}]}),
    );
    let ex = run(&def, json!({"a": 1}), &d).await;
    assert_eq!(
        failed(&ex),
        ("States.Runtime".into(), "The JSONPath '$.missing' specified for the field 'x.$' could not be found in the input".into())
    );
    assert_eq!(
        d.calls(),
        0,
        "the task must not run, and States.ALL must not catch States.Runtime"
    );
    let ex = run(&single_task(json!({"OutputPath": "$.zz"})), json!({}), &d).await;
    assert_eq!(failed(&ex).0, "States.Runtime");
}

#[tokio::test]
async fn pass_result_result_path_and_parameters() {
    let pass = |p: Value| {
        let mut s = json!({"Type": "Pass", "End": true});
        s.as_object_mut()
            .unwrap()
            .extend(p.as_object().unwrap().clone());
        def(json!({"StartAt": "P", "States": {"P": s}}))
    };
    let input = json!({"a": 1});
    let ex = run(
        &pass(json!({"Result": {"r": 1}, "ResultPath": "$.out"})),
        input.clone(),
        &echo(),
    )
    .await;
    assert_eq!(output(&ex), json!({"a": 1, "out": {"r": 1}}));
    let ex = run(&pass(json!({"Result": "x"})), input.clone(), &echo()).await;
    assert_eq!(output(&ex), json!("x"));
    let ex = run(&pass(json!({})), input.clone(), &echo()).await;
    assert_eq!(output(&ex), input);
    let ex = run(
        &pass(json!({"Parameters": {"b.$": "$.a"}, "ResultPath": "$.p"})),
        input.clone(),
        &echo(),
    )
    .await;
    assert_eq!(output(&ex), json!({"a": 1, "p": {"b": 1}}));
    assert_eq!(ex.history[0].state_type, "Pass");
}

#[tokio::test]
async fn intrinsic_functions() {
    let def = def(
        json!({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": true, "Parameters": {
            "msg.$": "States.Format('Hello {}, you are {} \\{x\\} it\\'s', $.name, $.age)",
            "parsed.$": "States.StringToJson($.raw)",
            "text.$": "States.JsonToString($.obj)",
            "arr.$": "States.Array(1, 'two', $.name, States.Format('{}!', $.age))"
        }}}}),
    );
    let input = json!({"name": "Ann", "age": 30, "raw": "{\"k\":[1,2]}", "obj": {"a": true}});
    let ex = run(&def, input, &echo()).await;
    assert_eq!(
        output(&ex),
        json!({"msg": "Hello Ann, you are 30 {x} it's", "parsed": {"k": [1, 2]}, "text": "{\"a\":true}", "arr": [1, "two", "Ann", "30!"]})
    );
    let bad = single_task(json!({"Parameters": {"m.$": "States.Format('{} {}', $.a)"}}));
    let ex = run(&bad, json!({"a": 1}), &echo()).await;
    assert_eq!(failed(&ex).0, "States.IntrinsicFailure");
}

#[tokio::test]
async fn unsupported_intrinsic_is_rejected_naming_the_field() {
    let err = parse(
        json!({"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "r", "End": true,
        "Parameters": {"h.$": "States.Hash($.a, 'SHA-1')"}}}}),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("state \"T\"")
            && msg.contains("Parameters.h.$")
            && msg.contains("States.Hash"),
        "{msg}"
    );
}

async fn choose(mut rule: Value, input: Value) -> Value {
    rule["Next"] = json!("Yes");
    let def = def(json!({"StartAt": "C", "States": {
        "C": {"Type": "Choice", "Choices": [rule], "Default": "No"},
        "Yes": {"Type": "Pass", "Result": "yes", "End": true},
        "No": {"Type": "Pass", "Result": "no", "End": true}
    }}));
    output(&run(&def, input, &echo()).await)
}

#[tokio::test]
async fn choice_operators() {
    let input =
        json!({"s": "abc", "n": 5, "f": 5.0, "b": true, "z": null, "other": "abc", "star": "a*c"});
    let v = |var: &str, op: &str, val: Value| json!({"Variable": var, op: val});
    let cases = [
        (v("$.s", "StringEquals", json!("abc")), "yes"),
        (v("$.s", "StringEquals", json!("abd")), "no"),
        (v("$.s", "StringEqualsPath", json!("$.other")), "yes"),
        (v("$.s", "StringLessThan", json!("abd")), "yes"),
        (v("$.s", "StringGreaterThanEquals", json!("abd")), "no"),
        (v("$.n", "StringEquals", json!("5")), "no"),
        (v("$.n", "NumericEquals", json!(5)), "yes"),
        (v("$.n", "NumericEqualsPath", json!("$.f")), "yes"),
        (v("$.n", "NumericEquals", json!(6)), "no"),
        (v("$.n", "NumericLessThan", json!(6)), "yes"),
        (v("$.n", "NumericLessThan", json!(5)), "no"),
        (v("$.n", "NumericGreaterThan", json!(4.5)), "yes"),
        (v("$.n", "NumericGreaterThan", json!(5)), "no"),
        (v("$.n", "NumericGreaterThanEquals", json!(5)), "yes"),
        (v("$.n", "NumericLessThanEquals", json!(4)), "no"),
        (v("$.n", "NumericLessThanEquals", json!(5)), "yes"),
        (v("$.s", "NumericEquals", json!(5)), "no"),
        (v("$.b", "BooleanEquals", json!(true)), "yes"),
        (v("$.b", "BooleanEquals", json!(false)), "no"),
        (v("$.s", "IsPresent", json!(true)), "yes"),
        (v("$.missing", "IsPresent", json!(true)), "no"),
        (v("$.missing", "IsPresent", json!(false)), "yes"),
        (v("$.z", "IsNull", json!(true)), "yes"),
        (v("$.s", "IsNull", json!(true)), "no"),
        (v("$.n", "IsNumeric", json!(true)), "yes"),
        (v("$.s", "IsString", json!(false)), "no"),
        (v("$.s", "StringMatches", json!("a*c")), "yes"),
        (v("$.s", "StringMatches", json!("*b*")), "yes"),
        (v("$.s", "StringMatches", json!("a*d")), "no"),
        (v("$.star", "StringMatches", json!("a\\*c")), "yes"),
        (v("$.s", "StringMatches", json!("a\\*c")), "no"),
        (
            json!({"And": [v("$.s", "StringEquals", json!("abc")), v("$.n", "NumericGreaterThan", json!(1))]}),
            "yes",
        ),
        (
            json!({"And": [v("$.s", "StringEquals", json!("abc")), v("$.n", "NumericGreaterThan", json!(10))]}),
            "no",
        ),
        (
            json!({"Or": [v("$.n", "NumericGreaterThan", json!(10)), v("$.b", "BooleanEquals", json!(true))]}),
            "yes",
        ),
        (
            json!({"Or": [v("$.n", "NumericGreaterThan", json!(10)), v("$.b", "BooleanEquals", json!(false))]}),
            "no",
        ),
        (json!({"Not": v("$.s", "StringEquals", json!("x"))}), "yes"),
        (json!({"Not": v("$.s", "StringEquals", json!("abc"))}), "no"),
        (
            json!({"Not": {"And": [v("$.b", "BooleanEquals", json!(true)), {"Or": [v("$.z", "IsNull", json!(false))]}]}}),
            "yes",
        ),
    ];
    for (rule, want) in cases {
        assert_eq!(
            choose(rule.clone(), input.clone()).await,
            json!(want),
            "rule {rule}"
        );
    }
}

#[tokio::test]
async fn choice_passes_input_and_handles_no_match() {
    let def = def(json!({"StartAt": "C", "States": {
        "C": {"Type": "Choice", "InputPath": "$.in", "OutputPath": "$.keep",
              "Choices": [{"Variable": "$.n", "NumericEquals": 1, "Next": "One"}]},
        "One": {"Type": "Succeed"}
    }}));
    let ex = run(&def, json!({"in": {"n": 1, "keep": {"k": 2}}}), &echo()).await;
    assert_eq!(output(&ex), json!({"k": 2}));
    assert_eq!(
        ex.history
            .iter()
            .map(|e| e.state.as_str())
            .collect::<Vec<_>>(),
        ["C", "One"]
    );
    let ex = run(&def, json!({"in": {"n": 2}}), &echo()).await;
    assert_eq!(failed(&ex).0, "States.NoChoiceMatched");
    let ex = run(&def, json!({"in": {"x": 1}}), &echo()).await;
    assert_eq!(
        failed(&ex).0,
        "States.Runtime",
        "a missing Variable is a runtime error"
    );
}

#[tokio::test]
async fn succeed_and_fail_states() {
    let def = def(
        json!({"StartAt": "S", "States": {"S": {"Type": "Succeed", "InputPath": "$.a", "OutputPath": "$.b"}}}),
    );
    let ex = run(&def, json!({"a": {"b": [1]}}), &echo()).await;
    assert_eq!(output(&ex), json!([1]));
    let def = def_fail();
    let ex = run(&def, json!({}), &echo()).await;
    assert_eq!(
        ex.status,
        ExecutionStatus::Failed {
            error: "MyError".into(),
            cause: "because".into()
        }
    );
    let ev = &ex.history[0];
    assert_eq!(
        (ev.state_type.as_str(), &ev.output, &ev.error),
        ("Fail", &None, &Some(TaskFailure::new("MyError", "because")))
    );
}

fn def_fail() -> Definition {
    def(
        json!({"StartAt": "F", "States": {"F": {"Type": "Fail", "Error": "MyError", "Cause": "because"}}}),
    )
}

#[tokio::test]
async fn wait_sleeps_scaled_and_passes_input() {
    let def = def(
        json!({"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 30, "Next": "S"}, "S": {"Type": "Succeed"}}}),
    );
    let start = std::time::Instant::now();
    let ex = run(&def, json!({"a": 1}), &echo()).await;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(30) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    assert_eq!(output(&ex), json!({"a": 1}));
}

#[tokio::test]
async fn retry_succeeds_after_two_failures() {
    let d = Mock::new(|_, _, n| {
        if n < 2 {
            Err(TaskFailure::new("Flaky", "try again"))
        } else {
            Ok(json!({"n": n}))
        }
    });
    let def = single_task(
        json!({"Retry": [{"ErrorEquals": ["Flaky"], "IntervalSeconds": 2, "MaxAttempts": 3}]}),
    );
    let ex = run(&def, json!({}), &d).await;
    assert_eq!(d.calls(), 3);
    assert_eq!(output(&ex), json!({"n": 2}));
    assert_eq!((ex.history[0].retries, &ex.history[0].error), (2, &None));
}

#[tokio::test]
async fn retry_exhausts_then_catch_routes_with_result_path() {
    let d = Mock::new(|_, _, _| Err(TaskFailure::new("Boom", "bad")));
    let def = def(json!({"StartAt": "T", "States": {
        "T": {"Type": "Task", "Resource": "r", "End": true,
              "Retry": [{"ErrorEquals": ["Boom"], "MaxAttempts": 2, "BackoffRate": 1.5}],
              "Catch": [{"ErrorEquals": ["Other"], "Next": "Wrong"}, {"ErrorEquals": ["Boom"], "Next": "Handler", "ResultPath": "$.error"}]},
        "Handler": {"Type": "Pass", "End": true},
        "Wrong": {"Type": "Fail"}
    }}));
    let ex = run(&def, json!({"orig": 1}), &d).await;
    assert_eq!(d.calls(), 3);
    assert_eq!(
        output(&ex),
        json!({"orig": 1, "error": {"Error": "Boom", "Cause": "bad"}})
    );
    let ev = &ex.history[0];
    assert_eq!(
        (ev.retries, &ev.error, &ev.next),
        (
            2,
            &Some(TaskFailure::new("Boom", "bad")),
            &Some("Handler".to_string())
        )
    );
}

#[tokio::test]
async fn retriers_are_ordered_and_counted_separately() {
    let seq = |n: usize| match n {
        0 | 2 => Err(TaskFailure::new("A", "")),
        1 => Err(TaskFailure::new("B", "")),
        _ => Ok(json!("ok")),
    };
    let d = Mock::new(move |_, _, n| seq(n));
    let def = single_task(
        json!({"Retry": [{"ErrorEquals": ["A"], "MaxAttempts": 2}, {"ErrorEquals": ["B"], "MaxAttempts": 1}]}),
    );
    let ex = run(&def, json!({}), &d).await;
    assert_eq!(
        (output(&ex), d.calls(), ex.history[0].retries),
        (json!("ok"), 4, 3)
    );
    // The first matching retrier decides even when exhausted (MaxAttempts 0 = never retry).
    let d = Mock::new(move |_, _, n| seq(n));
    let def = single_task(
        json!({"Retry": [{"ErrorEquals": ["A"], "MaxAttempts": 0}, {"ErrorEquals": ["States.ALL"]}]}),
    );
    let ex = run(&def, json!({}), &d).await;
    assert_eq!((failed(&ex).0, d.calls()), ("A".to_string(), 1));
}

#[tokio::test]
async fn states_all_and_task_failed_matching() {
    let def = def(json!({"StartAt": "T", "States": {
        "T": {"Type": "Task", "Resource": "r", "End": true, "Catch": [
            {"ErrorEquals": ["States.TaskFailed"], "Next": "TF", "ResultPath": "$.e"},
            {"ErrorEquals": ["States.ALL"], "Next": "All", "ResultPath": "$.e"}]},
        "TF": {"Type": "Pass", "Result": "task-failed", "End": true},
        "All": {"Type": "Pass", "Result": "all", "End": true}
    }}));
    let d = Mock::new(|_, v, _| Err(TaskFailure::new(v["err"].as_str().unwrap(), "")));
    assert_eq!(
        output(&run(&def, json!({"err": "Custom"}), &d).await),
        json!("task-failed")
    );
    assert_eq!(
        output(&run(&def, json!({"err": "States.Timeout"}), &d).await),
        json!("all")
    );
}

struct Slow;
impl TaskDispatcher for Slow {
    async fn invoke(&self, _: &str, _: Value) -> Result<Value, TaskFailure> {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok(Value::Null)
    }
}

#[tokio::test]
async fn timeout_seconds_raises_states_timeout() {
    let def = single_task(
        json!({"TimeoutSeconds": 5, "Catch": [{"ErrorEquals": ["States.TaskFailed"], "Next": "T"}]}),
    );
    let mut ex = ExecutionState::start(&def, "e", json!({}));
    engine().run(&def, &mut ex, &Slow, |_| {}).await.unwrap();
    assert_eq!(
        failed(&ex),
        (
            "States.Timeout".into(),
            "Task did not finish within 5 seconds".into()
        )
    );
}

#[tokio::test]
async fn uncaught_task_error_fails_execution() {
    let d = Mock::new(|_, _, _| Err(TaskFailure::new("Boom", "bad")));
    let def = single_task(json!({"Catch": [{"ErrorEquals": ["Other"], "Next": "T"}]}));
    let ex = run(&def, json!({}), &d).await;
    assert_eq!(
        ex.status,
        ExecutionStatus::Failed {
            error: "Boom".into(),
            cause: "bad".into()
        }
    );
    assert_eq!(
        (ex.history.len(), &ex.history[0].output, ex.current.as_ref()),
        (1, &None, None)
    );
}

#[tokio::test]
async fn context_retry_count_and_entered_time() {
    let def = single_task(json!({
        "Parameters": {"rc.$": "$$.State.RetryCount", "t.$": "$$.State.EnteredTime", "in.$": "$$.Execution.Input"},
        "Retry": [{"ErrorEquals": ["States.ALL"]}]
    }));
    let d = Mock::new(|_, _, n| {
        if n < 2 {
            Err(TaskFailure::new("X", ""))
        } else {
            Ok(json!(null))
        }
    });
    run(&def, json!({"a": 1}), &d).await;
    let inputs = d.inputs();
    assert_eq!(
        inputs.iter().map(|v| v["rc"].clone()).collect::<Vec<_>>(),
        [json!(0), json!(1), json!(2)]
    );
    assert_eq!(inputs[0]["in"], json!({"a": 1}));
    let t = inputs[0]["t"].as_str().unwrap();
    let b = t.as_bytes();
    assert!(
        t.len() == 24 && t.starts_with("20") && t.ends_with('Z') && b[10] == b'T' && b[19] == b'.',
        "{t}"
    );
}

#[test]
fn substitutions() {
    let text = r#"{"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "${Fn}", "TimeoutSeconds": ${Secs}, "End": true}}}"#;
    let subs = BTreeMap::from([
        ("Fn".to_string(), "arn:aws:lambda:fn".to_string()),
        ("Secs".to_string(), "3".to_string()),
    ]);
    let def = Definition::parse(text, &subs).unwrap();
    match &def.states["T"].kind {
        Kind::Task {
            resource, timeout, ..
        } => assert_eq!(
            (resource.as_str(), *timeout),
            ("arn:aws:lambda:fn", Some(3.0))
        ),
        other => panic!("{other:?}"),
    }
    let subs = BTreeMap::from([("Fn".to_string(), "x".to_string())]);
    assert_eq!(
        Definition::parse(text, &subs).unwrap_err(),
        AslError::UnresolvedSubstitution("Secs".into())
    );
}

#[test]
fn validation_errors() {
    let one = |state: Value| {
        parse(json!({"StartAt": "A", "States": {"A": state, "B": {"Type": "Succeed"}}}))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        one(json!({"Type": "Pass", "Next": "Nowhere"})),
        "invalid definition: state \"A\": Next target \"Nowhere\" does not exist"
    );
    assert_eq!(
        parse(json!({"StartAt": "A", "States": {"A": {"Type": "Bogus"}}})).unwrap_err(),
        AslError::UnsupportedStateType {
            state: "A".into(),
            state_type: "Bogus".into()
        }
    );
    assert_eq!(
        parse(json!({"StartAt": "A", "States": {"A": {"Type": "Map", "End": true}}})).unwrap_err(),
        AslError::UnsupportedStateType {
            state: "A".into(),
            state_type: "Map".into()
        }
    );
    assert_eq!(
        parse(json!({"StartAt": "X", "States": {"A": {"Type": "Succeed"}}})).unwrap_err(),
        AslError::Invalid("StartAt \"X\" does not name a state".into())
    );
    assert_eq!(
        one(json!({"Type": "Pass"})),
        "invalid definition: state \"A\": needs exactly one of Next or \"End\": true"
    );
    assert_eq!(
        one(json!({"Type": "Pass", "Next": "B", "End": true})),
        "invalid definition: state \"A\": needs exactly one of Next or \"End\": true"
    );
    assert_eq!(
        one(json!({"Type": "Pass", "End": true, "Parameter": {}})),
        "invalid definition: state \"A\": field \"Parameter\" is not supported in a Pass state"
    );
    assert_eq!(
        one(json!({"Type": "Wait", "SecondsPath": "$.s", "End": true})),
        "invalid definition: state \"A\": field \"SecondsPath\" is not supported in a Wait state"
    );
    assert!(
        one(json!({"Type": "Pass", "End": true, "InputPath": "$.a[*]"}))
            .contains("unsupported JSONPath \"$.a[*]\"")
    );
    let task = |catch: Value| json!({"Type": "Task", "Resource": "r", "End": true, "Catch": catch});
    assert_eq!(
        one(task(
            json!([{"ErrorEquals": ["States.ALL"], "Next": "B"}, {"ErrorEquals": ["X"], "Next": "B"}])
        )),
        "invalid definition: state \"A\": in Catch, States.ALL must appear only in the last entry"
    );
    assert!(one(task(
        json!([{"ErrorEquals": ["States.ALL", "X"], "Next": "B"}])
    ))
    .contains("States.ALL must appear alone"));
    assert_eq!(
        one(task(json!([{"ErrorEquals": ["X"], "Next": "Gone"}]))),
        "invalid definition: state \"A\": Catch Next target \"Gone\" does not exist"
    );
    let choice = |rule: Value| one(json!({"Type": "Choice", "Choices": [rule]}));
    assert!(
        choice(json!({"Not": {"Variable": "$.a", "IsNull": true, "Next": "B"}, "Next": "B"}))
            .contains("Next is only allowed in top-level")
    );
    assert!(
        choice(json!({"Variable": "$.a", "TimestampEquals": "x", "Next": "B"}))
            .contains("unsupported choice rule field \"TimestampEquals\"")
    );
    assert!(
        choice(json!({"Variable": "$.a", "NumericEquals": "1", "Next": "B"}))
            .contains("wrong type")
    );
    assert!(choice(json!({"Variable": "$.a", "IsNull": true})).contains("needs Next"));
    assert!(matches!(
        Definition::parse("{", &BTreeMap::new()),
        Err(AslError::Json(_))
    ));
}

#[test]
fn retrier_delay_backs_off_and_caps() {
    let r = Retrier {
        errors: vec![],
        interval: 2.0,
        max_attempts: 3,
        backoff: 3.0,
        max_delay: Some(10.0),
        full_jitter: false,
    };
    assert_eq!([r.delay(0), r.delay(1), r.delay(2)], [2.0, 6.0, 10.0]);
    assert_eq!(r.sleep_for(2), 10.0);
    // FULL jitter: uniform in [0, capped delay]; 200 draws are neither all equal nor out of range.
    let j = Retrier {
        full_jitter: true,
        ..r
    };
    let draws: Vec<f64> = (0..200).map(|_| j.sleep_for(5)).collect();
    assert!(draws.iter().all(|d| (0.0..=10.0).contains(d)));
    assert!(draws.iter().any(|d| *d < 5.0) && draws.iter().any(|d| *d > 5.0));
    assert!(
        choice::wildcard("log-*.txt", "log-2024.txt")
            && !choice::wildcard("log-*.txt", "log-2024.txt.gz")
    );
    assert!(choice::wildcard("*", "") && choice::wildcard("a\\\\b", "a\\b"));
}

#[tokio::test]
async fn step_outside_running_and_unknown_state() {
    let def = def_fail();
    let mut ex = ExecutionState::start(&def, "e", json!({}));
    engine().step(&def, &mut ex, &echo()).await.unwrap();
    assert!(ex.is_finished());
    assert_eq!(
        engine().step(&def, &mut ex, &echo()).await,
        Err(AslError::NotRunning)
    );
    let mut ex = ExecutionState::start(&def, "e", json!({}));
    ex.current = Some("Gone".into());
    assert_eq!(
        engine().step(&def, &mut ex, &echo()).await,
        Err(AslError::UnknownState("Gone".into()))
    );
}

fn resumable() -> (Definition, Mock) {
    let def = def(json!({"StartAt": "T1", "States": {
        "T1": {"Type": "Task", "Resource": "double", "Parameters": {"x.$": "$.x", "who.$": "$$.Execution.Name"}, "ResultPath": "$.t1", "Next": "P"},
        "P": {"Type": "Pass", "Result": {"flag": true}, "ResultPath": "$.p", "Next": "C"},
        "C": {"Type": "Choice", "Choices": [{"Variable": "$.p.flag", "BooleanEquals": true, "Next": "T2"}], "Default": "F"},
        "T2": {"Type": "Task", "Resource": "flaky", "Parameters": {"retry.$": "$$.State.RetryCount", "x.$": "$.t1.doubled"},
               "Retry": [{"ErrorEquals": ["States.TaskFailed"], "MaxAttempts": 2}], "ResultPath": "$.t2", "Next": "W"},
        "W": {"Type": "Wait", "Seconds": 1, "OutputPath": "$.t2", "End": true},
        "F": {"Type": "Fail", "Error": "Unreachable"}
    }}));
    // Deterministic and stateless, so a fresh dispatcher after a "crash" behaves the same.
    let d = Mock::new(|r, v, _| match r {
        "double" => Ok(json!({"doubled": v["x"].as_i64().unwrap() * 2, "who": v["who"]})),
        _ if v["retry"] == json!(0) => Err(TaskFailure::new("Transient", "first attempt")),
        _ => Ok(json!({"final": v["x"].as_i64().unwrap() + 1, "retry": v["retry"]})),
    });
    (def, d)
}

#[tokio::test]
async fn resume_from_serialized_checkpoint_matches_uninterrupted_run() {
    let (def, d) = resumable();
    let mut straight = ExecutionState::start(&def, "exec-r", json!({"x": 20}));
    let mut checkpoints = vec![];
    engine()
        .run(&def, &mut straight, &d, |s| {
            checkpoints.push(serde_json::to_string(s).unwrap())
        })
        .await
        .unwrap();
    assert_eq!(output(&straight), json!({"final": 41, "retry": 1}));
    let states: Vec<_> = straight
        .history
        .iter()
        .map(|e| (e.state.as_str(), e.retries))
        .collect();
    assert_eq!(states, [("T1", 0), ("P", 0), ("C", 0), ("T2", 1), ("W", 0)]);
    assert_eq!(checkpoints.len(), 5);

    let (def, d) = resumable();
    let mut ex = ExecutionState::start(&def, "exec-r", json!({"x": 20}));
    engine().step(&def, &mut ex, &d).await.unwrap();
    engine().step(&def, &mut ex, &d).await.unwrap();
    let saved = serde_json::to_string(&ex).unwrap();
    assert_eq!(saved, checkpoints[1]);
    drop((ex, d));

    let (def, d) = resumable();
    let mut resumed: ExecutionState = serde_json::from_str(&saved).unwrap();
    assert_eq!(
        (resumed.current.as_deref(), resumed.history.len()),
        (Some("C"), 2)
    );
    engine().run(&def, &mut resumed, &d, |_| {}).await.unwrap();
    assert_eq!(resumed, straight);
    assert_eq!(d.calls(), 2, "only T2 (with one retry) ran after resuming");
}

#[test]
fn step_future_is_send() {
    fn assert_send<T: Send>(_: T) {}
    let (def, d) = resumable();
    let mut ex = ExecutionState::start(&def, "e", json!({}));
    assert_send(Engine::new().step(&def, &mut ex, &d));
}

/// One rule for transient faults: the deployed ASL's `StoreUnavailable` retriers say exactly what
/// `tokenops::backoff::Backoff::TRANSIENT` (the checkpoint loop, record writes, the relay) says.
#[test]
fn the_deployed_transient_retriers_are_the_backoff_rule() {
    let b = tokenops::backoff::Backoff::TRANSIENT;
    let def: Value = serde_json::from_str(crate::orchestrator::ASL).unwrap();
    let mut tasks = 0;
    for (name, st) in def["States"].as_object().unwrap() {
        if st["Type"] != "Task" {
            continue;
        }
        tasks += 1;
        let r = st["Retry"]
            .as_array()
            .and_then(|rs| {
                rs.iter().find(|r| {
                    r["ErrorEquals"]
                        .as_array()
                        .is_some_and(|e| e.contains(&json!("StoreUnavailable")))
                })
            })
            .unwrap_or_else(|| panic!("{name} retries StoreUnavailable"));
        assert_eq!(
            r["IntervalSeconds"].as_f64(),
            Some(b.initial_secs),
            "{name}"
        );
        assert_eq!(r["BackoffRate"].as_f64(), Some(b.factor), "{name}");
        assert_eq!(r["MaxDelaySeconds"].as_f64(), Some(b.cap_secs), "{name}");
        assert_eq!(r["MaxAttempts"].as_u64(), Some(b.retries as u64), "{name}");
        assert_eq!(r["JitterStrategy"], json!("FULL"), "{name}");
        // Errors that cannot heal are not caught into a Fail state: the execution fails at
        // the task, so the failure handler names it and a redrive restarts there.
        for c in st["Catch"].as_array().into_iter().flatten() {
            assert_ne!(c["ErrorEquals"], json!(["States.ALL"]), "{name}");
        }
    }
    assert_eq!(tasks, 7);
    let parsed = Definition::parse(
        crate::orchestrator::ASL,
        &crate::orchestrator::local_substitutions(),
    );
    assert!(parsed.is_ok(), "{:?}", parsed.err());
}

#[test]
fn jitter_strategy_is_parsed_and_checked() {
    let bad = json!({"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "r", "End": true,
        "Retry": [{"ErrorEquals": ["X"], "JitterStrategy": "SOME"}]}}});
    let err = Definition::parse(&bad.to_string(), &BTreeMap::new()).unwrap_err();
    assert!(err.to_string().contains("JitterStrategy"), "{err}");
}
