//! The shape of each resource type, read from its serde derive, for checking unknown fields.
//!
//! Istio's formats are not ours, so their types do not `deny_unknown_fields`: a field Istio has
//! and ringmesh does not yet implement must be a *warning*, while a typo (`hostz`, `weigth`) must
//! be an *error* with a "did you mean". Both need to know which names are valid at each place in
//! a document. Rather than keep a hand-written list in step with the types, [`Schema::of`]
//! drives a type's `Deserialize` impl with a probing deserializer that records the field names
//! serde asks for at each path (`spec.http[].route[].destination`). The loader then walks the
//! parsed YAML against it.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// What a type expects at one path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A struct with these field names.
    Struct(&'static [&'static str]),
    /// A map with arbitrary keys; values are at `<pattern>.*`.
    Map,
    /// A sequence; items are at `<pattern>[]`.
    Seq,
    /// A scalar, enum, or anything not walked further.
    Leaf,
}

/// Path patterns (`spec.http[].match[].headers.*`) to the shape expected there.
#[derive(Debug, Clone, Default)]
pub(crate) struct Schema {
    shapes: HashMap<String, Shape>,
}

impl Schema {
    /// Records the shape of `T` by deserializing it from a probe.
    pub(crate) fn of<'de, T: Deserialize<'de>>() -> Self {
        let mut shapes = HashMap::new();
        // The probe always "succeeds" at the shape level; an error only means some custom
        // Deserialize impl rejected the probe's dummy value, after its shape was recorded.
        let _ = T::deserialize(Probe {
            path: String::new(),
            shapes: &mut shapes,
        });
        Schema { shapes }
    }

    /// The shape at a pattern, if the type has anything there.
    pub(crate) fn shape(&self, pattern: &str) -> Option<&Shape> {
        self.shapes.get(pattern)
    }
}

#[derive(Debug)]
struct ProbeError(String);

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProbeError {}

impl de::Error for ProbeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ProbeError(msg.to_string())
    }
}

struct Probe<'a> {
    path: String,
    shapes: &'a mut HashMap<String, Shape>,
}

impl Probe<'_> {
    fn record(&mut self, shape: Shape) {
        self.shapes.entry(self.path.clone()).or_insert(shape);
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

macro_rules! leaf {
    ($($method:ident => $visit:ident($($value:expr)?)),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Self::Error> {
                self.record(Shape::Leaf);
                visitor.$visit($($value)?)
            }
        )*
    };
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = ProbeError;

    leaf! {
        deserialize_any => visit_unit(),
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_u64(0),
        deserialize_i16 => visit_u64(0),
        deserialize_i32 => visit_u64(0),
        deserialize_i64 => visit_u64(0),
        deserialize_u8 => visit_u64(0),
        deserialize_u16 => visit_u64(0),
        deserialize_u32 => visit_u64(0),
        deserialize_u64 => visit_u64(0),
        deserialize_f32 => visit_f64(0.0),
        deserialize_f64 => visit_f64(0.0),
        deserialize_char => visit_char('a'),
        deserialize_str => visit_str(""),
        deserialize_string => visit_str(""),
        deserialize_bytes => visit_bytes(&[]),
        deserialize_byte_buf => visit_bytes(&[]),
        deserialize_unit => visit_unit(),
        deserialize_identifier => visit_str(""),
        deserialize_ignored_any => visit_unit(),
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.record(Shape::Leaf);
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Self::Error> {
        self.record(Shape::Seq);
        let path = format!("{}[]", self.path);
        visitor.visit_seq(OneItem {
            path: Some(path),
            shapes: self.shapes,
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Self::Error> {
        self.record(Shape::Map);
        let path = join(&self.path, "*");
        visitor.visit_map(Fields {
            keys: &["*"],
            next: 0,
            paths: vec![path],
            shapes: self.shapes,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.record(Shape::Struct(fields));
        let paths = fields.iter().map(|f| join(&self.path, f)).collect();
        visitor.visit_map(Fields {
            keys: fields,
            next: 0,
            paths,
            shapes: self.shapes,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.record(Shape::Leaf);
        let first = variants.first().copied().unwrap_or("");
        visitor.visit_enum(first.into_deserializer())
    }
}

struct OneItem<'a> {
    path: Option<String>,
    shapes: &'a mut HashMap<String, Shape>,
}

impl<'de> SeqAccess<'de> for OneItem<'_> {
    type Error = ProbeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Self::Error> {
        match self.path.take() {
            Some(path) => seed
                .deserialize(Probe {
                    path,
                    shapes: self.shapes,
                })
                .map(Some),
            None => Ok(None),
        }
    }
}

struct Fields<'a> {
    keys: &'static [&'static str],
    next: usize,
    paths: Vec<String>,
    shapes: &'a mut HashMap<String, Shape>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = ProbeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Self::Error> {
        match self.keys.get(self.next) {
            Some(key) => seed.deserialize((*key).into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Self::Error> {
        let path = self.paths.get(self.next).cloned().unwrap_or_default();
        self.next += 1;
        seed.deserialize(Probe {
            path,
            shapes: self.shapes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[allow(dead_code)]
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Top {
        spec: Spec,
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Spec {
        hosts: Vec<String>,
        #[serde(default)]
        http: Vec<Route>,
        labels: Option<BTreeMap<String, Inner>>,
        mode: Option<Mode>,
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Route {
        per_try_timeout: Option<String>,
        weight: i64,
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    struct Inner {
        exact: Option<String>,
    }

    #[derive(Deserialize)]
    enum Mode {
        #[serde(rename = "STATIC")]
        Static,
    }

    #[test]
    fn records_every_path() {
        let s = Schema::of::<Top>();
        assert_eq!(s.shape(""), Some(&Shape::Struct(&["spec"])));
        assert_eq!(
            s.shape("spec"),
            Some(&Shape::Struct(&["hosts", "http", "labels", "mode"]))
        );
        assert_eq!(s.shape("spec.hosts"), Some(&Shape::Seq));
        assert_eq!(s.shape("spec.hosts[]"), Some(&Shape::Leaf));
        assert_eq!(
            s.shape("spec.http[]"),
            Some(&Shape::Struct(&["perTryTimeout", "weight"]))
        );
        assert_eq!(s.shape("spec.labels"), Some(&Shape::Map));
        assert_eq!(s.shape("spec.labels.*"), Some(&Shape::Struct(&["exact"])));
        assert_eq!(s.shape("spec.mode"), Some(&Shape::Leaf));
        assert_eq!(s.shape("spec.nothing"), None);
    }
}
