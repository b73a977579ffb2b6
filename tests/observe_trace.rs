//! Traces that follow a message, and the watch thread's warnings, read by a
//! tracing layer installed for the whole process (the manager and watch
//! threads report to the global subscriber).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, mpsc};
use std::thread;
use std::time::Duration;

use custody::{Backend, Reply, Runtime};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// A span as the layer saw it: its name, fields, and its parent's fields.
#[derive(Clone, Debug, Default)]
struct SpanSeen {
    name: String,
    fields: HashMap<String, String>,
    parent: Option<(String, HashMap<String, String>)>,
    follows: Vec<(String, HashMap<String, String>)>,
}

#[derive(Default)]
struct Seen {
    /// Spans by id (ids are reused once closed: the latest wins).
    spans: HashMap<u64, SpanSeen>,
    /// Every span once closed or still open, in order of creation.
    all: Vec<u64>,
    closed: Vec<SpanSeen>,
    events: Vec<(tracing::Level, HashMap<String, String>)>,
}

fn seen() -> &'static Mutex<Seen> {
    static SEEN: OnceLock<Mutex<Seen>> = OnceLock::new();
    SEEN.get_or_init(|| {
        tracing_subscriber::registry().with(Capture).init();
        Mutex::new(Seen::default())
    })
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
}

struct Capture;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut seen = seen().lock().unwrap();
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .and_then(|p| seen.spans.get(&p.id().into_u64()))
            .map(|p| (p.name.clone(), p.fields.clone()));
        seen.spans.insert(
            id.into_u64(),
            SpanSeen {
                name: attrs.metadata().name().to_owned(),
                fields,
                parent,
                follows: Vec::new(),
            },
        );
        seen.all.push(id.into_u64());
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut seen = seen().lock().unwrap();
        if let Some(span) = seen.spans.get_mut(&id.into_u64()) {
            values.record(&mut Fields(&mut span.fields));
        }
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, _ctx: Context<'_, S>) {
        let mut seen = seen().lock().unwrap();
        let Some(cause) = seen.spans.get(&follows.into_u64()).cloned() else {
            return;
        };
        if let Some(span) = seen.spans.get_mut(&id.into_u64()) {
            span.follows.push((cause.name, cause.fields));
        }
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        let mut seen = seen().lock().unwrap();
        if let Some(span) = seen.spans.remove(&id.into_u64()) {
            seen.closed.push(span);
        }
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        let level = *event.metadata().level();
        seen().lock().unwrap().events.push((level, fields));
    }
}

/// The `message` spans of one manager, closed ones included.
fn message_spans(manager: &str) -> Vec<SpanSeen> {
    let seen = seen().lock().unwrap();
    seen.closed
        .iter()
        .chain(seen.spans.values())
        .filter(|s| {
            s.name == "message" && s.fields.get("manager").map(String::as_str) == Some(manager)
        })
        .cloned()
        .collect()
}

fn events_of(manager: &str, message_starts: &str) -> usize {
    seen()
        .lock()
        .unwrap()
        .events
        .iter()
        .filter(|(level, f)| {
            *level == tracing::Level::WARN
                && f.get("manager").map(String::as_str) == Some(manager)
                && f.get("message")
                    .is_some_and(|m| m.starts_with(message_starts))
        })
        .count()
}

/// Fails the test instead of hanging.
fn within(f: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    let worker = thread::spawn(move || {
        f();
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => worker.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("still running after 60 s"),
        Err(_) => std::panic::resume_unwind(worker.join().unwrap_err()),
    }
}

enum Msg {
    Work,
    Ask(Reply<u32>),
}

struct Worker;

impl custody::Manager for Worker {
    type Msg = Msg;
    fn handle(&mut self, msg: Msg, _ctx: &mut custody::Context<'_, Msg>) {
        match msg {
            Msg::Work => thread::sleep(Duration::from_millis(1)),
            Msg::Ask(reply) => reply.send(7),
        }
    }
}

#[test]
fn a_traced_message_is_handled_in_a_span_that_follows_from_its_caller() {
    seen();
    within(|| {
        for backend in Backend::ALL {
            let name = format!("traced-{backend}");
            let rt = Runtime::builder()
                .backend(backend)
                .trace_messages(true)
                .build()
                .unwrap();
            let h = rt.spawn(name.as_str(), Worker).unwrap();
            let request = tracing::info_span!("request", id = 41u64);
            request
                .in_scope(|| h.tell(Msg::Work))
                .map_err(|_| ())
                .unwrap();
            let answer = tracing::info_span!("request", id = 42u64)
                .in_scope(|| h.ask(Msg::Ask))
                .unwrap();
            assert_eq!(answer, 7);
            h.join().unwrap();
            rt.shutdown();
            let spans = message_spans(&name);
            assert_eq!(spans.len(), 2, "{spans:#?}");
            for (span, id) in spans.iter().zip(["41", "42"]) {
                // Follows from the caller's span...
                assert_eq!(span.follows.len(), 1, "{span:#?}");
                let (cause, fields) = &span.follows[0];
                assert_eq!(
                    (cause.as_str(), fields.get("id").map(String::as_str)),
                    ("request", Some(id))
                );
                // ... inside the manager's own span...
                let (parent, parent_fields) = span.parent.as_ref().expect("a parent");
                assert_eq!(parent, "manager");
                assert_eq!(parent_fields.get("name"), Some(&name));
                // ... with its wait and service time.
                assert!(span.fields.contains_key("wait_us"), "{span:#?}");
                let service: u64 = span.fields["service_us"].parse().unwrap();
                if id == "41" {
                    assert!(service >= 1000, "slept 1 ms: {span:#?}");
                }
            }
        }
    });
}

/// The awaitable sends carry the caller's span the same way: the span
/// current where the future is made.
#[test]
fn awaited_messages_follow_from_their_callers_too() {
    seen();
    within(|| {
        for backend in Backend::ALL {
            let name = format!("traced-async-{backend}");
            let rt = Runtime::builder()
                .backend(backend)
                .trace_messages(true)
                .build()
                .unwrap();
            let h = rt.spawn(name.as_str(), Worker).unwrap();
            let told =
                tracing::info_span!("request", id = 51u64).in_scope(|| h.tell_async(Msg::Work));
            futures_lite::future::block_on(told)
                .map_err(|_| ())
                .unwrap();
            let asked =
                tracing::info_span!("request", id = 52u64).in_scope(|| h.ask_async(Msg::Ask));
            assert_eq!(futures_lite::future::block_on(asked).unwrap(), 7);
            futures_lite::future::block_on(h.join_async()).unwrap();
            rt.shutdown();
            let spans = message_spans(&name);
            assert_eq!(spans.len(), 2, "{spans:#?}");
            for (span, id) in spans.iter().zip(["51", "52"]) {
                assert_eq!(span.follows.len(), 1, "{span:#?}");
                let (cause, fields) = &span.follows[0];
                assert_eq!(
                    (cause.as_str(), fields.get("id").map(String::as_str)),
                    ("request", Some(id))
                );
            }
        }
    });
}

#[test]
fn without_tracing_no_message_span_is_made() {
    seen();
    within(|| {
        let rt = Runtime::new();
        let h = rt.spawn("untraced", Worker).unwrap();
        tracing::info_span!("request", id = 1u64)
            .in_scope(|| h.tell(Msg::Work))
            .map_err(|_| ())
            .unwrap();
        h.join().unwrap();
        rt.shutdown();
        assert!(message_spans("untraced").is_empty());
        // A manager of its own choice, in the same runtime as untraced ones.
        let rt = Runtime::new();
        let plain = rt.spawn("plain", Worker).unwrap();
        let traced = rt
            .manager("chosen")
            .trace_messages(true)
            .spawn(Worker)
            .unwrap();
        plain.tell(Msg::Work).map_err(|_| ()).unwrap();
        traced.tell(Msg::Work).map_err(|_| ()).unwrap();
        plain.join().unwrap();
        traced.join().unwrap();
        rt.shutdown();
        assert!(message_spans("plain").is_empty());
        assert_eq!(message_spans("chosen").len(), 1);
    });
}

#[test]
fn a_stall_is_warned_once_and_a_growing_mailbox_once_per_episode() {
    seen();
    within(|| {
        let rt = Runtime::builder()
            .stall_after(Duration::from_millis(20))
            .growth_window(Duration::from_millis(20))
            .build()
            .unwrap();
        let stuck = rt.own("warned", ()).unwrap();
        let (go, wait) = mpsc::channel::<()>();
        stuck
            .cast(move |_| {
                let _ = wait.recv();
            })
            .unwrap();
        // Stalled for many thresholds, arrivals piling up.
        loop {
            stuck.cast(|_| {}).unwrap();
            let m = rt.stats().get("warned").cloned().unwrap();
            if m.stalled
                .is_some_and(|s| s.running_for >= Duration::from_millis(200))
                && m.growing
                    .is_some_and(|g| g.growing_for >= Duration::from_millis(200))
            {
                break;
            }
            thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(events_of("warned", "manager stalled"), 1);
        assert_eq!(events_of("warned", "mailbox growing"), 1);
        go.send(()).unwrap();
        stuck.join().unwrap();
        rt.shutdown();
    });
}
