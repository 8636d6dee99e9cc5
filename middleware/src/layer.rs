//! [`AuditLayer`]: what a service adds to its router.

use std::sync::Arc;

use auditgate_call::CallSettings;
use auditgate_queue::RecordSink;
use auditgate_rules::{ClientIpMode, RuleSet};
use tower_layer::Layer;

use crate::service::Audit;

/// Audits the calls its rules match; see the [crate docs](crate) for an example.
///
/// Cheap to clone: the rules and settings are shared.
#[derive(Debug, Clone)]
pub struct AuditLayer<K> {
    pub(crate) settings: Arc<Settings>,
    pub(crate) sink: K,
}

/// What every [`Audit`] service of one layer shares.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) rules: RuleSet,
    pub(crate) call: CallSettings,
    /// How long a rule's `before:` GET may take (default 500 ms).
    pub(crate) before_timeout: std::time::Duration,
}

impl<K: RecordSink + Clone> AuditLayer<K> {
    /// Audits calls matching `rules` into `sink`: a [`RedisQueue`](auditgate_queue::RedisQueue)
    /// in production, a [`MemorySink`](auditgate_queue::MemorySink) in tests. What the rules
    /// warn about ([`RuleSet::warnings`]: a rule that can never match, `| hmac` without a
    /// key) is logged here, once, through `tracing`.
    pub fn new(rules: RuleSet, sink: K) -> Self {
        for warning in rules.warnings() {
            tracing::warn!("audit rules: {warning}");
        }
        AuditLayer {
            settings: Arc::new(Settings {
                rules,
                call: CallSettings::default(),
                before_timeout: std::time::Duration::from_millis(500),
            }),
            sink,
        }
    }

    /// How many bytes of each body templates may read (default 64 KiB). The bodies always
    /// pass through whole; a body longer than this is simply not read by templates.
    pub fn capture_limit(mut self, bytes: usize) -> Self {
        self.settings_mut().call.capture_limit = bytes;
        self
    }

    /// How the client's address is recorded (default: anonymised to its /24 or /48). The
    /// address comes from axum's `ConnectInfo<SocketAddr>` or a `SocketAddr` request extension.
    pub fn client_ip(mut self, mode: ClientIpMode) -> Self {
        self.settings_mut().call.client_ip = mode;
        self
    }

    /// How long a rule's `before:` GET (made through a clone of the inner service, with the
    /// caller's `Authorization` and `Cookie`) may take before the call goes on without it
    /// (default 500 ms; the record then says `capture.before: failed`).
    pub fn before_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.settings_mut().before_timeout = timeout;
        self
    }

    /// Where `request.location` comes from: by default the country, from the table built into
    /// auditgate; a [`Locator`](auditgate_geo::Locator) with a city database adds region and
    /// city; `None` records no location.
    pub fn locator(mut self, locator: Option<Arc<auditgate_geo::Locator>>) -> Self {
        self.settings_mut().call.locator = locator;
        self
    }

    /// Headers that name the method the handler acts on, whatever the request line says
    /// (default `X-HTTP-Method-Override`, `X-Method-Override`, `X-HTTP-Method`; none to trust
    /// the request line only): a `POST` with `X-HTTP-Method-Override: DELETE` matches the
    /// rules as a `DELETE`, and its record says so in `request.method_override`.
    pub fn method_override_headers(
        mut self,
        names: impl IntoIterator<Item = http::HeaderName>,
    ) -> Self {
        self.settings_mut().call.method_override_headers = names.into_iter().collect();
        self
    }

    /// How long a call to an `on_queue_failure: closed` rule waits for its received record to
    /// be durable before it is refused with 503 and the handler is never called (default 2 s).
    pub fn closed_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.settings_mut().call.closed_timeout = timeout;
        self
    }

    fn settings_mut(&mut self) -> &mut Settings {
        // Settings are only changed while building the layer, before it is cloned.
        if Arc::get_mut(&mut self.settings).is_none() {
            self.settings = Arc::new(Settings {
                rules: self.settings.rules.clone(),
                call: self.settings.call.clone(),
                before_timeout: self.settings.before_timeout,
            });
        }
        match Arc::get_mut(&mut self.settings) {
            Some(settings) => settings,
            None => unreachable!("a fresh Arc has one owner"),
        }
    }
}

impl<S, K: Clone> Layer<S> for AuditLayer<K> {
    type Service = Audit<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Audit {
            inner,
            settings: self.settings.clone(),
            sink: self.sink.clone(),
        }
    }
}
