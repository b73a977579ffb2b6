//! What crosses the broker: messages as CBOR, the properties and headers the
//! owner reads (and checks: they come from whoever published), and the done
//! records it sends back to producers.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{Field, FieldProblem, InvalidDelivery};
use super::names::{DONE_QUEUE_PREFIX, MAX_QUEUE_NAME};
use super::reply::Target;

/// The content type of every message a `RemoteHandle` publishes.
pub(crate) const CONTENT_TYPE: &str = "application/cbor";
/// The header naming the producer whose done queue gets the done record.
pub(crate) const PRODUCER_HEADER: &str = "custody-producer";
/// The header a dead-lettered message carries: why it was not handled.
pub(crate) const ERROR_HEADER: &str = "x-custody-error";
/// The header the broker sets on a redelivery of a quorum queue message.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
/// The longest producer id: `custody.done.<producer>` must be a queue name.
const MAX_PRODUCER: usize = MAX_QUEUE_NAME - DONE_QUEUE_PREFIX.len();
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

/// A string header, if the properties have it (read leniently: for what an
/// owner tells a person, such as the reason of a dead letter).
pub(crate) fn header_string(props: &BasicProperties, key: &str) -> Option<String> {
    match header(props, key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn header<'p>(props: &'p BasicProperties, key: &str) -> Option<&'p AMQPValue> {
    props.headers().as_ref()?.inner().get(key)
}

/// What the owner takes from a delivery's properties, once checked.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Checked {
    /// Where its done record goes: `None` without a producer header (a
    /// message published by another tool), or with an invalid one.
    pub(crate) origin: Option<Origin>,
    /// Where its answer goes, if it is an ask with a valid reply address.
    pub(crate) target: Option<Target>,
    /// How many times the broker delivered it before (0 on the first
    /// delivery of a quorum queue message, which has no header).
    pub(crate) delivery_count: u64,
    /// The first thing found wrong with it: it is then dead-lettered, its
    /// producer and asker told if `origin` and `target` allow.
    pub(crate) invalid: Option<InvalidDelivery>,
}

/// Checks every header and property the owner uses, and the body's size,
/// before anything of the delivery is decoded or trusted.
pub(crate) fn check(props: &BasicProperties, body_len: usize, max_body: usize) -> Checked {
    let body = if body_len > max_body {
        Err(InvalidDelivery::BodyTooLarge {
            size: body_len,
            max: max_body,
        })
    } else {
        Ok(())
    };
    let content = check_content(props);
    let origin = check_origin(props);
    let target = check_target(props);
    let count = check_delivery_count(props);
    let invalid = [
        body.err(),
        content.err(),
        origin.as_ref().err().cloned(),
        target.as_ref().err().cloned(),
        count.as_ref().err().cloned(),
    ]
    .into_iter()
    .flatten()
    .next();
    Checked {
        origin: origin.ok().flatten(),
        target: target.ok().flatten(),
        delivery_count: count.unwrap_or(0),
        invalid,
    }
}

/// The body must be CBOR, not encoded further, when the properties say.
fn check_content(props: &BasicProperties) -> Result<(), InvalidDelivery> {
    if let Some(kind) = props.content_type() {
        let essence = kind.as_str().split(';').next().unwrap_or_default().trim();
        if !essence.is_empty() && !essence.eq_ignore_ascii_case(CONTENT_TYPE) {
            return Err(InvalidDelivery::field(
                Field::Property("content-type"),
                FieldProblem::Unexpected {
                    found: kind.as_str().to_owned(),
                    expected: CONTENT_TYPE,
                },
            ));
        }
    }
    if let Some(encoding) = props.content_encoding() {
        let encoding = encoding.as_str().trim();
        if !encoding.is_empty() && !encoding.eq_ignore_ascii_case("identity") {
            return Err(InvalidDelivery::field(
                Field::Property("content-encoding"),
                FieldProblem::Unexpected {
                    found: encoding.to_owned(),
                    expected: "identity",
                },
            ));
        }
    }
    Ok(())
}

/// The producer (its done queue must be a valid queue name) and the message
/// id its done record lists.
fn check_origin(props: &BasicProperties) -> Result<Option<Origin>, InvalidDelivery> {
    let producer_field = Field::Header(PRODUCER_HEADER);
    let Some(value) = header(props, PRODUCER_HEADER) else {
        return Ok(None);
    };
    let producer = text(producer_field, value)?;
    if producer.is_empty() {
        return Err(InvalidDelivery::field(producer_field, FieldProblem::Empty));
    }
    if producer.len() > MAX_PRODUCER {
        return Err(InvalidDelivery::field(
            producer_field,
            FieldProblem::TooLong {
                len: producer.len(),
                max: MAX_PRODUCER,
            },
        ));
    }
    let id_field = Field::Property("message-id");
    let id = match props.message_id() {
        None => {
            return Err(InvalidDelivery::field(
                id_field,
                FieldProblem::Missing {
                    needed_by: producer_field,
                },
            ));
        }
        Some(id) if id.as_str().is_empty() => {
            return Err(InvalidDelivery::field(id_field, FieldProblem::Empty));
        }
        Some(id) => id.as_str().to_owned(),
    };
    Ok(Some(Origin { producer, id }))
}

/// Where the answer to an ask goes: `reply-to` with a `correlation-id`.
fn check_target(props: &BasicProperties) -> Result<Option<Target>, InvalidDelivery> {
    let reply_field = Field::Property("reply-to");
    let correlation_field = Field::Property("correlation-id");
    let Some(reply_to) = props.reply_to() else {
        return Ok(None);
    };
    if reply_to.as_str().is_empty() {
        return Err(InvalidDelivery::field(reply_field, FieldProblem::Empty));
    }
    match props.correlation_id() {
        None => Err(InvalidDelivery::field(
            correlation_field,
            FieldProblem::Missing {
                needed_by: reply_field,
            },
        )),
        Some(id) if id.as_str().is_empty() => Err(InvalidDelivery::field(
            correlation_field,
            FieldProblem::Empty,
        )),
        Some(id) => Ok(Some(Target {
            reply_to: reply_to.as_str().to_owned(),
            correlation_id: id.as_str().to_owned(),
        })),
    }
}

/// The broker's redelivery count: a count, if present.
fn check_delivery_count(props: &BasicProperties) -> Result<u64, InvalidDelivery> {
    let field = Field::Header(DELIVERY_COUNT_HEADER);
    let signed = match header(props, DELIVERY_COUNT_HEADER) {
        None => return Ok(0),
        Some(AMQPValue::ShortShortUInt(n)) => return Ok(u64::from(*n)),
        Some(AMQPValue::ShortUInt(n)) => return Ok(u64::from(*n)),
        Some(AMQPValue::LongUInt(n)) => return Ok(u64::from(*n)),
        Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(other) => {
            return Err(InvalidDelivery::field(
                field,
                FieldProblem::WrongType {
                    expected: "an integer",
                    found: type_of(other),
                },
            ));
        }
    };
    u64::try_from(signed).map_err(|_| InvalidDelivery::field(field, FieldProblem::Negative(signed)))
}

/// A header that must be UTF-8 text.
fn text(field: Field, value: &AMQPValue) -> Result<String, InvalidDelivery> {
    match value {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec())
            .map_err(|_| InvalidDelivery::field(field, FieldProblem::NotUtf8)),
        AMQPValue::ShortString(s) => Ok(s.as_str().to_owned()),
        other => Err(InvalidDelivery::field(
            field,
            FieldProblem::WrongType {
                expected: "a string",
                found: type_of(other),
            },
        )),
    }
}

/// The type of a header value, with its article, for a reason.
fn type_of(value: &AMQPValue) -> &'static str {
    match value {
        AMQPValue::Boolean(_) => "a boolean",
        AMQPValue::ShortShortInt(_)
        | AMQPValue::ShortShortUInt(_)
        | AMQPValue::ShortInt(_)
        | AMQPValue::ShortUInt(_)
        | AMQPValue::LongInt(_)
        | AMQPValue::LongUInt(_)
        | AMQPValue::LongLongInt(_) => "an integer",
        AMQPValue::Float(_) | AMQPValue::Double(_) => "a float",
        AMQPValue::DecimalValue(_) => "a decimal",
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => "a string",
        AMQPValue::FieldArray(_) => "an array",
        AMQPValue::Timestamp(_) => "a timestamp",
        AMQPValue::FieldTable(_) => "a table",
        AMQPValue::ByteArray(_) => "a byte array",
        AMQPValue::Void => "a void value",
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

    const MAX: usize = 1024;

    fn with_header(props: BasicProperties, key: &str, value: AMQPValue) -> BasicProperties {
        let mut headers = props.headers().clone().unwrap_or_default();
        headers.insert(key.into(), value);
        props.with_headers(headers)
    }

    fn reason(props: &BasicProperties) -> String {
        check(props, 10, MAX)
            .invalid
            .expect("found invalid")
            .to_string()
    }

    #[test]
    fn origin_target_and_delivery_count_come_from_the_checked_properties() {
        let props = message_properties("p.1", "p");
        let checked = check(&props, 10, MAX);
        assert_eq!(
            checked.origin,
            Some(Origin {
                producer: "p".into(),
                id: "p.1".into()
            })
        );
        assert_eq!((checked.target, checked.delivery_count), (None, 0));
        assert_eq!(checked.invalid, None);
        // Published by another tool: nothing to report to, nothing wrong.
        assert_eq!(
            check(&BasicProperties::default(), 0, MAX),
            Checked::default()
        );
        let ask = props
            .clone()
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_correlation_id("c".into());
        let target = check(&ask, 10, MAX).target.expect("an ask");
        assert_eq!(
            (target.reply_to.as_str(), target.correlation_id.as_str()),
            ("amq.rabbitmq.reply-to", "c")
        );
        for count in [
            AMQPValue::LongLongInt(3),
            AMQPValue::LongInt(3),
            AMQPValue::ShortShortUInt(3),
        ] {
            let redelivered = with_header(props.clone(), DELIVERY_COUNT_HEADER, count);
            assert_eq!(check(&redelivered, 10, MAX).delivery_count, 3);
        }
        // The longest producer id that makes a queue name is fine.
        let longest = message_properties("i", &"p".repeat(MAX_PRODUCER));
        assert_eq!(check(&longest, 10, MAX).invalid, None);
        assert_eq!(connection_done_queue_len(MAX_PRODUCER), MAX_QUEUE_NAME);
    }

    fn connection_done_queue_len(producer_len: usize) -> usize {
        super::super::names::done_queue(&"p".repeat(producer_len)).len()
    }

    #[test]
    fn every_untrusted_field_is_checked_and_named_in_the_reason() {
        let good = message_properties("p.1", "p");
        let cases: Vec<(BasicProperties, &str)> = vec![
            (
                message_properties("i", &"p".repeat(MAX_PRODUCER + 1)),
                "header `custody-producer` is 243 bytes long, over the limit of 242",
            ),
            (
                with_header(good.clone(), PRODUCER_HEADER, AMQPValue::Boolean(true)),
                "header `custody-producer` is a boolean where a string belongs",
            ),
            (
                with_header(
                    good.clone(),
                    PRODUCER_HEADER,
                    AMQPValue::LongString(vec![0xffu8, 0xfe].into()),
                ),
                "header `custody-producer` is not valid UTF-8",
            ),
            (
                message_properties("i", ""),
                "header `custody-producer` is empty",
            ),
            (
                message_properties("", "p"),
                "property `message-id` is empty",
            ),
            (
                BasicProperties::default().with_headers(good.headers().clone().unwrap()),
                "property `message-id` is missing, and header `custody-producer` needs it",
            ),
            (
                good.clone().with_reply_to("r".into()),
                "property `correlation-id` is missing, and property `reply-to` needs it",
            ),
            (
                good.clone()
                    .with_reply_to("r".into())
                    .with_correlation_id("".into()),
                "property `correlation-id` is empty",
            ),
            (
                good.clone().with_reply_to("".into()),
                "property `reply-to` is empty",
            ),
            (
                with_header(good.clone(), DELIVERY_COUNT_HEADER, AMQPValue::LongInt(-2)),
                "header `x-delivery-count` is negative (-2)",
            ),
            (
                with_header(
                    good.clone(),
                    DELIVERY_COUNT_HEADER,
                    AMQPValue::LongString("two".into()),
                ),
                "header `x-delivery-count` is a string where an integer belongs",
            ),
            (
                good.clone().with_content_type("text/plain".into()),
                "property `content-type` is \"text/plain\" instead of \"application/cbor\"",
            ),
            (
                good.clone().with_content_encoding("gzip".into()),
                "property `content-encoding` is \"gzip\" instead of \"identity\"",
            ),
        ];
        for (props, expected) in cases {
            assert_eq!(reason(&props), expected);
        }
        let big = check(&good, MAX + 1, MAX).invalid.expect("too large");
        assert_eq!(
            big.to_string(),
            "the body is 1025 bytes, over the limit of 1024 bytes"
        );
        assert_eq!(check(&good, MAX, MAX).invalid, None);
        // A parameter after the media type is fine.
        let with_param = good
            .clone()
            .with_content_type("application/cbor; x=1".into());
        assert_eq!(check(&with_param, 1, MAX).invalid, None);
    }

    #[test]
    fn an_invalid_field_keeps_the_valid_addresses_to_report_to() {
        // A bad content type: the producer and the asker still hear of it.
        let props = message_properties("p.1", "p")
            .with_content_type("text/plain".into())
            .with_reply_to("r".into())
            .with_correlation_id("c".into());
        let checked = check(&props, 1, MAX);
        assert!(checked.invalid.is_some());
        assert!(checked.origin.is_some() && checked.target.is_some());
        // A bad producer: nobody to report to, but the asker hears.
        let props = message_properties("p.1", &"p".repeat(300))
            .with_reply_to("r".into())
            .with_correlation_id("c".into());
        let checked = check(&props, 1, MAX);
        assert!(checked.invalid.is_some());
        assert_eq!(checked.origin, None);
        assert!(checked.target.is_some());
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
