//! JSON output for the command-line tools' `--json` (`xenring-ctl`,
//! `xenring-sim`; each includes this file with `#[path]`): a few lines of
//! writer instead of a serialisation dependency in the library crate
//! (these binaries share its dependencies).

use std::fmt::Write;

/// A JSON value being built.
#[allow(dead_code)] // each tool uses some of the variants
pub enum Json {
    Null,
    Bool(bool),
    Num(u64),
    Str(String),
    List(Vec<Json>),
    /// Keys in the order given.
    Obj(Vec<(&'static str, Json)>),
    /// Keys that are data (XenStore key names), in the order given.
    Map(Vec<(String, Json)>),
}

#[allow(dead_code)] // each tool uses some of the helpers
impl Json {
    pub fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    pub fn opt_str(s: Option<&str>) -> Json {
        s.map_or(Json::Null, Json::str)
    }

    /// The value as JSON text, on one line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(n) => {
                let _ = write!(out, "{n}");
            }
            Json::Str(s) => quote(s, out),
            Json::List(v) => {
                out.push('[');
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    x.write(out);
                }
                out.push(']');
            }
            Json::Obj(kv) => object(kv.iter().map(|(k, v)| (*k, v)), out),
            Json::Map(kv) => object(kv.iter().map(|(k, v)| (k.as_str(), v)), out),
        }
    }
}

/// An object of `kv`, in order.
fn object<'a>(kv: impl Iterator<Item = (&'a str, &'a Json)>, out: &mut String) {
    out.push('{');
    for (i, (k, v)) in kv.enumerate() {
        if i > 0 {
            out.push(',');
        }
        quote(k, out);
        out.push(':');
        v.write(out);
    }
    out.push('}');
}

/// A JSON string literal (RFC 8259: `"`, `\` and control characters
/// escaped).
fn quote(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_escaped_json() {
        let v = Json::Obj(vec![
            ("a", Json::str("q\"b\\s\n\u{1}é")),
            ("n", Json::Num(7)),
            ("l", Json::List(vec![Json::Null, Json::Bool(true)])),
            ("m", Json::Map(vec![("k/x".into(), Json::str(""))])),
        ]);
        assert_eq!(
            v.render(),
            r#"{"a":"q\"b\\s\n\u0001é","n":7,"l":[null,true],"m":{"k/x":""}}"#
        );
    }
}
