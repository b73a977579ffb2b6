//! The owner's bookkeeping of deliveries: which ones are in the manager's
//! hands and on which channel, what a settled batch owes (answers, done
//! records, one acknowledgement) and to whom.
//!
//! Pure: no AMQP call, no lock, no clock. `serve.rs` keeps a `Book` behind a
//! mutex and does the I/O it says is owed.
//!
//! Tags: the manager knows each delivery by the owner's own sequence
//! (`tag`, across channels), the broker by its channel's delivery tag
//! (`wire`, which starts again at 1 on every channel). A channel is a
//! *session*; when it is lost, every entry it left is dropped unsettled (the
//! broker redelivers those messages) and the next session's tags start past
//! every tag handed out so far.

use std::collections::{BTreeMap, VecDeque};

use lapin::BasicProperties;

use super::codec::{self, DoneRecord, Origin};
use super::reply::{Target, WireAnswer};

#[derive(Default)]
pub(super) struct Book {
    /// The last tag handed out.
    next_tag: u64,
    /// The first tag of the current channel: those before came on a lost one.
    first_current: u64,
    /// Deliveries handed to the manager and not yet settled, in tag order.
    open: VecDeque<Open>,
    /// Done records not yet confirmed by the broker, by producer; kept when a
    /// publish fails and sent again with the next batch.
    pending: BTreeMap<String, DoneRecord>,
    /// The last settled delivery not yet acknowledged, as (session, wire):
    /// it is never acknowledged on another channel.
    unacked: Option<(u64, u64)>,
    /// How many deliveries that acknowledgement covers.
    unacked_count: u64,
}

/// One delivery in the manager's hands.
pub(super) struct Open {
    /// The manager's tag for it.
    pub(super) tag: u64,
    /// The broker's delivery tag, on the channel of `session`.
    pub(super) wire: u64,
    pub(super) session: u64,
    pub(super) origin: Option<Origin>,
    /// The message id it is charged by, when redelivered.
    pub(super) key: Option<String>,
    /// The body and properties, kept only on a message's last allowed
    /// delivery: if its handler panics again, it is dead-lettered with the
    /// panic message.
    pub(super) last: Option<(Vec<u8>, BasicProperties)>,
    /// Set when the delivery is an ask.
    pub(super) ask: Option<Ask>,
}

/// The answer side of a delivery that is an ask.
pub(super) struct Ask {
    pub(super) target: Target,
    /// The answer, held until the batch is settled.
    answer: Option<Vec<u8>>,
    /// Whether a `RemoteReply` in the message took the binding; if none did,
    /// the batch's settling answers `NoReply`.
    bound: bool,
}

/// What became of an answer given to [`Book::hold_answer`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answering {
    /// Held with its request, published when the batch is settled.
    Held,
    /// Its request came on a lost channel: its redelivery is answered.
    Stale,
    /// Its request's batch is settled already (the reply was kept past
    /// it): publish it now.
    Late(Vec<u8>),
}

/// What settling a batch owes.
#[derive(Debug, Default)]
pub(super) struct Settled {
    /// Answers to publish, before the acknowledgement.
    pub(super) answers: Vec<(Target, Vec<u8>)>,
    /// Message ids whose charges end.
    pub(super) uncharge: Vec<String>,
    /// Entries of lost channels, dropped unsettled.
    pub(super) stale: u64,
}

impl Book {
    /// Opens the entry of a delivery about to be handed to the manager;
    /// returns its tag.
    pub(super) fn open(
        &mut self,
        wire: u64,
        session: u64,
        origin: Option<Origin>,
        key: Option<String>,
        target: Option<Target>,
    ) -> u64 {
        self.next_tag += 1;
        let tag = self.next_tag;
        self.open.push_back(Open {
            tag,
            wire,
            session,
            origin,
            key,
            last: None,
            ask: target.map(|target| Ask {
                target,
                answer: None,
                bound: false,
            }),
        });
        tag
    }

    /// After decoding: whether a reply took the ask's binding, and the body
    /// to dead-letter if this is the message's last allowed delivery.
    pub(super) fn decoded(
        &mut self,
        tag: u64,
        bound: bool,
        last: Option<(Vec<u8>, BasicProperties)>,
    ) {
        if let Some(open) = self.open.iter_mut().rev().find(|o| o.tag == tag) {
            if let Some(ask) = &mut open.ask {
                ask.bound = bound;
            }
            if last.is_some() {
                open.last = last;
            }
        }
    }

    /// Drops the entry of `wire` on channel `session` (not handed over after
    /// all).
    pub(super) fn forget(&mut self, session: u64, wire: u64) {
        self.open.retain(|o| (o.session, o.wire) != (session, wire));
    }

    /// Takes the entry of `tag` out (its handler panicked).
    pub(super) fn remove(&mut self, tag: u64) -> Option<Open> {
        let at = self.open.iter().position(|o| o.tag == tag)?;
        self.open.remove(at)
    }

    /// A new channel replaces a lost one: every open entry came on a lost
    /// channel and is never settled now; tags from here on are the new
    /// channel's.
    pub(super) fn new_channel(&mut self) {
        self.first_current = self.next_tag + 1;
        self.open.clear();
    }

    /// Whether `tag` was handed out on the current channel.
    pub(super) fn is_current(&self, tag: u64) -> bool {
        tag >= self.first_current
    }

    /// Whether any delivery of channel `session` is still in the manager's
    /// hands.
    pub(super) fn holds(&self, session: u64) -> bool {
        self.open.iter().any(|o| o.session == session)
    }

    /// Holds the answer to the request delivered as `tag` until its batch is
    /// settled (a handler that answers twice cannot: the first is kept).
    pub(super) fn hold_answer(&mut self, tag: u64, body: Vec<u8>) -> Answering {
        if !self.is_current(tag) {
            return Answering::Stale;
        }
        let open = self.open.iter_mut().find(|o| o.tag == tag);
        match open.and_then(|o| o.ask.as_mut()) {
            Some(ask) => {
                ask.answer.get_or_insert(body);
                Answering::Held
            }
            None => Answering::Late(body),
        }
    }

    /// Drops the entries up to `up_to` unsettled (the owner stopped at once,
    /// or lost its channel: the broker redelivers them).
    pub(super) fn drop_up_to(&mut self, up_to: u64) {
        self.open.retain(|o| o.tag > up_to);
    }

    /// Settles every entry up to `up_to` (its batch's `idle` ran), with
    /// `current` the live channel's session (`None` if lost): entries of the
    /// current channel owe their answers (`NoReply` for an ask no reply took),
    /// their done records and, together, one acknowledgement; entries of a
    /// lost channel are dropped (their redelivery is settled instead).
    pub(super) fn settle(&mut self, up_to: u64, current: Option<u64>) -> Settled {
        let mut settled = Settled::default();
        if self.unacked.is_some_and(|(s, _)| Some(s) != current) {
            // Left by a lost channel: never acknowledged now.
            self.unacked = None;
            self.unacked_count = 0;
        }
        let mut last = None;
        while self.open.front().is_some_and(|o| o.tag <= up_to) {
            let Some(open) = self.open.pop_front() else {
                break;
            };
            if Some(open.session) != current {
                settled.stale += 1;
                continue;
            }
            last = Some(open.wire);
            match open.ask {
                Some(Ask {
                    target,
                    answer: Some(body),
                    ..
                }) => settled.answers.push((target, body)),
                Some(Ask {
                    target,
                    answer: None,
                    bound: false,
                }) => {
                    if let Ok(body) = codec::encode(&WireAnswer::<()>::NoReply) {
                        settled.answers.push((target, body));
                    }
                }
                // A reply still held by the manager: sent when answered.
                _ => {}
            }
            if let Some(key) = open.key {
                settled.uncharge.push(key);
            }
            if let Some(origin) = open.origin {
                self.pending
                    .entry(origin.producer)
                    .or_default()
                    .done
                    .push(origin.id);
            }
            self.unacked_count += 1;
        }
        if let (Some(session), Some(wire)) = (current, last) {
            self.unacked = Some((session, wire));
        }
        settled
    }

    /// The done records owed, to publish (see [`Book::keep_pending`]).
    pub(super) fn take_pending(&mut self) -> BTreeMap<String, DoneRecord> {
        std::mem::take(&mut self.pending)
    }

    /// Done records whose publish failed: sent again with the next batch.
    pub(super) fn keep_pending(&mut self, failed: Vec<(String, DoneRecord)>) {
        for (producer, record) in failed {
            self.pending.entry(producer).or_default().merge(record);
        }
    }

    /// The acknowledgement owed, as (session, wire, deliveries covered).
    pub(super) fn take_unacked(&mut self) -> Option<(u64, u64, u64)> {
        let (session, wire) = self.unacked.take()?;
        Some((session, wire, std::mem::take(&mut self.unacked_count)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(producer: &str, id: &str) -> Option<Origin> {
        Some(Origin {
            producer: producer.to_owned(),
            id: id.to_owned(),
        })
    }

    fn target(id: &str) -> Option<Target> {
        Some(Target {
            reply_to: "custody.reply.test".to_owned(),
            correlation_id: id.to_owned(),
        })
    }

    fn no_reply() -> Vec<u8> {
        codec::encode(&WireAnswer::<()>::NoReply).unwrap()
    }

    #[test]
    fn a_settled_batch_owes_done_records_by_producer_and_one_acknowledgement() {
        let mut book = Book::default();
        let a = book.open(11, 1, origin("p", "a"), None, None);
        let b = book.open(12, 1, origin("q", "b"), None, None);
        let c = book.open(13, 1, origin("p", "c"), None, None);
        assert_eq!((a, b, c), (1, 2, 3));
        let settled = book.settle(c, Some(1));
        assert!(settled.answers.is_empty() && settled.stale == 0);
        assert_eq!(book.take_unacked(), Some((1, 13, 3)));
        assert_eq!(book.take_unacked(), None);
        let pending = book.take_pending();
        assert_eq!(pending["p"].done, ["a", "c"]);
        assert_eq!(pending["q"].done, ["b"]);
        assert!(book.take_pending().is_empty());
    }

    #[test]
    fn only_entries_up_to_the_settled_tag_are_settled() {
        let mut book = Book::default();
        let a = book.open(1, 1, origin("p", "a"), None, None);
        let b = book.open(2, 1, origin("p", "b"), None, None);
        book.settle(a, Some(1));
        assert_eq!(book.take_unacked(), Some((1, 1, 1)));
        assert!(book.holds(1));
        book.settle(b, Some(1));
        assert_eq!(book.take_unacked(), Some((1, 2, 1)));
        assert!(!book.holds(1));
    }

    #[test]
    fn entries_of_a_lost_channel_are_dropped_not_settled() {
        let mut book = Book::default();
        let old = book.open(7, 1, origin("p", "old"), Some("k".to_owned()), target("x"));
        assert!(book.is_current(old));
        book.new_channel();
        assert!(!book.is_current(old));
        assert!(!book.holds(1));
        let new = book.open(1, 2, origin("p", "new"), None, None);
        assert!(book.is_current(new));
        assert_eq!(new, old + 1, "tags go on across channels");
        let settled = book.settle(new, Some(2));
        assert_eq!(settled.stale, 0);
        assert_eq!(book.take_unacked(), Some((2, 1, 1)));
        assert_eq!(book.take_pending()["p"].done, ["new"]);
    }

    #[test]
    fn a_batch_settled_after_its_channel_was_lost_owes_nothing() {
        let mut book = Book::default();
        let a = book.open(5, 1, origin("p", "a"), Some("k".to_owned()), target("x"));
        let settled = book.settle(a, None);
        assert_eq!(settled.stale, 1);
        assert!(settled.answers.is_empty() && settled.uncharge.is_empty());
        assert_eq!(book.take_unacked(), None);
        assert!(book.take_pending().is_empty());
    }

    #[test]
    fn an_acknowledgement_left_by_a_lost_channel_is_never_sent_on_the_next() {
        let mut book = Book::default();
        let a = book.open(9, 1, origin("p", "a"), None, None);
        book.settle(a, Some(1)); // owed on channel 1, not sent (its records failed)
        book.new_channel();
        let b = book.open(1, 2, origin("p", "b"), None, None);
        book.settle(b, Some(2));
        assert_eq!(book.take_unacked(), Some((2, 1, 1)));
    }

    #[test]
    fn asks_are_answered_with_their_answer_or_no_reply_when_no_reply_took_them() {
        let mut book = Book::default();
        let answered = book.open(1, 1, None, None, target("answered"));
        let unbound = book.open(2, 1, None, None, target("unbound"));
        let kept = book.open(3, 1, None, None, target("kept"));
        book.decoded(answered, true, None);
        book.decoded(unbound, false, None);
        book.decoded(kept, true, None);
        assert_eq!(book.hold_answer(answered, b"42".to_vec()), Answering::Held);
        assert_eq!(book.hold_answer(answered, b"43".to_vec()), Answering::Held);
        let settled = book.settle(kept, Some(1));
        let answers: Vec<(&str, &[u8])> = settled
            .answers
            .iter()
            .map(|(t, b)| (t.correlation_id.as_str(), b.as_slice()))
            .collect();
        let none = no_reply();
        assert_eq!(
            answers,
            [("answered", &b"42"[..]), ("unbound", none.as_slice())],
            "the first answer is kept; a reply still held is answered later"
        );
        assert_eq!(
            book.hold_answer(kept, b"7".to_vec()),
            Answering::Late(b"7".to_vec())
        );
    }

    #[test]
    fn an_answer_to_a_request_of_a_lost_channel_is_dropped() {
        let mut book = Book::default();
        let tag = book.open(1, 1, None, None, target("x"));
        book.new_channel();
        assert_eq!(book.hold_answer(tag, b"1".to_vec()), Answering::Stale);
    }

    #[test]
    fn charges_end_when_their_message_is_settled() {
        let mut book = Book::default();
        let a = book.open(1, 1, None, Some("m1".to_owned()), None);
        let b = book.open(2, 1, None, None, None);
        let settled = book.settle(b.max(a), Some(1));
        assert_eq!(settled.uncharge, ["m1"]);
    }

    #[test]
    fn a_failed_or_forgotten_delivery_leaves_the_book() {
        let mut book = Book::default();
        let a = book.open(4, 1, origin("p", "a"), None, None);
        let b = book.open(5, 1, origin("p", "b"), None, None);
        book.decoded(
            b,
            false,
            Some((b"body".to_vec(), BasicProperties::default())),
        );
        let failed = book.remove(b).unwrap();
        assert_eq!((failed.wire, failed.session), (5, 1));
        assert!(failed.last.is_some());
        assert!(book.remove(b).is_none());
        book.forget(1, 4);
        assert!(book.remove(a).is_none());
        assert!(!book.holds(1));
    }

    #[test]
    fn records_that_failed_to_publish_are_kept_for_the_next_batch() {
        let mut book = Book::default();
        let a = book.open(1, 1, origin("p", "a"), None, None);
        book.settle(a, Some(1));
        let failed: Vec<(String, DoneRecord)> = book.take_pending().into_iter().collect();
        let b = book.open(2, 1, origin("p", "b"), None, None);
        book.settle(b, Some(1));
        book.keep_pending(failed);
        let mut done = book.take_pending()["p"].done.clone();
        done.sort();
        assert_eq!(done, ["a", "b"]);
    }

    #[test]
    fn dropping_up_to_a_tag_settles_nothing() {
        let mut book = Book::default();
        let a = book.open(1, 1, origin("p", "a"), None, None);
        let b = book.open(2, 1, origin("p", "b"), None, None);
        book.drop_up_to(a);
        let settled = book.settle(b, Some(1));
        assert_eq!(settled.stale, 0);
        assert_eq!(book.take_unacked(), Some((1, 2, 1)));
        assert_eq!(book.take_pending()["p"].done, ["b"]);
    }
}
