//! A TCP relay that can stop passing bytes on, as a server that vanished
//! without closing its connections does (a failover, a network partition).

/// A TCP relay to a database server, freezable.
pub struct FreezableRelay {
    /// The server's URL with the relay in place of the server's address.
    pub url: String,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FreezableRelay {
    /// Relays to the server of `url` (`scheme://[userinfo@]host:port/…`).
    pub async fn start(url: &str) -> FreezableRelay {
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, server) = match authority.rsplit_once('@') {
            Some((userinfo, server)) => (format!("{userinfo}@"), server.to_owned()),
            None => (String::new(), authority.to_owned()),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = listener.local_addr().unwrap();
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = tokio::net::TcpStream::connect(&server).await else {
                    continue;
                };
                let (client_in, client_out) = client.into_split();
                let (server_in, server_out) = upstream.into_split();
                tokio::spawn(pass_on(client_in, server_out, flag.clone()));
                tokio::spawn(pass_on(server_in, client_out, flag.clone()));
            }
        });
        FreezableRelay {
            url: format!("{scheme}://{userinfo}{relay}/{path}"),
            frozen,
        }
    }

    /// Stops (`true`) or resumes passing bytes on, both ways.
    pub fn set_frozen(&self, frozen: bool) {
        self.frozen
            .store(frozen, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, holding what arrives while `frozen` is set.
async fn pass_on(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
