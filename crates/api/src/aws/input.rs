//! Reading an AWS JSON request's members: types, presence and ranges checked, each problem told
//! as AWS tells it ("1 validation error detected: Value … at '…' failed to satisfy constraint: …"),
//! under the error type of the service asking.

use serde_json::{Map, Value};

use super::AwsError;

/// An operation's input: a JSON object.
pub struct Input<'a> {
    raw: &'a Value,
    members: &'a Map<String, Value>,
    /// The error type of a value that breaks the model's rules, in this service.
    invalid: &'static str,
}

static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl<'a> Input<'a> {
    pub fn new(v: &'a Value, invalid: &'static str) -> Input<'a> {
        Input { raw: v, members: v.as_object().unwrap_or(&EMPTY), invalid }
    }

    /// The structure as it came.
    pub fn raw(&self) -> &'a Value {
        self.raw
    }

    /// A nested structure's members, read under the same rules.
    pub fn nested(&self, name: &str) -> Result<Option<Input<'a>>, AwsError> {
        match self.members.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v @ Value::Object(_)) => Ok(Some(Input { raw: v, members: v.as_object().unwrap_or(&EMPTY), invalid: self.invalid })),
            Some(_) => Err(self.type_error(name, "a structure")),
        }
    }

    pub fn invalid(&self, message: impl Into<String>) -> AwsError {
        AwsError::new(self.invalid, message)
    }

    /// The message of one broken constraint.
    pub fn violation(&self, name: &str, value: &Value, constraint: &str) -> AwsError {
        self.invalid(format!(
            "1 validation error detected: Value '{}' at '{name}' failed to satisfy constraint: {constraint}",
            shown(value)
        ))
    }

    fn type_error(&self, name: &str, expected: &str) -> AwsError {
        AwsError::new("SerializationException", format!("member `{name}` must be {expected}"))
    }

    fn missing(&self, name: &str) -> AwsError {
        self.invalid(format!("1 validation error detected: Value null at '{name}' failed to satisfy constraint: Member must not be null"))
    }

    pub fn has(&self, name: &str) -> bool {
        self.members.get(name).is_some_and(|v| !v.is_null())
    }

    pub fn opt_str(&self, name: &str) -> Result<Option<&'a str>, AwsError> {
        match self.members.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.type_error(name, "a string")),
        }
    }

    pub fn str(&self, name: &str) -> Result<&'a str, AwsError> {
        self.opt_str(name)?.ok_or_else(|| self.missing(name))
    }

    /// A string of `min..=max` characters, when present.
    pub fn opt_str_len(&self, name: &str, min: usize, max: usize) -> Result<Option<&'a str>, AwsError> {
        let Some(s) = self.opt_str(name)? else { return Ok(None) };
        let n = s.chars().count();
        if n < min {
            return Err(self.violation(name, &Value::from(s), &format!("Member must have length greater than or equal to {min}")));
        }
        if n > max {
            return Err(self.violation(name, &Value::from(s), &format!("Member must have length less than or equal to {max}")));
        }
        Ok(Some(s))
    }

    pub fn str_len(&self, name: &str, min: usize, max: usize) -> Result<&'a str, AwsError> {
        self.opt_str_len(name, min, max)?.ok_or_else(|| self.missing(name))
    }

    /// An integer within `min..=max`, when present.
    pub fn opt_int(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>, AwsError> {
        let v = match self.members.get(name) {
            None | Some(Value::Null) => return Ok(None),
            Some(v) => v,
        };
        let n = v.as_i64().ok_or_else(|| self.type_error(name, "an integer"))?;
        if n < min {
            return Err(self.violation(name, v, &format!("Member must have value greater than or equal to {min}")));
        }
        if n > max {
            return Err(self.violation(name, v, &format!("Member must have value less than or equal to {max}")));
        }
        Ok(Some(n))
    }

    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>, AwsError> {
        match self.members.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.type_error(name, "a boolean")),
        }
    }

    /// Where a page starts: the offset a `member` token from an earlier page carries, checked.
    pub fn page_start(&self, member: &str) -> Result<usize, AwsError> {
        match self.opt_str(member)? {
            None => Ok(0),
            Some(t) => t.parse().map_err(|_| self.invalid(format!("{member} is not one this API gave out"))),
        }
    }

    /// A list of `min..=max` items, when present.
    pub fn opt_list(&self, name: &str, min: usize, max: usize) -> Result<Option<&'a Vec<Value>>, AwsError> {
        let list = match self.members.get(name) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(self.type_error(name, "a list")),
        };
        let v = Value::from(list.iter().map(shown).collect::<Vec<_>>().join(", "));
        if list.len() < min {
            return Err(self.violation(name, &v, &format!("Member must have length greater than or equal to {min}")));
        }
        if list.len() > max {
            return Err(self.violation(name, &v, &format!("Member must have length less than or equal to {max}")));
        }
        Ok(Some(list))
    }

    pub fn list(&self, name: &str, min: usize, max: usize) -> Result<&'a Vec<Value>, AwsError> {
        self.opt_list(name, min, max)?.ok_or_else(|| self.missing(name))
    }

    /// A list of strings, when present.
    pub fn opt_strings(&self, name: &str, min: usize, max: usize) -> Result<Option<Vec<&'a str>>, AwsError> {
        let Some(list) = self.opt_list(name, min, max)? else { return Ok(None) };
        list.iter().map(|v| v.as_str().ok_or_else(|| self.type_error(name, "a list of strings"))).collect::<Result<_, _>>().map(Some)
    }

    /// A map of strings to strings, when present.
    pub fn opt_string_map(&self, name: &str) -> Result<Option<Vec<(&'a str, &'a str)>>, AwsError> {
        match self.members.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| v.as_str().map(|v| (k.as_str(), v)).ok_or_else(|| self.type_error(name, "a map of strings")))
                .collect::<Result<_, _>>()
                .map(Some),
            Some(_) => Err(self.type_error(name, "a map")),
        }
    }

    /// One of `allowed`, when present.
    pub fn opt_enum(&self, name: &str, allowed: &[&str]) -> Result<Option<&'a str>, AwsError> {
        let Some(s) = self.opt_str(name)? else { return Ok(None) };
        if allowed.contains(&s) {
            Ok(Some(s))
        } else {
            Err(self.violation(name, &Value::from(s), &format!("Member must satisfy enum value set: [{}]", allowed.join(", "))))
        }
    }

    /// The items of a list of structures, each read under the same rules.
    pub fn structures(&self, name: &str, min: usize, max: usize) -> Result<Vec<Input<'a>>, AwsError> {
        let Some(list) = self.opt_list(name, min, max)? else { return Ok(Vec::new()) };
        list.iter()
            .map(|v| match v {
                Value::Object(m) => Ok(Input { raw: v, members: m, invalid: self.invalid }),
                _ => Err(self.type_error(name, "a list of structures")),
            })
            .collect()
    }
}
