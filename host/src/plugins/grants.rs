//! Plugin grants (`plugins.chain[].grants`): what a plugin may reach beyond its sandbox.
//!
//! In: a plugin's [`Grants`] from the config; at load, the names its component imports; per
//! request, the `wasi:http` request it sends. Out: a refusal at load that names the import and
//! the grant that would allow it ([`check_imports`]); the WASI context of each new instance
//! with only the granted variables and directories ([`PluginGrants::apply`]); and the
//! `wasi:http` hooks ([`HttpHooks`]) that let a request through only to a granted authority,
//! count it in `outrigger_plugin_http_requests_total{plugin, result}`, and end it (connection
//! included) at the deadline of the plugin call that sent it. Nothing here runs on its own.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use http_body_util::BodyExt as _;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::config::{Authority, DirGrant, Grants};
use crate::metrics::Metrics;

/// What an import needs before a plugin may have it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// `outrigger:plugin/*`: the plugin interface itself.
    Host,
    /// `wasi:cli`, `wasi:io`, `wasi:clocks`, `wasi:random`: always linked (the environment
    /// holds only the granted variables; stdout and stderr go to the host log).
    Always,
    /// `wasi:http/*`: linked only with `grants.http`.
    Http,
    /// `wasi:filesystem/*`: only with `grants.dirs` (without them there would be no preopens).
    Dirs,
    /// `wasi:sockets/*`: never; `grants.http` is the way out to the network.
    NotGrantable,
    /// Any other package: the host offers no such interface.
    Unknown,
}

impl Need {
    /// The need of an import named like `wasi:http/outgoing-handler@0.2.6`.
    pub fn of(import: &str) -> Need {
        let package = import.split(['/', '@']).next().unwrap_or(import);
        match package {
            "outrigger:plugin" => Need::Host,
            "wasi:cli" | "wasi:io" | "wasi:clocks" | "wasi:random" => Need::Always,
            "wasi:http" => Need::Http,
            "wasi:filesystem" => Need::Dirs,
            "wasi:sockets" => Need::NotGrantable,
            _ => Need::Unknown,
        }
    }

    /// How `outrigger plugin check` describes it.
    pub fn describe(self) -> &'static str {
        match self {
            Need::Host => "the plugin interface",
            Need::Always => "always available",
            Need::Http => "needs grants.http: [\"host:port\"]",
            Need::Dirs => "needs grants.dirs: [{host: DIR, guest: /PATH}]",
            Need::NotGrantable => "not grantable (no raw sockets; use grants.http for HTTP)",
            Need::Unknown => "not offered by the host",
        }
    }

    fn granted(self, g: &Grants) -> bool {
        match self {
            Need::Host | Need::Always => true,
            Need::Http => !g.http.is_empty(),
            Need::Dirs => !g.dirs.is_empty(),
            Need::NotGrantable | Need::Unknown => false,
        }
    }

    /// The end of a refusal: `imports X, <this>`.
    fn refusal(self) -> &'static str {
        match self {
            Need::Http => "which needs grants.http: [\"host:port\"]",
            Need::Dirs => "which needs grants.dirs: [{host: DIR, guest: /PATH}]",
            Need::NotGrantable => {
                "which cannot be granted (plugins get no raw sockets; use grants.http for HTTP)"
            }
            _ => "which the host does not offer",
        }
    }
}

/// A component imports what its grants do not allow: the reason it is not loaded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotGranted(pub String);

/// Checks a component's imports against its grants: refuses `wasi:http` without
/// `grants.http`, `wasi:filesystem` without `grants.dirs`, `wasi:sockets` always, and any
/// package the host does not offer. The message names the first import of each refused kind
/// and the grant that would allow it.
pub fn check_imports<'a>(
    imports: impl IntoIterator<Item = &'a str>,
    grants: &Grants,
) -> Result<(), NotGranted> {
    // (need, first import, how many more of the same need)
    let mut refused: Vec<(Need, &str, usize)> = Vec::new();
    for import in imports {
        let need = Need::of(import);
        if need.granted(grants) {
            continue;
        }
        match refused.iter_mut().find(|r| r.0 == need) {
            Some(r) => r.2 += 1,
            None => refused.push((need, import, 0)),
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = refused
        .iter()
        .map(|&(need, first, more)| {
            let more = match more {
                0 => String::new(),
                1 => " and 1 more like it".to_string(),
                n => format!(" and {n} more like it"),
            };
            format!("imports {first}{more}, {}", need.refusal())
        })
        .collect();
    Err(NotGranted(parts.join("; ")))
}

/// Counters of one plugin's HTTP requests, by result.
#[derive(Clone)]
struct HttpCounters {
    ok: prometheus::IntCounter,
    denied: prometheus::IntCounter,
    error: prometheus::IntCounter,
    timeout: prometheus::IntCounter,
}

/// One plugin's grants, resolved at load and shared by all of its instances.
pub struct PluginGrants {
    plugin: Arc<str>,
    http: Arc<[Authority]>,
    env: Vec<String>,
    dirs: Vec<DirGrant>,
    counters: Option<HttpCounters>,
}

impl PluginGrants {
    /// Resolves `grants` (validated with the config) for `plugin`; the request counters exist
    /// only for a plugin granted `http`.
    pub fn new(plugin: Arc<str>, grants: &Grants, metrics: &Metrics) -> PluginGrants {
        let http: Arc<[Authority]> = grants.http.iter().filter_map(|a| a.parse().ok()).collect();
        let counters = (!http.is_empty()).then(|| {
            let c = |result: &str| {
                metrics
                    .plugin_http_requests
                    .with_label_values(&[&*plugin, result])
            };
            HttpCounters {
                ok: c("ok"),
                denied: c("denied"),
                error: c("error"),
                timeout: c("timeout"),
            }
        });
        PluginGrants {
            plugin,
            http,
            env: grants.env.clone(),
            dirs: grants.dirs.clone(),
            counters,
        }
    }

    /// Adds the granted variables (with the daemon's values now; an unset or non-UTF-8
    /// variable is left out) and preopens the granted directories to a new instance's context.
    pub fn apply(&self, wasi: &mut WasiCtxBuilder) -> anyhow::Result<()> {
        for name in &self.env {
            if let Ok(value) = std::env::var(name) {
                wasi.env(name, value);
            }
        }
        for d in &self.dirs {
            let perms = if d.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            wasi.preopened_dir(&d.host, &d.guest, perms)
                .map_err(anyhow::Error::from)
                .with_context(|| {
                    format!("grants.dirs: opening {} for {}", d.host.display(), d.guest)
                })?;
        }
        Ok(())
    }

    /// The `wasi:http` hooks of a new instance.
    pub fn hooks(&self) -> HttpHooks {
        HttpHooks {
            plugin: self.plugin.clone(),
            allowed: self.http.clone(),
            counters: self.counters.clone(),
            deadline: Instant::now(),
        }
    }
}

/// The `wasi:http` hooks of one instance: admits requests to the granted authorities, counts
/// them and bounds them by the deadline of the current call.
pub struct HttpHooks {
    plugin: Arc<str>,
    allowed: Arc<[Authority]>,
    counters: Option<HttpCounters>,
    /// When the current call (or instantiation and `init`) must be over.
    deadline: Instant,
}

impl HttpHooks {
    /// Sets the deadline for requests sent from now on: the end of the call about to start.
    pub fn set_deadline(&mut self, at: Instant) {
        self.deadline = at;
    }
}

/// The authority a request goes to, as a grant spells it (lower-case host, explicit port).
/// `None` when it has none, or carries user info.
pub fn request_authority(uri: &http::Uri) -> Option<Authority> {
    let a = uri.authority()?;
    if a.as_str().contains('@') {
        return None;
    }
    let port = match a.port_u16() {
        Some(p) => p,
        None if uri.scheme() == Some(&http::uri::Scheme::HTTP) => 80,
        None => 443,
    };
    Some(Authority {
        host: a.host().to_ascii_lowercase(),
        port,
    })
}

type ResponseIo = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type SendFuture =
    Box<dyn Future<Output = Result<(http::Response<WasiBody>, ResponseIo), HttpError>> + Send>;

/// Counts one admitted request once: by how it ended, or as `timeout` if it is dropped first
/// (its call ended and took the instance, or the store, with it).
struct Tally {
    counters: Option<HttpCounters>,
    counted: bool,
}

impl Tally {
    fn count(&mut self, pick: fn(&HttpCounters) -> &prometheus::IntCounter) {
        if let Some(c) = &self.counters
            && !self.counted
        {
            pick(c).inc();
        }
        self.counted = true;
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.count(|c| &c.timeout);
    }
}

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: ResponseIo,
    ) -> SendFuture {
        let mut tally = Tally {
            counters: self.counters.clone(),
            counted: false,
        };
        let target = request_authority(request.uri());
        if !target.as_ref().is_some_and(|a| self.allowed.contains(a)) {
            let authority = request.uri().authority().map(|a| a.as_str()).unwrap_or("");
            tracing::debug!(plugin = %self.plugin, authority, "HTTP request denied: the authority is not in grants.http");
            tally.count(|c| &c.denied);
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        let plugin = self.plugin.clone();
        let deadline = tokio::time::Instant::from_std(self.deadline);
        Box::new(async move {
            let sent = wasmtime_wasi_http::default_send_request(request, options);
            match tokio::time::timeout_at(deadline, sent).await {
                Err(_) => {
                    tally.count(|c| &c.timeout);
                    tracing::debug!(plugin = %plugin, "HTTP request cut at the end of the plugin call");
                    Err(HttpError::HttpResponseTimeout)
                }
                Ok(Err(e)) => {
                    tally.count(|c| &c.error);
                    tracing::debug!(plugin = %plugin, error = %e, "HTTP request failed");
                    Err(e)
                }
                Ok(Ok((response, io))) => {
                    tally.count(|c| &c.ok);
                    // The connection (and so the response body) ends with the call too, even
                    // if the guest keeps the response for later.
                    let io = async move {
                        tokio::time::timeout_at(deadline, io)
                            .await
                            .unwrap_or(Err(HttpError::HttpResponseTimeout))
                    };
                    let response = response.map(|b| b.boxed_unsync());
                    Ok((response, Box::new(io) as ResponseIo))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(yaml: &str) -> Grants {
        serde_yaml::from_str(yaml).unwrap()
    }

    const RUST_STD: &[&str] = &[
        "outrigger:plugin/types@0.1.0",
        "outrigger:plugin/host@0.1.0",
        "wasi:io/poll@0.2.6",
        "wasi:io/streams@0.2.6",
        "wasi:cli/environment@0.2.6",
        "wasi:cli/stdout@0.2.6",
        "wasi:clocks/monotonic-clock@0.2.6",
        "wasi:random/random@0.2.6",
    ];

    #[test]
    fn what_each_import_needs() {
        for (import, need) in [
            ("outrigger:plugin/host@0.1.0", Need::Host),
            ("wasi:cli/environment@0.2.6", Need::Always),
            ("wasi:io/streams", Need::Always),
            ("wasi:clocks/wall-clock@0.2.9", Need::Always),
            ("wasi:random/insecure@0.2.6", Need::Always),
            ("wasi:http/outgoing-handler@0.2.6", Need::Http),
            ("wasi:http/types@0.2.6", Need::Http),
            ("wasi:filesystem/preopens@0.2.6", Need::Dirs),
            ("wasi:sockets/tcp@0.2.6", Need::NotGrantable),
            ("wasi:keyvalue/store@0.2.0", Need::Unknown),
            ("wasi:httpx/types@0.2.6", Need::Unknown),
            ("env", Need::Unknown),
        ] {
            assert_eq!(Need::of(import), need, "{import}");
        }
    }

    #[test]
    fn a_plain_plugin_needs_no_grant() {
        check_imports(RUST_STD.iter().copied(), &Grants::default()).unwrap();
    }

    #[test]
    fn http_needs_an_http_grant() {
        let imports = [
            RUST_STD,
            &["wasi:http/types@0.2.6", "wasi:http/outgoing-handler@0.2.6"],
        ]
        .concat();
        let e = check_imports(imports.iter().copied(), &Grants::default()).unwrap_err();
        assert_eq!(
            e.0,
            "imports wasi:http/types@0.2.6 and 1 more like it, which needs grants.http: [\"host:port\"]"
        );
        let only_handler = ["wasi:http/outgoing-handler@0.2.6"];
        let e = check_imports(only_handler, &Grants::default()).unwrap_err();
        assert_eq!(
            e.0,
            "imports wasi:http/outgoing-handler@0.2.6, which needs grants.http: [\"host:port\"]"
        );
        check_imports(imports.iter().copied(), &grants("http: [\"127.0.0.1:80\"]")).unwrap();
        // An env or dirs grant is not an http grant.
        let e = check_imports(only_handler, &grants("env: [HOME]")).unwrap_err();
        assert!(e.0.contains("grants.http"), "{e}");
    }

    #[test]
    fn filesystem_needs_a_dirs_grant_and_sockets_are_never_granted() {
        let imports = [
            "wasi:filesystem/types@0.2.9",
            "wasi:filesystem/preopens@0.2.9",
            "wasi:sockets/network@0.2.9",
            "wasi:sockets/tcp@0.2.9",
            "wasi:sockets/udp@0.2.9",
        ];
        let e = check_imports(imports, &Grants::default()).unwrap_err();
        assert_eq!(
            e.0,
            "imports wasi:filesystem/types@0.2.9 and 1 more like it, which needs grants.dirs: \
             [{host: DIR, guest: /PATH}]; imports wasi:sockets/network@0.2.9 and 2 more like it, \
             which cannot be granted (plugins get no raw sockets; use grants.http for HTTP)"
        );
        let all = grants("{http: [\"a:1\"], env: [X], dirs: [{host: /tmp, guest: /t}]}");
        let e = check_imports(imports, &all).unwrap_err();
        assert!(!e.0.contains("filesystem"), "{e}");
        assert!(e.0.starts_with("imports wasi:sockets/network@0.2.9"), "{e}");
        check_imports(imports[..2].iter().copied(), &all).unwrap();
    }

    #[test]
    fn unknown_packages_are_refused() {
        let e = check_imports(["wasi:keyvalue/store@0.2.0"], &Grants::default()).unwrap_err();
        assert_eq!(
            e.0,
            "imports wasi:keyvalue/store@0.2.0, which the host does not offer"
        );
    }

    #[test]
    fn a_request_authority_is_spelled_like_a_grant() {
        let a = |u: &str| request_authority(&u.parse().unwrap()).map(|a| a.to_string());
        assert_eq!(
            a("http://127.0.0.1:8080/x").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(a("http://Example.COM/").as_deref(), Some("example.com:80"));
        assert_eq!(
            a("https://example.com/").as_deref(),
            Some("example.com:443")
        );
        assert_eq!(a("http://[::1]:9/").as_deref(), Some("[::1]:9"));
        assert_eq!(a("http://user@example.com/"), None);
        assert_eq!(a("/relative"), None);
    }
}
