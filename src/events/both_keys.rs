//! A frame's JSON in one pass: what `Event`'s derive writes, with every payload field written
//! under its snake_case name and again under its camelCase one. Going through
//! `serde_json::Value` instead (a tree of allocations, its keys copied) took a quarter of the
//! server's CPU when routing at saturation: three frames per message.

use serde::ser::{Serialize, SerializeMap, SerializeStruct, Serializer};

/// Writes `event` (an adjacently tagged `{"type", "payload"}` value) as JSON text.
pub(super) fn to_json(event: &impl Serialize) -> String {
    let mut out = Vec::with_capacity(256);
    let mut json = serde_json::Serializer::new(&mut out);
    // Serializing plain data into a Vec cannot fail, and serde_json writes UTF-8 only; an
    // empty frame would show it if either did.
    if event.serialize(BothKeys::envelope(&mut json)).is_err() {
        out.clear();
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Forwards to `inner`, except that the payload's struct fields go out under both names.
struct BothKeys<S> {
    inner: S,
    /// The envelope (`type`, `payload`) or the payload itself.
    payload: bool,
}

impl<S> BothKeys<S> {
    fn envelope(inner: S) -> Self {
        Self {
            inner,
            payload: false,
        }
    }
}

/// An envelope field's value, serialized as a payload.
struct Payload<'a, T: ?Sized>(&'a T);

impl<T: Serialize + ?Sized> Serialize for Payload<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(BothKeys {
            inner: serializer,
            payload: true,
        })
    }
}

enum Fields<E, P> {
    Envelope(E),
    Payload(P),
}

impl<E, P> SerializeStruct for Fields<E, P>
where
    E: SerializeStruct,
    P: SerializeMap<Ok = E::Ok, Error = E::Error>,
{
    type Ok = E::Ok;
    type Error = E::Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Self::Error> {
        match self {
            Self::Envelope(envelope) => envelope.serialize_field(key, &Payload(value)),
            Self::Payload(payload) => {
                payload.serialize_entry(key, value)?;
                if key.contains('_') {
                    let mut buffer = [0; 64];
                    payload.serialize_entry(camel_case(key, &mut buffer), value)?;
                }
                Ok(())
            }
        }
    }

    fn end(self) -> Result<Self::Ok, Self::Error> {
        match self {
            Self::Envelope(envelope) => envelope.end(),
            Self::Payload(payload) => payload.end(),
        }
    }
}

/// `key` in camelCase, written into `buffer` (field names are short ASCII identifiers; a longer
/// one stays as it is).
pub(super) fn camel_case<'b>(key: &'b str, buffer: &'b mut [u8; 64]) -> &'b str {
    if key.len() > buffer.len() || !key.is_ascii() {
        return key;
    }
    let mut len = 0;
    let mut upper = false;
    for byte in key.bytes() {
        if byte == b'_' {
            upper = true;
            continue;
        }
        buffer[len] = if upper {
            byte.to_ascii_uppercase()
        } else {
            byte
        };
        upper = false;
        len += 1;
    }
    std::str::from_utf8(&buffer[..len]).unwrap_or(key)
}

/// Forwards a `Serializer` method to `self.inner`.
macro_rules! forward {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(fn $name(self, $($arg: $ty),*) -> Result<$ret, Self::Error> {
            self.inner.$name($($arg),*)
        })*
    };
}

impl<S: Serializer> Serializer for BothKeys<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = S::SerializeSeq;
    type SerializeTuple = S::SerializeTuple;
    type SerializeTupleStruct = S::SerializeTupleStruct;
    type SerializeTupleVariant = S::SerializeTupleVariant;
    type SerializeMap = S::SerializeMap;
    type SerializeStruct = Fields<S::SerializeStruct, S::SerializeMap>;
    type SerializeStructVariant = S::SerializeStructVariant;

    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, Self::Error> {
        if self.payload {
            Ok(Fields::Payload(self.inner.serialize_map(Some(len * 2))?))
        } else {
            Ok(Fields::Envelope(self.inner.serialize_struct(name, len)?))
        }
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
        self.inner.serialize_some(value)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.inner.serialize_newtype_struct(name, value)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.inner
            .serialize_newtype_variant(name, index, variant, value)
    }

    fn collect_str<T: std::fmt::Display + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
        self.inner.collect_str(value)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }

    forward! {
        serialize_bool(v: bool) -> S::Ok;
        serialize_i8(v: i8) -> S::Ok;
        serialize_i16(v: i16) -> S::Ok;
        serialize_i32(v: i32) -> S::Ok;
        serialize_i64(v: i64) -> S::Ok;
        serialize_i128(v: i128) -> S::Ok;
        serialize_u8(v: u8) -> S::Ok;
        serialize_u16(v: u16) -> S::Ok;
        serialize_u32(v: u32) -> S::Ok;
        serialize_u64(v: u64) -> S::Ok;
        serialize_u128(v: u128) -> S::Ok;
        serialize_f32(v: f32) -> S::Ok;
        serialize_f64(v: f64) -> S::Ok;
        serialize_char(v: char) -> S::Ok;
        serialize_str(v: &str) -> S::Ok;
        serialize_bytes(v: &[u8]) -> S::Ok;
        serialize_none() -> S::Ok;
        serialize_unit() -> S::Ok;
        serialize_unit_struct(name: &'static str) -> S::Ok;
        serialize_unit_variant(name: &'static str, index: u32, variant: &'static str) -> S::Ok;
        serialize_seq(len: Option<usize>) -> S::SerializeSeq;
        serialize_tuple(len: usize) -> S::SerializeTuple;
        serialize_tuple_struct(name: &'static str, len: usize) -> S::SerializeTupleStruct;
        serialize_tuple_variant(
            name: &'static str, index: u32, variant: &'static str, len: usize
        ) -> S::SerializeTupleVariant;
        serialize_map(len: Option<usize>) -> S::SerializeMap;
        serialize_struct_variant(
            name: &'static str, index: u32, variant: &'static str, len: usize
        ) -> S::SerializeStructVariant;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_keys_become_camel_case() {
        let mut buffer = [0; 64];
        assert_eq!(camel_case("recipient_id", &mut buffer), "recipientId");
        assert_eq!(camel_case("is_read", &mut buffer), "isRead");
        assert_eq!(camel_case("seq", &mut buffer), "seq");
    }
}
