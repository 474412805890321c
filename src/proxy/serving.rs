//! Where the proxy's connections run (`server.runtime`): on `server.threads` single-threaded
//! runtimes, each on its own thread with its own `SO_REUSEPORT` listener and upstream
//! connections (thread-per-core), or on the process's work-stealing runtime (multi-thread).
//!
//! Thread-per-core keeps a request, its upstream call and the connection tasks of both on one
//! thread: no wake-up of another worker per request. The kernel spreads new connections over
//! the listeners. What every thread shares is shared for real: `max_connections`,
//! `max_in_flight`, the metrics and the review pipeline. A shutdown stops every thread's accept
//! loop at once; each finishes its own requests within the grace, and [`serve_on`] returns when
//! the last has.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::info;

use super::{Proxy, RuntimeModel, ServerConfig, serve, serve_quietly};

/// The listen backlog (tokio's `TcpListener::bind` uses the same).
const BACKLOG: i32 = 1024;

/// The proxy's bound data port: one socket per serving thread.
pub struct ProxyListener {
    sockets: Vec<std::net::TcpListener>,
    model: RuntimeModel,
    address: SocketAddr,
}

impl ProxyListener {
    /// Binds `server.listen` now (a port in use fails here), once per serving thread for
    /// thread-per-core. With port 0 the first socket picks the port and the others share it.
    pub fn bind(config: &ServerConfig) -> io::Result<ProxyListener> {
        let threads = match config.runtime {
            RuntimeModel::ThreadPerCore => config.serving_threads(),
            RuntimeModel::MultiThread => 1,
        };
        let reuse_port = config.runtime == RuntimeModel::ThreadPerCore;
        let first = listen(config.listen, reuse_port)?;
        let address = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..threads {
            sockets.push(listen(address, reuse_port)?);
        }
        Ok(ProxyListener {
            sockets,
            model: config.runtime,
            address,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }
}

fn listen(address: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
    // As std and tokio do on Unix: a restarted proxy binds despite connections in TIME_WAIT.
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Serves `proxy` on `listener` as its runtime model says until `shutdown` resolves, then lets
/// the in-flight requests finish (at most `shutdown_grace`) and returns. Thread-per-core: the
/// first thread that fails stops the others, and its error is returned.
pub async fn serve_on(
    listener: ProxyListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let ProxyListener {
        sockets,
        model,
        address,
    } = listener;
    if model == RuntimeModel::MultiThread {
        let socket = sockets.into_iter().next().expect("one socket");
        return serve(TcpListener::from_std(socket)?, proxy, shutdown).await;
    }
    info!(threads = sockets.len(), %address, "proxy listening");
    let (stop, stopped) = watch::channel(false);
    let (report, mut reports) = mpsc::unbounded_channel::<io::Result<()>>();
    let mut running = 0;
    let mut first_error = None;
    for (index, socket) in sockets.into_iter().enumerate() {
        let proxy = proxy.for_thread();
        let mut stopped = stopped.clone();
        let report = report.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("reviewloop-proxy-{index}"))
            .spawn(move || {
                let result = std::panic::catch_unwind(AssertUnwindSafe(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(async move {
                        let listener = TcpListener::from_std(socket)?;
                        let stop = async move {
                            let _ = stopped.wait_for(|stop| *stop).await;
                        };
                        serve_quietly(listener, proxy, stop).await
                    })
                }))
                .unwrap_or_else(|_| Err(io::Error::other("a proxy serving thread panicked")));
                let _ = report.send(result);
            });
        match spawned {
            Ok(_) => running += 1,
            Err(e) => {
                first_error = Some(e);
                break;
            }
        }
    }
    drop(report);
    if first_error.is_none() {
        tokio::select! {
            () = shutdown => {}
            Some(result) = reports.recv() => {
                running -= 1;
                first_error = result.err();
            }
        }
    }
    let _ = stop.send(true);
    while running > 0 {
        let Some(result) = reports.recv().await else {
            break;
        };
        running -= 1;
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
