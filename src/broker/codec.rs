//! What crosses the broker: messages as CBOR, the properties and headers the
//! owner reads, and the done records it sends back to producers.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The content type of every message a `RemoteHandle` publishes.
pub(crate) const CONTENT_TYPE: &str = "application/cbor";
/// The header naming the producer whose done queue gets the done record.
pub(crate) const PRODUCER_HEADER: &str = "custody-producer";
/// The header a dead-lettered message carries: why it was not handled.
pub(crate) const ERROR_HEADER: &str = "x-custody-error";
/// The header the broker sets on a redelivery of a quorum queue message.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
/// The longest reason put in a header; a longer one is cut.
const MAX_REASON: usize = 2048;

/// Encodes a message as CBOR.
pub(crate) fn encode<M: Serialize>(msg: &M) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::with_capacity(64);
    ciborium::into_writer(msg, &mut bytes).map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// Decodes one CBOR item of type `M` that must fill the whole payload.
pub(crate) fn decode<M: DeserializeOwned>(bytes: &[u8]) -> Result<M, String> {
    let mut rest = bytes;
    let msg = ciborium::from_reader(&mut rest).map_err(|e| match e {
        ciborium::de::Error::Io(e) => format!("cannot decode CBOR: {e}"),
        ciborium::de::Error::Syntax(at) => format!("not CBOR: syntax error at byte {at}"),
        ciborium::de::Error::Semantic(at, what) => match at {
            Some(at) => format!("not a {}: {what} (at byte {at})", type_name::<M>()),
            None => format!("not a {}: {what}", type_name::<M>()),
        },
        ciborium::de::Error::RecursionLimitExceeded => "CBOR nested too deeply".to_owned(),
    })?;
    if rest.is_empty() {
        Ok(msg)
    } else {
        Err(format!(
            "{} trailing bytes after a {}",
            rest.len(),
            type_name::<M>()
        ))
    }
}

fn type_name<M>() -> &'static str {
    std::any::type_name::<M>()
}

/// Who sent a delivery and under which id: where its done record goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) producer: String,
    pub(crate) id: String,
}

impl Origin {
    /// The origin recorded in a delivery's properties, if it has one (a
    /// message published by another tool may have none: it gets no record).
    pub(crate) fn of(props: &BasicProperties) -> Option<Origin> {
        let id = props.message_id().as_ref()?.as_str().to_owned();
        let producer = header_string(props, PRODUCER_HEADER)?;
        Some(Origin { producer, id })
    }
}

/// A string header, if the properties have it.
pub(crate) fn header_string(props: &BasicProperties, key: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Where the answer to a delivery goes, if it is an ask.
pub(crate) fn reply_target(props: &BasicProperties) -> Option<super::reply::Target> {
    Some(super::reply::Target {
        reply_to: props.reply_to().as_ref()?.as_str().to_owned(),
        correlation_id: props.correlation_id().as_ref()?.as_str().to_owned(),
    })
}

/// How many times the broker delivered this message before (0 on the first
/// delivery of a quorum queue message, which has no header).
pub(crate) fn delivery_count(props: &BasicProperties) -> u64 {
    let Some(headers) = props.headers() else {
        return 0;
    };
    match headers.inner().get(DELIVERY_COUNT_HEADER) {
        Some(AMQPValue::LongLongInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongUInt(n)) => u64::from(*n),
        Some(AMQPValue::ShortInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::ShortUInt(n)) => u64::from(*n),
        Some(AMQPValue::ShortShortInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::ShortShortUInt(n)) => u64::from(*n),
        _ => 0,
    }
}

/// The properties of a message as published by a `RemoteHandle`.
pub(crate) fn message_properties(id: &str, producer: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        PRODUCER_HEADER.into(),
        AMQPValue::LongString(LongString::from(producer)),
    );
    BasicProperties::default()
        .with_content_type(ShortString::from(CONTENT_TYPE))
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(id))
        .with_headers(headers)
}

/// The properties of a dead-lettered copy: the original ones plus the reason.
pub(crate) fn dead_letter_properties(original: &BasicProperties, reason: &str) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    headers.insert(
        ERROR_HEADER.into(),
        AMQPValue::LongString(LongString::from(cut(reason))),
    );
    original.clone().with_delivery_mode(2).with_headers(headers)
}

/// `reason`, cut to at most `MAX_REASON` bytes on a character boundary.
pub(crate) fn cut(reason: &str) -> &str {
    if reason.len() <= MAX_REASON {
        return reason;
    }
    let mut end = MAX_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// What an owner tells a producer about its messages: the ids handled (and
/// committed: the record is sent after `idle`), and the ids dead-lettered.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DoneRecord {
    pub(crate) done: Vec<String>,
    pub(crate) dead: Vec<(String, String)>,
}

impl DoneRecord {
    pub(crate) fn merge(&mut self, other: DoneRecord) {
        self.done.extend(other.done);
        self.dead.extend(other.dead);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Job {
        Add(u64),
        Name { first: String },
    }

    #[test]
    fn messages_round_trip_and_the_wrong_type_fails_to_decode() {
        for job in [
            Job::Add(7),
            Job::Name {
                first: "ada".into(),
            },
        ] {
            let bytes = encode(&job).unwrap();
            assert_eq!(decode::<Job>(&bytes).unwrap(), job);
        }
        let text = encode(&"not a job").unwrap();
        let err = decode::<Job>(&text).unwrap_err();
        assert!(err.contains("Job"), "{err}");
        let number = encode(&5u32).unwrap();
        assert!(decode::<String>(&number).is_err());
        assert!(decode::<Job>(b"\xff\x00garbage").is_err());
        let mut two = encode(&Job::Add(1)).unwrap();
        two.extend(encode(&Job::Add(2)).unwrap());
        assert!(decode::<Job>(&two).unwrap_err().contains("trailing"));
    }

    #[test]
    fn origin_and_delivery_count_come_from_the_properties() {
        let props = message_properties("p.1", "p");
        assert_eq!(
            Origin::of(&props),
            Some(Origin {
                producer: "p".into(),
                id: "p.1".into()
            })
        );
        assert_eq!(Origin::of(&BasicProperties::default()), None);
        assert_eq!(delivery_count(&props), 0);
        let mut headers = FieldTable::default();
        headers.insert(DELIVERY_COUNT_HEADER.into(), AMQPValue::LongLongInt(3));
        assert_eq!(
            delivery_count(&BasicProperties::default().with_headers(headers)),
            3
        );
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_REASON);
        let short = cut(&long);
        assert!(short.len() <= MAX_REASON);
        assert!(long.starts_with(short));
        let dead = dead_letter_properties(&message_properties("i", "p"), "bad");
        let headers = dead.headers().clone().unwrap();
        assert!(headers.contains_key(ERROR_HEADER));
        assert!(headers.contains_key(PRODUCER_HEADER));
    }
}
