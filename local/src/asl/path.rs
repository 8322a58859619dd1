//! Paths (a JSONPath subset), payload templates (`Parameters` / `ResultSelector`)
//! and the few intrinsic functions we support.

use super::TaskFailure;
use serde_json::Value;

/// A data-processing failure: ends the execution, is never retried or caught.
pub(super) fn runtime(cause: impl Into<String>) -> TaskFailure {
    TaskFailure::new("States.Runtime", cause)
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A parsed path: `$…` reads the state's data, `$$…` the context object.
/// Supported steps: `.key`, `[n]`, `['key']` / `["key"]`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Path {
    text: String,
    context: bool,
    segs: Vec<Seg>,
}

impl Path {
    pub(super) fn root() -> Path {
        Path {
            text: "$".into(),
            context: false,
            segs: vec![],
        }
    }

    pub(super) fn parse(text: &str) -> Result<Path, String> {
        let (context, mut rest) = match text.strip_prefix("$$") {
            Some(r) => (true, r),
            None => (
                false,
                text.strip_prefix('$')
                    .ok_or_else(|| format!("path {text:?} must start with '$'"))?,
            ),
        };
        let bad = |why: &str| format!("unsupported JSONPath {text:?}: {why}");
        let mut segs = vec![];
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('.') {
                let end = r.find(['.', '[']).unwrap_or(r.len());
                if end == 0 || &r[..end] == "*" {
                    return Err(bad("empty, recursive or wildcard step"));
                }
                segs.push(Seg::Key(r[..end].to_string()));
                rest = &r[end..];
            } else if let Some(r) = rest.strip_prefix('[') {
                let end = r.find(']').ok_or_else(|| bad("unclosed '['"))?;
                let inner = &r[..end];
                let quoted = inner.len() >= 2
                    && ((inner.starts_with('\'') && inner.ends_with('\''))
                        || (inner.starts_with('"') && inner.ends_with('"')));
                segs.push(if quoted {
                    Seg::Key(inner[1..inner.len() - 1].to_string())
                } else {
                    Seg::Index(
                        inner
                            .parse()
                            .map_err(|_| bad("only [n] and ['key'] are supported"))?,
                    )
                });
                rest = &r[end + 1..];
            } else {
                return Err(bad("expected '.' or '['"));
            }
        }
        Ok(Path {
            text: text.to_string(),
            context,
            segs,
        })
    }

    pub(super) fn text(&self) -> &str {
        &self.text
    }

    pub(super) fn is_context(&self) -> bool {
        self.context
    }

    pub(super) fn get<'a>(&self, input: &'a Value, ctx: &'a Value) -> Option<&'a Value> {
        let mut cur = if self.context { ctx } else { input };
        for seg in &self.segs {
            cur = match seg {
                Seg::Key(k) => cur.get(k.as_str())?,
                Seg::Index(i) => cur.get(*i)?,
            };
        }
        Some(cur)
    }

    /// Like [`Path::get`], but a missing value is a `States.Runtime` failure.
    pub(super) fn resolve(
        &self,
        input: &Value,
        ctx: &Value,
        field: &str,
    ) -> Result<Value, TaskFailure> {
        self.get(input, ctx).cloned().ok_or_else(|| {
            runtime(format!("The JSONPath '{}' specified for the field '{field}' could not be found in the input", self.text))
        })
    }

    /// Writes `value` at this path inside `root`, creating missing objects on the way (ResultPath).
    pub(super) fn set(&self, mut root: Value, value: Value) -> Result<Value, TaskFailure> {
        let fail = || {
            let cause = format!(
                "Unable to apply ResultPath '{}' to the state input",
                self.text
            );
            TaskFailure::new("States.ResultPathMatchFailure", cause)
        };
        let mut cur = &mut root;
        for seg in &self.segs {
            cur = match seg {
                Seg::Key(k) => {
                    // A missing (or null) intermediate becomes an object, as Step Functions does.
                    if cur.is_null() {
                        *cur = Value::Object(Default::default());
                    }
                    cur.as_object_mut()
                        .ok_or_else(fail)?
                        .entry(k.clone())
                        .or_insert(Value::Null)
                }
                Seg::Index(i) => cur
                    .as_array_mut()
                    .and_then(|a| a.get_mut(*i))
                    .ok_or_else(fail)?,
            };
        }
        *cur = value;
        Ok(root)
    }
}

/// A `Parameters` / `ResultSelector` payload template, parsed once at definition time.
#[derive(Debug, Clone)]
pub(super) enum Template {
    Lit(Value),
    /// A path and the field (`"key.$"`) it came from, for error messages.
    Path(Path, String),
    Call(Call),
    Obj(Vec<(String, Template)>),
    Arr(Vec<Template>),
}

impl Template {
    /// `field` is the dotted location used in error messages, e.g. `Parameters.user.id.$`.
    pub(super) fn parse(v: &Value, field: &str) -> Result<Template, String> {
        Ok(match v {
            Value::Object(m) => Template::Obj(
                m.iter()
                    .map(|(k, v)| {
                        let f = format!("{field}.{k}");
                        let Some(name) = k.strip_suffix(".$") else {
                            return Ok((k.clone(), Template::parse(v, &f)?));
                        };
                        let s = v.as_str().ok_or_else(|| {
                            format!("field {f} must be a path or intrinsic function string")
                        })?;
                        let t = if s.starts_with("States.") {
                            Template::Call(Call::parse(s).map_err(|e| format!("field {f}: {e}"))?)
                        } else {
                            Template::Path(
                                Path::parse(s).map_err(|e| format!("field {f}: {e}"))?,
                                k.clone(),
                            )
                        };
                        Ok((name.to_string(), t))
                    })
                    .collect::<Result<_, String>>()?,
            ),
            Value::Array(a) => Template::Arr(
                a.iter()
                    .enumerate()
                    .map(|(i, v)| Template::parse(v, &format!("{field}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            other => Template::Lit(other.clone()),
        })
    }

    pub(super) fn eval(&self, input: &Value, ctx: &Value) -> Result<Value, TaskFailure> {
        Ok(match self {
            Template::Lit(v) => v.clone(),
            Template::Path(p, field) => p.resolve(input, ctx, field)?,
            Template::Call(c) => c.eval(input, ctx)?,
            Template::Obj(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, t)| Ok((k.clone(), t.eval(input, ctx)?)))
                    .collect::<Result<_, TaskFailure>>()?,
            ),
            Template::Arr(items) => Value::Array(
                items
                    .iter()
                    .map(|t| t.eval(input, ctx))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Func {
    Format,
    StringToJson,
    JsonToString,
    Array,
}

#[derive(Debug, Clone)]
enum Arg {
    /// A `'quoted'` literal, kept with its backslash escapes (except `\'`) so
    /// `States.Format` can tell `\{` from a placeholder.
    Str(String),
    Lit(Value),
    Path(Path),
    Call(Call),
}

/// An intrinsic function call such as `States.Format('Hi {}', $.name)`.
#[derive(Debug, Clone)]
pub(super) struct Call {
    func: Func,
    args: Vec<Arg>,
}

fn unescape(raw: &str) -> String {
    let mut out = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' {
            chars.next().unwrap_or('\\')
        } else {
            c
        });
    }
    out
}

struct Parser {
    c: Vec<char>,
    i: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.c.get(self.i).copied()
    }
    fn ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.i += 1;
        }
    }
    fn take_while(&mut self, f: impl Fn(char) -> bool) -> String {
        let start = self.i;
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
        self.c[start..self.i].iter().collect()
    }

    fn call(&mut self) -> Result<Call, String> {
        let name = self.take_while(|c| c.is_alphanumeric() || c == '.');
        let func = match name.as_str() {
            "States.Format" => Func::Format,
            "States.StringToJson" => Func::StringToJson,
            "States.JsonToString" => Func::JsonToString,
            "States.Array" => Func::Array,
            _ => {
                return Err(format!(
                    "unsupported intrinsic function {name} (supported: States.Format, States.StringToJson, States.JsonToString, States.Array)"
                ))
            }
        };
        self.ws();
        if self.peek() != Some('(') {
            return Err(format!("expected '(' after {name}"));
        }
        self.i += 1;
        self.ws();
        let mut args = vec![];
        if self.peek() == Some(')') {
            self.i += 1;
        } else {
            loop {
                args.push(self.arg()?);
                self.ws();
                match self.peek() {
                    Some(',') => self.i += 1,
                    Some(')') => break self.i += 1,
                    _ => return Err(format!("expected ',' or ')' in {name}(...)")),
                }
            }
        }
        let arity_ok = match func {
            Func::Format => !args.is_empty(),
            Func::StringToJson | Func::JsonToString => args.len() == 1,
            Func::Array => true,
        };
        if !arity_ok {
            return Err(format!("wrong number of arguments for {name}"));
        }
        Ok(Call { func, args })
    }

    fn arg(&mut self) -> Result<Arg, String> {
        self.ws();
        match self.peek() {
            Some('\'') => {
                self.i += 1;
                let mut raw = String::new();
                loop {
                    match self.peek() {
                        None => return Err("unterminated string literal".into()),
                        Some('\'') => break self.i += 1,
                        Some('\\') => {
                            let n = self.c.get(self.i + 1).copied().ok_or("dangling '\\'")?;
                            if n != '\'' {
                                raw.push('\\');
                            }
                            raw.push(n);
                            self.i += 2;
                        }
                        Some(c) => {
                            raw.push(c);
                            self.i += 1;
                        }
                    }
                }
                Ok(Arg::Str(raw))
            }
            Some('$') => Ok(Arg::Path(Path::parse(
                self.take_while(|c| c != ',' && c != ')').trim(),
            )?)),
            Some('S') => Ok(Arg::Call(self.call()?)),
            _ => {
                let text = self.take_while(|c| c != ',' && c != ')');
                match serde_json::from_str::<Value>(text.trim()) {
                    Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::Null)) => Ok(Arg::Lit(v)),
                    _ => Err(format!("invalid intrinsic argument {:?}", text.trim())),
                }
            }
        }
    }
}

impl Call {
    fn parse(s: &str) -> Result<Call, String> {
        let mut p = Parser {
            c: s.chars().collect(),
            i: 0,
        };
        let call = p.call()?;
        p.ws();
        if p.i != p.c.len() {
            return Err(format!(
                "unexpected text after intrinsic function call in {s:?}"
            ));
        }
        Ok(call)
    }

    fn eval(&self, input: &Value, ctx: &Value) -> Result<Value, TaskFailure> {
        let fail = |m: &str| TaskFailure::new("States.IntrinsicFailure", m);
        let vals = self
            .args
            .iter()
            .map(|a| match a {
                Arg::Str(raw) => Ok(Value::String(unescape(raw))),
                Arg::Lit(v) => Ok(v.clone()),
                Arg::Path(p) => p.resolve(input, ctx, "intrinsic function argument"),
                Arg::Call(c) => c.eval(input, ctx),
            })
            .collect::<Result<Vec<_>, _>>()?;
        match self.func {
            Func::Array => Ok(Value::Array(vals)),
            Func::JsonToString => Ok(Value::String(vals[0].to_string())),
            Func::StringToJson => {
                let s = vals[0]
                    .as_str()
                    .ok_or_else(|| fail("States.StringToJson expects a string"))?;
                serde_json::from_str(s).map_err(|e| fail(&format!("States.StringToJson: {e}")))
            }
            Func::Format => {
                let template = match &self.args[0] {
                    Arg::Str(raw) => raw.clone(),
                    _ => vals[0]
                        .as_str()
                        .ok_or_else(|| fail("States.Format template must be a string"))?
                        .replace('\\', "\\\\"),
                };
                let (mut out, mut args, mut chars) =
                    (String::new(), vals[1..].iter(), template.chars().peekable());
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => out.extend(chars.next()),
                        '{' if chars.peek() == Some(&'}') => {
                            chars.next();
                            match args.next().ok_or_else(|| {
                                fail("States.Format has more placeholders than arguments")
                            })? {
                                Value::String(s) => out.push_str(s),
                                Value::Array(_) | Value::Object(_) => {
                                    return Err(fail("States.Format arguments must be scalars"))
                                }
                                other => out.push_str(&other.to_string()),
                            }
                        }
                        c => out.push(c),
                    }
                }
                if args.next().is_some() {
                    return Err(fail("States.Format has more arguments than placeholders"));
                }
                Ok(Value::String(out))
            }
        }
    }
}
