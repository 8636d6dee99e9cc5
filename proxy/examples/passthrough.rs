//! A bare pingora passthrough proxy: the baseline `scripts/bench proxy` compares auditgate
//! with. Same pingora version, same thread count, same upstream keep-alive; no rules, no
//! records.
//!
//! ```sh
//! cargo run --release -p auditgate-proxy --example passthrough -- 127.0.0.1:8081 127.0.0.1:3000 2
//! curl -s -X POST localhost:8081/v1/files -d '{}'
//! ```

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::HttpPeer;

/// The same allocator as the `auditgate` binary, so that the comparison is of the proxies.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Passthrough {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let listen = args.get(1).map_or("127.0.0.1:8081", String::as_str);
    let upstream: SocketAddr = args
        .get(2)
        .map_or("127.0.0.1:3000", String::as_str)
        .parse()?;
    let threads: usize = args.get(3).map_or(Ok(2), |t| t.parse())?;
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Passthrough { upstream });
    proxy.add_tcp(listen);
    server.add_service(proxy);
    println!("listening on http://{listen}");
    server.run_forever();
}
