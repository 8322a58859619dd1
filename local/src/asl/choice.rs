//! Choice rules: parsing (at definition time) and evaluation.

use super::path::{runtime, Path};
use super::TaskFailure;
use serde_json::Value;
use std::cmp::Ordering;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Ty {
    Str,
    Num,
    Bool,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Cmp {
    Eq,
    Lt,
    Gt,
    Le,
    Ge,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Test {
    Compare(Ty, Cmp),
    Matches,
    IsPresent,
    IsNull,
    IsString,
    IsNumeric,
    IsBoolean,
}

#[derive(Debug, Clone)]
pub(super) enum Operand {
    Lit(Value),
    Path(Path),
}

#[derive(Debug, Clone)]
pub(super) enum Rule {
    And(Vec<Rule>),
    Or(Vec<Rule>),
    Not(Box<Rule>),
    Check {
        var: Path,
        test: Test,
        operand: Operand,
    },
}

/// Maps an operator name to its test; the bool says whether the operand is a path (`…Path`).
fn parse_op(name: &str) -> Option<(Test, bool)> {
    let simple = match name {
        "IsPresent" => Some(Test::IsPresent),
        "IsNull" => Some(Test::IsNull),
        "IsString" => Some(Test::IsString),
        "IsNumeric" => Some(Test::IsNumeric),
        "IsBoolean" => Some(Test::IsBoolean),
        "StringMatches" => Some(Test::Matches),
        _ => None,
    };
    if let Some(t) = simple {
        return Some((t, false));
    }
    let (base, by_path) = name
        .strip_suffix("Path")
        .map_or((name, false), |b| (b, true));
    let (ty, rest) = [
        ("String", Ty::Str),
        ("Numeric", Ty::Num),
        ("Boolean", Ty::Bool),
    ]
    .into_iter()
    .find_map(|(prefix, ty)| base.strip_prefix(prefix).map(|r| (ty, r)))?;
    let cmp = match rest {
        "Equals" => Cmp::Eq,
        "LessThan" if ty != Ty::Bool => Cmp::Lt,
        "GreaterThan" if ty != Ty::Bool => Cmp::Gt,
        "LessThanEquals" if ty != Ty::Bool => Cmp::Le,
        "GreaterThanEquals" if ty != Ty::Bool => Cmp::Ge,
        _ => return None,
    };
    Some((Test::Compare(ty, cmp), by_path))
}

/// Parses one rule. Top-level rules must carry `Next` (returned), nested ones must not.
pub(super) fn parse_rule(v: &Value, top: bool) -> Result<(Rule, Option<String>), String> {
    let m = v.as_object().ok_or("a choice rule must be an object")?;
    let (mut next, mut var, mut combinator, mut test) = (None, None, None, None);
    for (k, val) in m {
        match k.as_str() {
            "Comment" => {}
            "Next" if top => next = Some(val.as_str().ok_or("Next must be a string")?.to_string()),
            "Next" => return Err("Next is only allowed in top-level choice rules".into()),
            "Variable" => {
                var = Some(Path::parse(
                    val.as_str().ok_or("Variable must be a string")?,
                )?)
            }
            "And" | "Or" | "Not" => {
                let rule = if k == "Not" {
                    Rule::Not(Box::new(parse_rule(val, false)?.0))
                } else {
                    let subs = val
                        .as_array()
                        .filter(|a| !a.is_empty())
                        .ok_or(format!("{k} must be a non-empty array"))?
                        .iter()
                        .map(|s| parse_rule(s, false).map(|r| r.0))
                        .collect::<Result<Vec<_>, _>>()?;
                    if k == "And" {
                        Rule::And(subs)
                    } else {
                        Rule::Or(subs)
                    }
                };
                if combinator.replace(rule).is_some() {
                    return Err("a choice rule may use only one of And/Or/Not".into());
                }
            }
            op => {
                let (t, by_path) = parse_op(op)
                    .ok_or_else(|| format!("unknown or unsupported choice rule field {op:?}"))?;
                let operand = if by_path {
                    Operand::Path(Path::parse(
                        val.as_str().ok_or(format!("{op} must be a path string"))?,
                    )?)
                } else {
                    let ok = match t {
                        Test::Compare(Ty::Str, _) | Test::Matches => val.is_string(),
                        Test::Compare(Ty::Num, _) => val.is_number(),
                        _ => val.is_boolean(),
                    };
                    if !ok {
                        return Err(format!("{op} has an operand of the wrong type"));
                    }
                    Operand::Lit(val.clone())
                };
                if test.replace((t, operand)).is_some() {
                    return Err("a choice rule must have exactly one comparison operator".into());
                }
            }
        }
    }
    if top && next.is_none() {
        return Err("a top-level choice rule needs Next".into());
    }
    let rule =
        match (combinator, var, test) {
            (Some(r), None, None) => r,
            (None, Some(var), Some((test, operand))) => Rule::Check { var, test, operand },
            _ => return Err(
                "a choice rule needs either And/Or/Not, or Variable plus one comparison operator"
                    .into(),
            ),
        };
    Ok((rule, next))
}

impl Rule {
    pub(super) fn eval(&self, input: &Value, ctx: &Value) -> Result<bool, TaskFailure> {
        match self {
            Rule::And(rules) => {
                for r in rules {
                    if !r.eval(input, ctx)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Rule::Or(rules) => {
                for r in rules {
                    if r.eval(input, ctx)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Rule::Not(r) => Ok(!r.eval(input, ctx)?),
            Rule::Check { var, test, operand } => {
                let want = match operand {
                    Operand::Lit(v) => v,
                    Operand::Path(p) => p.get(input, ctx).ok_or_else(|| {
                        runtime(format!("Invalid path '{}' in choice rule", p.text()))
                    })?,
                };
                let flag = want.as_bool() == Some(true);
                let Some(v) = var.get(input, ctx) else {
                    return match test {
                        Test::IsPresent => Ok(!flag),
                        _ => Err(runtime(format!("Invalid path '{}': the choice state's condition path references an invalid value", var.text()))),
                    };
                };
                Ok(match test {
                    Test::IsPresent => flag,
                    Test::IsNull => v.is_null() == flag,
                    Test::IsString => v.is_string() == flag,
                    Test::IsNumeric => v.is_number() == flag,
                    Test::IsBoolean => v.is_boolean() == flag,
                    Test::Matches => {
                        matches!((v.as_str(), want.as_str()), (Some(s), Some(p)) if wildcard(p, s))
                    }
                    Test::Compare(ty, cmp) => compare(*ty, v, want).is_some_and(|o| match cmp {
                        Cmp::Eq => o.is_eq(),
                        Cmp::Lt => o.is_lt(),
                        Cmp::Gt => o.is_gt(),
                        Cmp::Le => o.is_le(),
                        Cmp::Ge => o.is_ge(),
                    }),
                })
            }
        }
    }
}

/// `None` when the types don't fit the operator: such a comparison is simply false.
fn compare(ty: Ty, a: &Value, b: &Value) -> Option<Ordering> {
    match ty {
        Ty::Str => Some(a.as_str()?.cmp(b.as_str()?)),
        Ty::Num => a.as_f64()?.partial_cmp(&b.as_f64()?),
        Ty::Bool => Some(if a.as_bool()? == b.as_bool()? {
            Ordering::Equal
        } else {
            Ordering::Less
        }),
    }
}

/// `StringMatches`: `*` matches any run of characters; `\*` and `\\` are literals.
pub(super) fn wildcard(pattern: &str, s: &str) -> bool {
    let mut toks = vec![]; // None = `*`
    let mut it = pattern.chars();
    while let Some(c) = it.next() {
        toks.push(match c {
            '\\' => Some(it.next().unwrap_or('\\')),
            '*' => None,
            c => Some(c),
        });
    }
    let s: Vec<char> = s.chars().collect();
    let (mut p, mut i, mut star, mut mark) = (0, 0, None, 0);
    while i < s.len() {
        if p < toks.len() && toks[p] == Some(s[i]) {
            (p, i) = (p + 1, i + 1);
        } else if p < toks.len() && toks[p].is_none() {
            (star, mark, p) = (Some(p), i, p + 1);
        } else if let Some(sp) = star {
            (p, mark) = (sp + 1, mark + 1);
            i = mark;
        } else {
            return false;
        }
    }
    toks[p..].iter().all(Option::is_none)
}
